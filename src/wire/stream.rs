//! Frames on a byte stream that carries no descriptors (a Windows named pipe): the
//! same header and body, and for a frame flagged `HAS_FD` the attached handle's value,
//! 8 bytes little-endian, between the header and the body (not counted in its length).
//!
//! ```text
//!   header (24 bytes) | [handle value (8 bytes), if HAS_FD] | body
//! ```
//!
//! The value names a handle in the receiving process: whoever writes the frame has put
//! one there (`encode_prefix` takes the value to write; see the callers for who
//! duplicates handles into whom). The reader hands each value to its caller, who turns
//! it into an owned handle (`feed`'s `attach`).

use std::time::Instant;

use super::{Attached, Frame, Header, OutFrame, HAS_FD, HEADER_LEN};

/// Frames longer than this are taken for garbage (1 TiB).
const MAX_FRAME_LEN: u64 = 1 << 40;
/// The length of an attached handle's value.
const VALUE_LEN: usize = 8;

/// The bytes that go before a frame's body: its header, and `value` (the attached
/// handle in the receiver) when the frame carries one.
pub fn encode_prefix(frame: &OutFrame, value: Option<u64>) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(HEADER_LEN + VALUE_LEN);
    prefix.extend_from_slice(&frame.header);
    if let Some(value) = value.filter(|_| frame.fd.is_some()) {
        prefix.extend_from_slice(&value.to_le_bytes());
    }
    prefix
}

/// Assembles frames from the bytes of a stream, as they come.
#[derive(Default)]
pub struct StreamReader {
    /// The header (and handle value) of the next frame, as far as it came.
    prefix: Vec<u8>,
    /// The frame whose body is being read: its header, its handle value, its body so far
    /// (its capacity the length announced).
    body: Option<(Header, Option<u64>, Vec<u8>)>,
    corrupt: Option<String>,
    /// While a frame is incomplete: when its last bytes came (see `stalled_since`).
    last_progress: Option<Instant>,
}

impl StreamReader {
    /// Take `bytes`, the next of the stream; return the frames they complete, each
    /// attached handle value turned into what it came with by `attach`.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut attach: impl FnMut(u64) -> Attached,
    ) -> Vec<Frame> {
        let mut frames = Vec::new();
        if bytes.is_empty() || self.corrupt.is_some() {
            return frames;
        }
        while !bytes.is_empty() && self.corrupt.is_none() {
            if let Some((header, _, body)) = &mut self.body {
                let take = (header.len as usize - body.len()).min(bytes.len());
                body.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if body.len() as u64 == header.len {
                    let (header, value, body) = self.body.take().expect("just seen");
                    let fd = value.map_or(Attached::None, &mut attach);
                    frames.push(Frame { header, body, fd });
                }
                continue;
            }
            let want = if self.prefix.len() >= HEADER_LEN
                && Header::decode(&self.prefix[..HEADER_LEN]).flags & HAS_FD != 0
            {
                HEADER_LEN + VALUE_LEN
            } else {
                HEADER_LEN
            };
            let take = (want - self.prefix.len()).min(bytes.len());
            self.prefix.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.prefix.len() < want {
                continue;
            }
            let header = Header::decode(&self.prefix[..HEADER_LEN]);
            if header.flags & !HAS_FD != 0 || header.len > MAX_FRAME_LEN {
                self.corrupt = Some(format!("malformed frame header {header:?}"));
                break;
            }
            if header.flags & HAS_FD != 0 && self.prefix.len() == HEADER_LEN {
                continue; // its handle value comes next
            }
            let value = (self.prefix.len() > HEADER_LEN).then(|| {
                u64::from_le_bytes(self.prefix[HEADER_LEN..].try_into().expect("8 bytes"))
            });
            self.prefix.clear();
            let mut body = Vec::new();
            if body.try_reserve_exact(header.len as usize).is_err() {
                self.corrupt = Some(format!("cannot allocate a frame of {} bytes", header.len));
                break;
            }
            if header.len == 0 {
                let fd = value.map_or(Attached::None, &mut attach);
                frames.push(Frame { header, body, fd });
            } else {
                self.body = Some((header, value, body));
            }
        }
        let incomplete = self.body.is_some() || !self.prefix.is_empty();
        self.last_progress = incomplete.then(Instant::now);
        frames
    }

    /// Set once the framing broke: what was wrong. Nothing more is read.
    pub fn corrupt(&self) -> Option<&String> {
        self.corrupt.as_ref()
    }

    /// While a frame has begun and not completed: since when no byte of it came (see
    /// `FrameReader::stalled_since`).
    pub fn stalled_since(&self) -> Option<Instant> {
        self.last_progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;
    use std::sync::Arc;

    /// The bytes of `frame` on the stream, its handle value being `value`.
    fn bytes(frame: &OutFrame, value: Option<u64>) -> Vec<u8> {
        let mut all = encode_prefix(frame, value);
        all.extend_from_slice(frame.body());
        all
    }

    #[test]
    fn frames_cut_anywhere_arrive_whole_with_their_handle_values() {
        let section = crate::platform::section::Section::new(4096).unwrap();
        let attached = Arc::new(section.into_owned());
        let frames = [
            OutFrame::new(1, Kind::Task, Arc::new(vec![1u8; 10])),
            OutFrame::new(2, Kind::Task, Arc::new(vec![2u8; 100_000])).with_fd(attached.clone()),
            OutFrame::new(3, Kind::Exit, Arc::new(Vec::new())),
            OutFrame::new(4, Kind::Task, Arc::new(Vec::new())).with_fd(attached),
        ];
        let stream: Vec<u8> = frames
            .iter()
            .zip([None, Some(0x1234), None, Some(0x42)])
            .flat_map(|(f, v)| bytes(f, v))
            .collect();
        for cut in [1, 7, 24, 31, 4096, stream.len()] {
            let mut reader = StreamReader::default();
            let mut got = Vec::new();
            let mut values = Vec::new();
            for chunk in stream.chunks(cut) {
                got.extend(reader.feed(chunk, |v| {
                    values.push(v);
                    Attached::Dropped
                }));
                if cut == 7 && got.is_empty() {
                    assert!(reader.stalled_since().is_some(), "a frame has begun");
                }
            }
            assert!(reader.stalled_since().is_none(), "nothing begun is left");
            let ids: Vec<u64> = got.iter().map(|f| f.header.task_id).collect();
            assert_eq!(ids, [1, 2, 3, 4], "cut {cut}");
            assert_eq!(values, [0x1234, 0x42]);
            assert_eq!(got[1].body, vec![2u8; 100_000]);
            assert!(matches!(got[0].fd, Attached::None));
            assert!(matches!(got[3].fd, Attached::Dropped));
        }
    }

    #[test]
    fn a_malformed_header_stops_the_reader() {
        let mut reader = StreamReader::default();
        let mut garbage = [0xffu8; 40];
        garbage[0] = 1;
        assert!(reader.feed(&garbage, |_| Attached::None).is_empty());
        assert!(reader.corrupt().is_some());
        let frame = OutFrame::new(1, Kind::Task, Arc::new(vec![1]));
        assert!(reader
            .feed(&bytes(&frame, None), |_| Attached::None)
            .is_empty());
    }
}
