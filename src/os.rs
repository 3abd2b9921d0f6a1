//! The system's name for an open object that can be handed to another process (a
//! shared segment, a channel's end): a file descriptor on POSIX, a handle on Windows.
//! Code that only holds, borrows or passes such objects uses these names.

#[cfg(unix)]
pub use std::os::fd::{AsFd as AsObject, BorrowedFd as BorrowedObject, OwnedFd as OwnedObject};
#[cfg(windows)]
pub use std::os::windows::io::{
    AsHandle as AsObject, BorrowedHandle as BorrowedObject, OwnedHandle as OwnedObject,
};

/// Borrow the object `owner` holds.
pub fn borrow<T: AsObject + ?Sized>(owner: &T) -> BorrowedObject<'_> {
    #[cfg(unix)]
    return owner.as_fd();
    #[cfg(windows)]
    return owner.as_handle();
}
