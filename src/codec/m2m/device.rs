//! The V4L2 memory-to-memory plumbing, multi-planar API only (`V4L2_CAP_VIDEO_M2M_MPLANE`, what
//! `bcm2835-codec` is and `vicodec multiplanar=1` gives): one open node, an OUTPUT queue (what
//! we hand the device) and a CAPTURE queue (what it gives back), each with a fixed number of
//! MMAP buffers. Raw ioctls through the `v4l` crate's `v4l2::ioctl` and its bindgen structs —
//! the crate's own stream types know single-planar capture only.
//!
//! Nothing here panics on what a driver returns: counts, plane numbers, lengths and indices are
//! checked before use.

use super::M2mError;
use std::io;
use std::os::raw::c_void;
use std::time::Duration;
use v4l::v4l2;
use v4l::v4l2::vidioc;
use v4l::v4l_sys as sys;

pub const BUF_OUTPUT_MPLANE: u32 = sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
pub const BUF_CAPTURE_MPLANE: u32 = sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
const MEMORY_MMAP: u32 = sys::v4l2_memory_V4L2_MEMORY_MMAP;
const MEMORY_DMABUF: u32 = sys::v4l2_memory_V4L2_MEMORY_DMABUF;
/// Planes per buffer we handle (I420 in one plane or three).
const MAX_PLANES: usize = 3;

/// A FourCC as the kernel stores it.
pub const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | (c[1] as u32) << 8 | (c[2] as u32) << 16 | (c[3] as u32) << 24
}

pub fn fourcc_str(v: u32) -> String {
    v.to_le_bytes().iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

pub const FMT_H264: u32 = fourcc(b"H264");
pub const FMT_FWHT: u32 = fourcc(b"FWHT");
pub const FMT_YU12: u32 = fourcc(b"YU12");
pub const FMT_YM12: u32 = fourcc(b"YM12");
pub const FMT_NV12: u32 = fourcc(b"NV12");

/// `VIDIOC_QUERYCAP` in short.
#[derive(Debug, Clone)]
pub struct Caps {
    pub driver: String,
    pub card: String,
    pub bus_info: String,
    pub device_caps: u32,
}

impl Caps {
    pub fn is_m2m_mplane(&self) -> bool {
        self.device_caps & sys::V4L2_CAP_VIDEO_M2M_MPLANE != 0 && self.device_caps & sys::V4L2_CAP_STREAMING != 0
    }
    pub fn is_m2m_single_planar(&self) -> bool {
        self.device_caps & sys::V4L2_CAP_VIDEO_M2M != 0
    }
}

/// The format the driver settled on for one queue (`VIDIOC_S_FMT` answer): the stride and
/// plane sizes are the driver's, never assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneFormat {
    pub fourcc: u32,
    pub width: u32,
    pub height: u32,
    pub num_planes: usize,
    pub bytesperline: [u32; MAX_PLANES],
    pub sizeimage: [u32; MAX_PLANES],
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One mapped plane of one buffer.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

struct Buffer {
    planes: Vec<Mapping>,
    queued: bool,
}

/// One queue's buffers.
pub struct Queue {
    pub kind: u32,
    pub format: PlaneFormat,
    buffers: Vec<Buffer>,
    pub streaming: bool,
    /// `V4L2_MEMORY_MMAP` (our mapped buffers) or `V4L2_MEMORY_DMABUF` (descriptors queued
    /// from elsewhere: no mapping of ours).
    memory: u32,
}

impl Queue {
    pub fn count(&self) -> usize {
        self.buffers.len()
    }
    pub fn free_index(&self) -> Option<usize> {
        self.buffers.iter().position(|b| !b.queued)
    }
    pub fn queued(&self) -> usize {
        self.buffers.iter().filter(|b| b.queued).count()
    }
    pub fn is_dmabuf(&self) -> bool {
        self.memory == MEMORY_DMABUF
    }
    /// The mapped bytes of plane `p` of buffer `i` (not queued: the device is not using it).
    pub fn plane_mut(&mut self, i: usize, p: usize) -> Option<&mut [u8]> {
        let b = self.buffers.get_mut(i)?;
        if b.queued {
            return None;
        }
        let m = b.planes.get(p)?;
        // SAFETY: the mapping is live for the queue's lifetime (unmapped in `Device::drop`), its
        // length is what the driver reported, and the buffer is not queued to the device.
        Some(unsafe { std::slice::from_raw_parts_mut(m.ptr, m.len) })
    }
    pub fn plane(&self, i: usize, p: usize) -> Option<&[u8]> {
        let m = self.buffers.get(i)?.planes.get(p)?;
        // SAFETY: as above; read only after DQBUF handed the buffer back.
        Some(unsafe { std::slice::from_raw_parts(m.ptr, m.len) })
    }
}

/// A dequeued buffer, as the driver described it.
#[derive(Debug, Clone, Copy)]
pub struct Dequeued {
    pub index: usize,
    pub flags: u32,
    pub bytesused: [u32; MAX_PLANES],
    pub data_offset: [u32; MAX_PLANES],
    pub num_planes: usize,
    pub timestamp_us: u64,
    pub sequence: u32,
}

/// An open M2M node.
pub struct Device {
    pub path: String,
    fd: i32,
    pub output: Option<Queue>,
    pub capture: Option<Queue>,
}

// The raw pointers are mappings owned by this value; it is used from one thread at a time.
unsafe impl Send for Device {}

impl Device {
    pub fn open(path: &str) -> Result<Device, M2mError> {
        let fd = v4l2::open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .map_err(|e| M2mError::io(path, "open", e))?;
        Ok(Device { path: path.to_string(), fd, output: None, capture: None })
    }

    fn ioctl<T>(&self, what: &'static str, req: vidioc::_IOC_TYPE, arg: &mut T) -> Result<(), M2mError> {
        // SAFETY: `arg` is the struct type `req` is defined with (the vidioc constants encode its
        // size), live and exclusively borrowed for the call.
        unsafe { v4l2::ioctl(self.fd, req, arg as *mut T as *mut c_void) }.map_err(|e| M2mError::io(&self.path, what, e))
    }

    /// Like [`Self::ioctl`] but gives the raw errno back (enumerations end with EINVAL).
    fn ioctl_raw<T>(&self, req: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
        // SAFETY: as in `ioctl`.
        unsafe { v4l2::ioctl(self.fd, req, arg as *mut T as *mut c_void) }
    }

    pub fn caps(&self) -> Result<Caps, M2mError> {
        // SAFETY: a plain C struct, all-zero is a valid value.
        let mut c: sys::v4l2_capability = unsafe { std::mem::zeroed() };
        self.ioctl("VIDIOC_QUERYCAP", vidioc::VIDIOC_QUERYCAP, &mut c)?;
        let device_caps = if c.capabilities & sys::V4L2_CAP_DEVICE_CAPS != 0 { c.device_caps } else { c.capabilities };
        Ok(Caps { driver: cstr(&c.driver), card: cstr(&c.card), bus_info: cstr(&c.bus_info), device_caps })
    }

    /// The pixel formats a queue offers (`VIDIOC_ENUM_FMT`), at most 64.
    pub fn formats(&self, kind: u32) -> Vec<u32> {
        let mut out = vec![];
        for index in 0..64 {
            // SAFETY: plain C struct.
            let mut d: sys::v4l2_fmtdesc = unsafe { std::mem::zeroed() };
            d.index = index;
            d.type_ = kind;
            if self.ioctl_raw(vidioc::VIDIOC_ENUM_FMT, &mut d).is_err() {
                break;
            }
            out.push(d.pixelformat);
        }
        out
    }

    /// Sets one queue's format; returns what the driver made of it (stride, plane sizes).
    pub fn set_format(&self, kind: u32, fourcc: u32, width: u32, height: u32, sizeimage: u32) -> Result<PlaneFormat, M2mError> {
        // SAFETY: plain C struct with a union; the mplane member is the one we use.
        let mut f: sys::v4l2_format = unsafe { std::mem::zeroed() };
        f.type_ = kind;
        self.ioctl("VIDIOC_G_FMT", vidioc::VIDIOC_G_FMT, &mut f)?;
        // SAFETY: a MPLANE buffer type: `pix_mp` is the active union member.
        let mp = unsafe { &mut f.fmt.pix_mp };
        mp.width = width;
        mp.height = height;
        mp.pixelformat = fourcc;
        mp.field = sys::v4l2_field_V4L2_FIELD_NONE;
        if sizeimage > 0 {
            mp.plane_fmt[0].sizeimage = sizeimage;
        }
        self.ioctl("VIDIOC_S_FMT", vidioc::VIDIOC_S_FMT, &mut f)?;
        // SAFETY: as above.
        let mp = unsafe { &f.fmt.pix_mp };
        let num_planes = mp.num_planes as usize;
        if num_planes == 0 || num_planes > MAX_PLANES {
            return Err(M2mError::Unsupported { path: self.path.clone(), why: format!("the driver wants {num_planes} planes per buffer for {}", fourcc_str(mp.pixelformat)) });
        }
        let mut pf = PlaneFormat { fourcc: mp.pixelformat, width: mp.width, height: mp.height, num_planes, bytesperline: [0; MAX_PLANES], sizeimage: [0; MAX_PLANES] };
        for p in 0..num_planes {
            pf.bytesperline[p] = mp.plane_fmt[p].bytesperline;
            pf.sizeimage[p] = mp.plane_fmt[p].sizeimage;
        }
        Ok(pf)
    }

    /// `VIDIOC_REQBUFS` + `QUERYBUF` + `mmap` for `count` buffers (the driver may give more or
    /// fewer: at least 1 and at most 32 are accepted).
    pub fn setup_queue(&mut self, kind: u32, format: PlaneFormat, count: u32) -> Result<(), M2mError> {
        let given = self.request_buffers(kind, count, MEMORY_MMAP)?;
        let mut queue = Queue { kind, format, buffers: Vec::with_capacity(given as usize), streaming: false, memory: MEMORY_MMAP };
        for index in 0..given {
            // SAFETY: plain C structs.
            let mut planes: [sys::v4l2_plane; MAX_PLANES] = unsafe { std::mem::zeroed() };
            let mut b: sys::v4l2_buffer = unsafe { std::mem::zeroed() };
            b.index = index;
            b.type_ = kind;
            b.memory = MEMORY_MMAP;
            b.length = format.num_planes as u32;
            b.m.planes = planes.as_mut_ptr();
            self.ioctl("VIDIOC_QUERYBUF", vidioc::VIDIOC_QUERYBUF, &mut b)?;
            let n = (b.length as usize).min(format.num_planes);
            let mut maps = Vec::with_capacity(n);
            for plane in planes.iter().take(n) {
                let len = plane.length as usize;
                // SAFETY: the MMAP member of the plane union is the one the driver filled.
                let offset = unsafe { plane.m.mem_offset };
                if len == 0 {
                    return Err(M2mError::Unsupported { path: self.path.clone(), why: "the driver reported a zero-length buffer".into() });
                }
                // SAFETY: mapping the driver's buffer at the offset it gave; checked for failure.
                let ptr = unsafe {
                    libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, self.fd, offset as libc::off_t)
                };
                if ptr == libc::MAP_FAILED {
                    let e = io::Error::last_os_error();
                    queue.buffers.push(Buffer { planes: maps, queued: false });
                    Self::unmap(&mut queue);
                    return Err(M2mError::io(&self.path, "mmap", e));
                }
                maps.push(Mapping { ptr: ptr as *mut u8, len });
            }
            queue.buffers.push(Buffer { planes: maps, queued: false });
        }
        self.install(queue);
        Ok(())
    }

    /// Frees `kind`'s buffers, then `VIDIOC_REQBUFS` for `count` of `memory`; the number the
    /// driver gave (it may give more or fewer: at least 1 and at most 32 are accepted).
    fn request_buffers(&mut self, kind: u32, count: u32, memory: u32) -> Result<u32, M2mError> {
        self.release_queue(kind);
        // SAFETY: plain C struct.
        let mut rb: sys::v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        rb.count = count;
        rb.type_ = kind;
        rb.memory = memory;
        self.ioctl("VIDIOC_REQBUFS", vidioc::VIDIOC_REQBUFS, &mut rb)?;
        if rb.count == 0 || rb.count > 32 {
            return Err(M2mError::Unsupported { path: self.path.clone(), why: format!("the driver gave {} buffers (asked for {count})", rb.count) });
        }
        Ok(rb.count)
    }

    fn install(&mut self, queue: Queue) {
        if queue.kind == BUF_OUTPUT_MPLANE {
            self.output = Some(queue);
        } else {
            self.capture = Some(queue);
        }
    }

    /// `VIDIOC_REQBUFS` for `count` DMABUF slots on `kind` (nothing mapped: each `qbuf_dmabuf`
    /// names the descriptor to read).
    pub fn setup_dmabuf_queue(&mut self, kind: u32, format: PlaneFormat, count: u32) -> Result<(), M2mError> {
        let given = self.request_buffers(kind, count, MEMORY_DMABUF)?;
        let buffers = (0..given).map(|_| Buffer { planes: Vec::new(), queued: false }).collect();
        self.install(Queue { kind, format, buffers, streaming: false, memory: MEMORY_DMABUF });
        Ok(())
    }

    /// `VIDIOC_QBUF` of DMABUF slot `index`: plane 0 is `fd`, `length` bytes of which
    /// `bytesused` hold the picture (single-plane layouts only: YU12, NV12).
    pub fn qbuf_dmabuf(&mut self, kind: u32, index: usize, fd: i32, length: u32, bytesused: u32, timestamp_us: u64) -> Result<(), M2mError> {
        if !self.queue(kind).is_some_and(|q| q.memory == MEMORY_DMABUF && q.format.num_planes == 1) {
            return Err(M2mError::State { path: self.path.clone(), why: "not a single-plane DMABUF queue".into() });
        }
        // SAFETY: plain C structs.
        let mut planes: [sys::v4l2_plane; MAX_PLANES] = unsafe { std::mem::zeroed() };
        planes[0].bytesused = bytesused;
        planes[0].length = length;
        planes[0].m.fd = fd;
        self.submit(kind, index, &mut planes, timestamp_us, 0)
    }

    fn unmap(q: &mut Queue) {
        for b in q.buffers.drain(..) {
            for m in b.planes {
                // SAFETY: each mapping was made by `mmap` with this length and is dropped once.
                unsafe { libc::munmap(m.ptr as *mut c_void, m.len) };
            }
        }
    }

    /// Unmaps a queue's buffers and frees them in the driver (`REQBUFS 0`). Errors are ignored:
    /// this also runs on a device that is gone.
    pub fn release_queue(&mut self, kind: u32) {
        let q = if kind == BUF_OUTPUT_MPLANE { self.output.take() } else { self.capture.take() };
        if let Some(mut q) = q {
            if q.streaming {
                let mut t = kind;
                let _ = self.ioctl_raw(vidioc::VIDIOC_STREAMOFF, &mut t);
            }
            Self::unmap(&mut q);
            // SAFETY: plain C struct.
            let mut rb: sys::v4l2_requestbuffers = unsafe { std::mem::zeroed() };
            rb.type_ = kind;
            rb.memory = q.memory;
            let _ = self.ioctl_raw(vidioc::VIDIOC_REQBUFS, &mut rb);
        }
    }

    pub fn queue_mut(&mut self, kind: u32) -> Option<&mut Queue> {
        if kind == BUF_OUTPUT_MPLANE { self.output.as_mut() } else { self.capture.as_mut() }
    }

    pub fn queue(&self, kind: u32) -> Option<&Queue> {
        if kind == BUF_OUTPUT_MPLANE { self.output.as_ref() } else { self.capture.as_ref() }
    }

    /// `VIDIOC_QBUF` of buffer `index` with `bytesused` per plane (0 for capture buffers) and a
    /// timestamp (M2M drivers copy it to the matching capture buffer).
    pub fn qbuf(&mut self, kind: u32, index: usize, bytesused: &[u32], timestamp_us: u64, flags: u32) -> Result<(), M2mError> {
        // SAFETY: plain C structs.
        let mut planes: [sys::v4l2_plane; MAX_PLANES] = unsafe { std::mem::zeroed() };
        if let Some(q) = self.queue(kind) {
            let buf = q.buffers.get(index);
            for (p, plane) in planes.iter_mut().enumerate().take(q.format.num_planes) {
                plane.bytesused = bytesused.get(p).copied().unwrap_or(0);
                plane.length = buf.and_then(|b| b.planes.get(p)).map_or(0, |m| m.len as u32);
            }
        }
        self.submit(kind, index, &mut planes, timestamp_us, flags)
    }

    /// `VIDIOC_QBUF` of buffer `index` with `planes` filled in, in the queue's kind of memory;
    /// the buffer must exist and not be queued already.
    fn submit(&mut self, kind: u32, index: usize, planes: &mut [sys::v4l2_plane; MAX_PLANES], timestamp_us: u64, flags: u32) -> Result<(), M2mError> {
        let path = self.path.clone();
        let q = self.queue(kind).ok_or_else(|| M2mError::State { path: path.clone(), why: "queue not set up".into() })?;
        let (n, memory) = (q.format.num_planes, q.memory);
        match q.buffers.get(index) {
            None => return Err(M2mError::State { path, why: format!("no buffer {index}") }),
            Some(b) if b.queued => return Err(M2mError::State { path, why: format!("buffer {index} is already queued") }),
            Some(_) => {}
        }
        // SAFETY: plain C struct.
        let mut b: sys::v4l2_buffer = unsafe { std::mem::zeroed() };
        b.index = index as u32;
        b.type_ = kind;
        b.memory = memory;
        b.flags = flags;
        b.field = sys::v4l2_field_V4L2_FIELD_NONE;
        b.timestamp.tv_sec = (timestamp_us / 1_000_000) as _;
        b.timestamp.tv_usec = (timestamp_us % 1_000_000) as _;
        b.length = n as u32;
        b.m.planes = planes.as_mut_ptr();
        self.ioctl("VIDIOC_QBUF", vidioc::VIDIOC_QBUF, &mut b)?;
        if let Some(buf) = self.queue_mut(kind).and_then(|q| q.buffers.get_mut(index)) {
            buf.queued = true;
        }
        Ok(())
    }

    /// `VIDIOC_DQBUF` (non-blocking): `Ok(None)` when nothing is ready (EAGAIN).
    pub fn dqbuf(&mut self, kind: u32) -> Result<Option<Dequeued>, M2mError> {
        let Some(q) = self.queue(kind) else { return Ok(None) };
        let n = q.format.num_planes;
        let count = q.buffers.len();
        let memory = q.memory;
        // SAFETY: plain C structs.
        let mut planes: [sys::v4l2_plane; MAX_PLANES] = unsafe { std::mem::zeroed() };
        let mut b: sys::v4l2_buffer = unsafe { std::mem::zeroed() };
        b.type_ = kind;
        b.memory = memory;
        b.length = n as u32;
        b.m.planes = planes.as_mut_ptr();
        match self.ioctl_raw(vidioc::VIDIOC_DQBUF, &mut b) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
            // EPIPE: the last buffer after a drain/stop was already dequeued.
            Err(e) => return Err(M2mError::io(&self.path, "VIDIOC_DQBUF", e)),
        }
        let index = b.index as usize;
        if index >= count {
            return Err(M2mError::State { path: self.path.clone(), why: format!("the driver returned buffer {index} of {count}") });
        }
        if let Some(buf) = self.queue_mut(kind).and_then(|q| q.buffers.get_mut(index)) {
            buf.queued = false;
        }
        let mut d = Dequeued {
            index,
            flags: b.flags,
            bytesused: [0; MAX_PLANES],
            data_offset: [0; MAX_PLANES],
            num_planes: (b.length as usize).min(n),
            timestamp_us: (b.timestamp.tv_sec.max(0) as u64).saturating_mul(1_000_000).saturating_add(b.timestamp.tv_usec.max(0) as u64),
            sequence: b.sequence,
        };
        for p in 0..d.num_planes {
            d.bytesused[p] = planes[p].bytesused;
            d.data_offset[p] = planes[p].data_offset;
        }
        Ok(Some(d))
    }

    pub fn stream_on(&mut self, kind: u32) -> Result<(), M2mError> {
        let mut t = kind;
        self.ioctl("VIDIOC_STREAMON", vidioc::VIDIOC_STREAMON, &mut t)?;
        if let Some(q) = self.queue_mut(kind) {
            q.streaming = true;
        }
        Ok(())
    }

    /// `VIDIOC_STREAMOFF`: the driver hands every queued buffer back (all become free).
    pub fn stream_off(&mut self, kind: u32) -> Result<(), M2mError> {
        let mut t = kind;
        let r = self.ioctl("VIDIOC_STREAMOFF", vidioc::VIDIOC_STREAMOFF, &mut t);
        if let Some(q) = self.queue_mut(kind) {
            q.streaming = false;
            for b in &mut q.buffers {
                b.queued = false;
            }
        }
        r
    }

    /// Waits until the device has something for `events` (`POLLIN`: a capture buffer, `POLLOUT`:
    /// an output buffer back). `Ok(false)` on timeout; POLLERR/POLLHUP are `Gone`-style errors.
    pub fn poll(&self, events: i16, timeout: Duration) -> Result<bool, M2mError> {
        let mut p = libc::pollfd { fd: self.fd, events, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(M2mError::io(&self.path, "poll", e));
            }
            if rc == 0 {
                return Ok(false);
            }
            if p.revents & (libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(M2mError::Gone { path: self.path.clone(), why: "the device hung up (poll)".into() });
            }
            // POLLERR alone also means "no buffers queued / not streaming": let DQBUF tell.
            return Ok(true);
        }
    }

    /// `VIDIOC_QUERYCTRL`: whether a control exists (and is enabled), with its range.
    pub fn query_control(&self, id: u32) -> Option<(i32, i32)> {
        // SAFETY: plain C struct.
        let mut q: sys::v4l2_queryctrl = unsafe { std::mem::zeroed() };
        q.id = id;
        self.ioctl_raw(vidioc::VIDIOC_QUERYCTRL, &mut q).ok()?;
        if q.flags & sys::V4L2_CTRL_FLAG_DISABLED != 0 {
            return None;
        }
        Some((q.minimum, q.maximum))
    }

    /// Sets one control with `VIDIOC_S_EXT_CTRLS` (the codec class controls need the extended
    /// call; `which` = current value).
    pub fn set_control(&self, id: u32, value: i32) -> Result<(), M2mError> {
        // SAFETY: plain C structs; `controls` points at one live control for the call.
        let mut c: sys::v4l2_ext_control = unsafe { std::mem::zeroed() };
        c.id = id;
        c.__bindgen_anon_1.value = value;
        let mut cs: sys::v4l2_ext_controls = unsafe { std::mem::zeroed() };
        cs.__bindgen_anon_1.which = sys::V4L2_CTRL_WHICH_CUR_VAL;
        cs.count = 1;
        cs.controls = &mut c;
        self.ioctl("VIDIOC_S_EXT_CTRLS", vidioc::VIDIOC_S_EXT_CTRLS, &mut cs)
    }

    /// `VIDIOC_S_PARM` on the OUTPUT queue: the frame rate the encoder's rate control budgets
    /// for (best effort: not every driver takes it).
    pub fn set_output_rate(&self, fps: u32) -> Result<(), M2mError> {
        // SAFETY: plain C struct with a union; `output` is the member for an OUTPUT type.
        let mut p: sys::v4l2_streamparm = unsafe { std::mem::zeroed() };
        p.type_ = BUF_OUTPUT_MPLANE;
        p.parm.output.timeperframe.numerator = 1;
        p.parm.output.timeperframe.denominator = fps.max(1);
        self.ioctl("VIDIOC_S_PARM", vidioc::VIDIOC_S_PARM, &mut p)
    }

    pub fn get_control(&self, id: u32) -> Result<i32, M2mError> {
        // SAFETY: as in `set_control`.
        let mut c: sys::v4l2_ext_control = unsafe { std::mem::zeroed() };
        c.id = id;
        let mut cs: sys::v4l2_ext_controls = unsafe { std::mem::zeroed() };
        cs.__bindgen_anon_1.which = sys::V4L2_CTRL_WHICH_CUR_VAL;
        cs.count = 1;
        cs.controls = &mut c;
        self.ioctl("VIDIOC_G_EXT_CTRLS", vidioc::VIDIOC_G_EXT_CTRLS, &mut cs)?;
        // SAFETY: integer controls answer in `value`.
        Ok(unsafe { c.__bindgen_anon_1.value })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.release_queue(BUF_OUTPUT_MPLANE);
        self.release_queue(BUF_CAPTURE_MPLANE);
        let _ = v4l2::close(self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourccs_read_as_the_kernel_writes_them() {
        assert_eq!(FMT_H264, 0x3436_3248);
        assert_eq!(fourcc_str(FMT_FWHT), "FWHT");
        assert_eq!(fourcc_str(0x0102_0304), "????");
    }

    #[test]
    fn a_missing_node_is_an_error_naming_it() {
        let e = Device::open("/dev/peercam-no-such-video").err().expect("no such node");
        assert!(e.to_string().contains("/dev/peercam-no-such-video"), "{e}");
    }
}
