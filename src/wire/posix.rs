//! The POSIX way frames travel: a socket, with a descriptor attached to a frame's
//! first byte (SCM_RIGHTS).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::sys::check;

/// Room for one descriptor's control message, on the stack (aligned for cmsghdr):
/// the buffer and the length to declare.
fn control_buffer() -> ([u64; 4], usize) {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    assert!(space <= std::mem::size_of::<[u64; 4]>());
    ([0u64; 4], space)
}

/// sendmsg(2) of `iov`, with a descriptor attached if given. MSG_NOSIGNAL: a dead peer
/// is an error to handle, not a SIGPIPE.
pub fn send_iov(sock: RawFd, iov: &[libc::iovec], fd: Option<RawFd>) -> isize {
    let (mut control, space) = control_buffer();
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call,
    // and the control buffer is large enough for one descriptor (CMSG_SPACE).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        let Some(fd) = fd else {
            return libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    }
}

/// What one recvmsg(2) brought.
pub struct Received {
    pub len: usize,
    pub fd: Option<OwnedFd>,
    /// A descriptor came and the kernel dropped it (`MSG_CTRUNC`): no room for it here.
    pub dropped: bool,
}

/// recvmsg(2) into `buf`, accepting at most one descriptor (close-on-exec).
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let (mut control, space) = control_buffer();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in send_iov; the kernel writes at most msg_controllen bytes of
    // control data and at most buf.len() bytes of data.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1 as _;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        #[cfg(target_os = "linux")]
        let flags = libc::MSG_CMSG_CLOEXEC;
        #[cfg(not(target_os = "linux"))]
        let flags = 0;
        let n = check(libc::recvmsg(sock, &mut msg, flags))?;
        let mut fd = None;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
            fd = Some(OwnedFd::from_raw_fd(raw));
            if !cfg!(target_os = "linux") {
                // No flag to receive it close-on-exec: set it now.
                let _ = crate::platform::set_cloexec(raw);
            }
        }
        Ok(Received {
            len: n as usize,
            dropped: fd.is_none() && msg.msg_flags & libc::MSG_CTRUNC != 0,
            fd,
        })
    }
}
