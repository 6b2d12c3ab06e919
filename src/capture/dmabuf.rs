//! Camera buffers lent to a hardware encoder as DMABUFs: the zero-copy path of issue 13.
//!
//! Why: a V4L2 camera that delivers a 4:2:0 picture the encoder takes as it is (YU12 or NV12 at
//! the encoder's stride — what libcamera's ISP gives on a Pi) need not be copied into the
//! encoder's own buffers. The camera's buffer is exported once (`VIDIOC_EXPBUF`), and the encoder
//! queues that file descriptor (`V4L2_MEMORY_DMABUF`): the VideoCore reads the picture where the
//! camera wrote it. The pipeline still gets its I420 copy for motion, night vision, snapshots and
//! the low rung; what is saved is the second copy, into the encoder (~1.4 MB per 720p frame).
//!
//! A lent buffer must not be refilled by the camera while the encoder reads it, so it stays out
//! of the driver's queue until every holder has dropped its [`DmaBuf`] (the frame in the
//! pipeline and the encoder, until its OUTPUT buffer comes back). The camera lends at most
//! [`MAX_LENT`] at once and keeps the rest queued, so a stalled encoder cannot starve capture:
//! frames past the limit simply carry no DMABUF and are copied.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use v4l::v4l2;
use v4l::v4l_sys as sys;

/// Camera buffers when they may be lent (4 otherwise): up to [`MAX_LENT`] out, 2 queued.
pub const EXPORT_BUFFERS: u32 = 6;
/// Buffers out at once: the frame in the mailbox, the encoder's current and previous OUTPUT
/// buffer, and the frame being converted.
pub const MAX_LENT: usize = 4;

/// One camera buffer lent out: the picture's layout in the camera's words. Dropping the last
/// holder gives the buffer back to the camera (on its next dequeue).
#[derive(Debug)]
pub struct DmaBuf {
    fd: Arc<OwnedFd>,
    /// The buffer's length (what the driver allocated).
    pub len: usize,
    pub bytesused: usize,
    /// `YU12` or `NV12` (as the kernel stores FourCCs).
    pub fourcc: u32,
    pub width: u32,
    pub height: u32,
    pub bytesperline: u32,
    lent: Arc<AtomicBool>,
}

impl DmaBuf {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.lent.store(false, Ordering::Release);
    }
}

/// The exported buffers of one open camera stream.
pub struct Exported {
    fds: Vec<Arc<OwnedFd>>,
    lent: Vec<Arc<AtomicBool>>,
}

/// The picture layout of the stream (the same for every buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub fourcc: u32,
    pub width: u32,
    pub height: u32,
    pub bytesperline: u32,
}

impl Exported {
    /// `VIDIOC_EXPBUF` for buffers `0..count` of a single-planar capture queue on `fd`.
    pub fn export(fd: RawFd, count: usize) -> std::io::Result<Exported> {
        let mut fds = Vec::with_capacity(count);
        for index in 0..count {
            // SAFETY: plain C struct.
            let mut e: sys::v4l2_exportbuffer = unsafe { std::mem::zeroed() };
            e.type_ = sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
            e.index = index as u32;
            e.flags = (libc::O_CLOEXEC | libc::O_RDONLY) as u32;
            // SAFETY: `e` is the struct VIDIOC_EXPBUF is defined with.
            unsafe { v4l2::ioctl(fd, v4l2::vidioc::VIDIOC_EXPBUF, &mut e as *mut _ as *mut std::os::raw::c_void)? };
            if e.fd < 0 {
                return Err(std::io::Error::other("VIDIOC_EXPBUF gave no file descriptor"));
            }
            // SAFETY: the kernel just made this descriptor for us; nobody else owns it.
            fds.push(Arc::new(unsafe { OwnedFd::from_raw_fd(e.fd) }));
        }
        Ok(Exported { lent: (0..count).map(|_| Arc::new(AtomicBool::new(false))).collect(), fds })
    }

    /// Whether every holder of buffer `index` is gone (or it was never lent): the camera may
    /// queue it again.
    pub fn is_back(&self, index: usize) -> bool {
        self.lent.get(index).is_none_or(|l| !l.load(Ordering::Acquire))
    }

    /// Lends buffer `index` (`len` long, `bytesused` filled) with `layout`, unless
    /// [`MAX_LENT`] are out already.
    pub fn lend(&self, index: usize, held_now: usize, len: usize, bytesused: usize, layout: Layout) -> Option<Arc<DmaBuf>> {
        if held_now >= MAX_LENT {
            return None;
        }
        let fd = self.fds.get(index)?.clone();
        let lent = self.lent.get(index)?.clone();
        lent.store(true, Ordering::Release);
        Some(Arc::new(DmaBuf {
            fd,
            len,
            bytesused,
            fourcc: layout.fourcc,
            width: layout.width,
            height: layout.height,
            bytesperline: layout.bytesperline,
            lent,
        }))
    }
}

impl DmaBuf {
    /// A lent buffer over any descriptor, for tests of what reads one.
    #[cfg(test)]
    pub fn stand_in(layout: Layout, len: usize) -> Arc<DmaBuf> {
        let fd = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null")));
        Arc::new(DmaBuf {
            fd,
            len,
            bytesused: len,
            fourcc: layout.fourcc,
            width: layout.width,
            height: layout.height,
            bytesperline: layout.bytesperline,
            lent: Arc::new(AtomicBool::new(true)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(n: usize) -> Exported {
        // Any descriptors stand in for exported buffers here: lending is bookkeeping.
        let fds = (0..n).map(|_| Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))).collect();
        Exported { fds, lent: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect() }
    }

    const L: Layout = Layout { fourcc: 0, width: 64, height: 48, bytesperline: 64 };

    #[test]
    fn a_buffer_comes_back_when_its_last_holder_drops_it() {
        let e = exported(3);
        let a = e.lend(1, 0, 100, 100, L).unwrap();
        let encoder_copy = a.clone();
        assert!(!e.is_back(1), "lent: not back");
        assert!(e.is_back(0), "never lent");
        drop(a);
        assert!(!e.is_back(1), "the encoder still holds it");
        drop(encoder_copy);
        assert!(e.is_back(1));
    }

    #[test]
    fn no_more_than_max_lent_at_once() {
        let e = exported(EXPORT_BUFFERS as usize);
        assert!(e.lend(0, MAX_LENT - 1, 1, 1, L).is_some());
        assert!(e.lend(1, MAX_LENT, 1, 1, L).is_none(), "the camera keeps buffers queued");
        assert!(e.lend(99, 0, 1, 1, L).is_none(), "an index the stream does not have");
        assert!(EXPORT_BUFFERS as usize - MAX_LENT >= 2);
    }
}
