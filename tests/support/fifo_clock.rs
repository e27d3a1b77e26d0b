//! A FIFO reader that plays the part of a DAC: it drains a FIFO-backed PCM at exactly the
//! sample rate, so the writer is clocked like real hardware, and records every moment the
//! "device" was owed data the pipe did not have (a gap: audible silence on a real speaker).
//!
//! Pipe semantics this relies on:
//! - The read end is opened first with `O_NONBLOCK` (succeeds without a writer), so the
//!   writer's blocking `open(O_WRONLY)` inside alsa-lib's file plugin returns at once.
//! - `F_SETPIPE_SZ` shrinks the pipe to 8192 bytes (~85 ms of 48 kHz mono): the writer blocks
//!   on a full pipe, which is what clocks it. (A single page gives false short reads.)
//! - `read` returning 0 means no writer has the FIFO open. Before any data that only means the
//!   writer has not opened yet (or a probe open came and went); after data it is the end.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Read interval.
pub const TICK: Duration = Duration::from_millis(10);
/// Pipe size asked for with `F_SETPIPE_SZ`.
pub const PIPE_SIZE: i32 = 8192;

/// A stretch of time during which the reader was owed frames the pipe did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// When the gap began, measured from the first byte read.
    pub at: Duration,
    /// Frames of silence a real device would have played.
    pub frames: u64,
}

/// Everything the clock read.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Interleaved samples exactly as the writer produced them (native-endian S16).
    pub samples: Vec<i16>,
    /// Gaps while data was due and more data followed (consecutive empty ticks merged; silence
    /// after the last sample is the end, not a gap).
    pub gaps: Vec<Gap>,
    /// When the first data arrived.
    pub started_at: Option<Instant>,
    /// When the last data arrived.
    pub last_data_at: Option<Instant>,
    /// True if the writer closed the FIFO after sending data (rather than the idle timeout).
    pub eof: bool,
    /// Ticks where the reader itself was late and the full pipe could not cover the catch-up;
    /// not counted as gaps, since the writer had done its part.
    pub late_ticks: u32,
    /// The pipe capacity actually granted.
    pub pipe_capacity: usize,
    /// Frames per second the clock ran at.
    pub rate: u32,
    /// Channels per frame.
    pub channels: u16,
}

impl Capture {
    /// Total frames of all gaps.
    pub fn gap_frames(&self) -> u64 {
        self.gaps.iter().map(|g| g.frames).sum()
    }
}

struct Shared {
    /// (when finish was called, idle timeout)
    finish: Mutex<Option<(Instant, Duration)>>,
    consumed: AtomicU64,
    /// The "DAC" stopped taking data (a hung USB DAC): the writer blocks on the full pipe.
    paused: AtomicBool,
}

/// The running reader; call [`FifoClock::finish`] to stop it and get the [`Capture`].
pub struct FifoClock {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<Capture>>,
    pipe_capacity: usize,
}

impl FifoClock {
    /// Opens the read end of `path` (before the writer opens it) and starts reading at
    /// `rate` frames/s of `channels` S16 samples.
    pub fn start(path: &Path, rate: u32, channels: u16) -> FifoClock {
        Self::start_with_tick(path, rate, channels, TICK)
    }

    /// [`FifoClock::start`] reading every `tick`. A device that reports its delay is only
    /// as exact as its pointer: the pipe's fill is up to one tick short of what is still to
    /// be heard, so a sync test reads often (a sound card's pointer moves in ~1 ms steps).
    pub fn start_with_tick(path: &Path, rate: u32, channels: u16, tick: Duration) -> FifoClock {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid path; the returned fd is checked and owned below.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        assert!(
            raw >= 0,
            "open FIFO {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        // SAFETY: raw is a freshly opened fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on our own fd with integer arguments.
        let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        assert!(set > 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let cap = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert!(cap > 0, "F_GETPIPE_SZ: {}", std::io::Error::last_os_error());
        let pipe_capacity = cap as usize;
        // Drop anything a previous writer left (the FIFO may be reused within a process).
        drain_stale(&fd);

        let shared = Arc::new(Shared {
            finish: Mutex::new(None),
            consumed: AtomicU64::new(0),
            paused: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("fifo-clock".into())
            .spawn(move || run(fd, rate, channels, tick, pipe_capacity, &s))
            .unwrap();
        FifoClock {
            shared,
            handle: Some(handle),
            pipe_capacity,
        }
    }

    /// Bytes read from the pipe so far.
    pub fn consumed_bytes(&self) -> u64 {
        self.shared.consumed.load(Ordering::SeqCst)
    }

    /// Stops reading, as a DAC that hangs does: the writer blocks once the pipe is full.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Reads again after [`FifoClock::pause`] (the pause is not counted as a gap).
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// The pipe capacity granted by `F_SETPIPE_SZ`.
    pub fn pipe_capacity(&self) -> usize {
        self.pipe_capacity
    }

    /// Stops once the writer has closed the FIFO, or after `idle_timeout` without data
    /// (counted from now or from the last data, whichever is later), and returns the capture.
    pub fn finish(mut self, idle_timeout: Duration) -> Capture {
        *self.shared.finish.lock().unwrap() = Some((Instant::now(), idle_timeout));
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for FifoClock {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            *self.shared.finish.lock().unwrap() = Some((Instant::now(), Duration::ZERO));
            let _ = h.join();
        }
    }
}

fn drain_stale(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reading into a local buffer from our own non-blocking fd.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Bytes readable right now.
fn readable(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n as usize
    }
}

enum Read {
    Got(usize),
    Empty,
    Eof,
}

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> Read {
    // SAFETY: reading into a valid buffer from our own non-blocking fd.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match r {
        0 => Read::Eof,
        n if n > 0 => Read::Got(n as usize),
        _ => {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Read::Empty,
                _ => panic!("reading FIFO: {e}"),
            }
        }
    }
}

fn run(
    fd: OwnedFd,
    rate: u32,
    channels: u16,
    tick: Duration,
    pipe_capacity: usize,
    shared: &Shared,
) -> Capture {
    let bpf = 2 * u64::from(channels.max(1)); // bytes per frame
    let tick_frames = u64::from(rate) * tick.as_micros() as u64 / 1_000_000;
    let mut raw: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cap = Capture {
        samples: Vec::new(),
        gaps: Vec::new(),
        started_at: None,
        last_data_at: None,
        eof: false,
        late_ticks: 0,
        pipe_capacity,
        rate,
        channels,
    };
    let mut gap_frames: u64 = 0; // silence "played" so far
    let mut forgiven_frames: u64 = 0; // reader lateness not charged to the writer
    let mut in_gap = false;
    let mut last_gap_tick: Option<Instant> = None;
    let mut paused_since: Option<Instant> = None;
    let mut next = Instant::now();

    loop {
        // Absolute deadlines: a late wake-up is followed by a prompt one, not by drift.
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += tick;
        let now = Instant::now();
        if next < now {
            next = now + tick;
        }

        if let Some((asked, idle)) = *shared.finish.lock().unwrap() {
            let idle_since = cap.last_data_at.map_or(asked, |l| l.max(asked));
            if now.saturating_duration_since(idle_since) >= idle {
                break;
            }
        }

        if shared.paused.load(Ordering::SeqCst) {
            paused_since.get_or_insert(now);
            continue;
        }
        if let Some(since) = paused_since.take() {
            // The writer owes nothing for the time we did not read.
            let paused = now.duration_since(since);
            forgiven_frames += (paused.as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        }

        let Some(started) = cap.started_at else {
            // Not started: wait for the first bytes (EOF here only means "no writer yet").
            if let Read::Got(n) = read_some(&fd, &mut buf[..(tick_frames * bpf) as usize]) {
                raw.extend_from_slice(&buf[..n]);
                shared.consumed.fetch_add(n as u64, Ordering::SeqCst);
                cap.started_at = Some(now);
                cap.last_data_at = Some(now);
            }
            continue;
        };

        // Frames a DAC started at `started` would have taken by now (one tick ahead, as a
        // DAC fetches before it plays), minus what is forgiven for our own lateness.
        let elapsed = now.duration_since(started);
        let due_frames =
            (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 + tick_frames;
        let due_bytes = due_frames
            .saturating_sub(forgiven_frames)
            .saturating_sub(gap_frames)
            * bpf;
        let have = raw.len() as u64;
        if due_bytes <= have {
            continue;
        }
        let mut want = (due_bytes - have) as usize;
        let avail_before = readable(&fd);
        let mut eof = false;
        let mut got_any = false;
        while want > 0 {
            let n = want.min(buf.len());
            match read_some(&fd, &mut buf[..n]) {
                Read::Got(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    shared.consumed.fetch_add(n as u64, Ordering::SeqCst);
                    cap.last_data_at = Some(now);
                    want -= n;
                    got_any = true;
                }
                Read::Empty => break,
                Read::Eof => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            cap.eof = true;
            break;
        }
        let missing = want as u64 / bpf;
        if missing == 0 {
            in_gap = false;
            continue;
        }
        if avail_before >= pipe_capacity / 2 {
            // The pipe was (nearly) full: the writer was blocked waiting for us.
            cap.late_ticks += 1;
            forgiven_frames += missing;
            in_gap = false;
            continue;
        }
        gap_frames += missing;
        match cap.gaps.last_mut() {
            // A tick that brought some data starts a new gap, so a trailing one can be told apart.
            Some(g) if in_gap && !got_any => g.frames += missing,
            _ => cap.gaps.push(Gap {
                at: elapsed,
                frames: missing,
            }),
        }
        in_gap = true;
        last_gap_tick = Some(now);
    }

    // Silence after the last sample is the end of the stream, not a gap in it (the writer may
    // hold the FIFO open a while after its last write, e.g. between utterances).
    if let (Some(gap_tick), Some(data)) = (last_gap_tick, cap.last_data_at) {
        if data <= gap_tick {
            cap.gaps.pop();
        }
    }

    cap.samples = raw
        .chunks_exact(2)
        .map(|b| i16::from_ne_bytes([b[0], b[1]]))
        .collect();
    cap
}
