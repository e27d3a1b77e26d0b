//! Pitch-preserving time-stretch for the audio thread: libsonic (the library espeak-ng
//! uses) behind an API that takes and gives i16 frames through caller-provided buffers and
//! never allocates, locks, logs or blocks after [`Stretcher::new`].
//!
//! The playout slows down (tempo < 1.0) while its buffer is below target and returns to
//! 1.0 once it is back. At 1.0 libsonic copies its input straight to its output (it holds
//! nothing back and the output is the input, sample for sample); below 1.0 it holds up to
//! [`Stretcher::latency_frames`] of input (two of its longest pitch periods, ≈ 31 ms) and
//! inserts whole pitch periods with a cross-fade. docs/STRETCH.md has the choice of
//! library, the measured cost and how the audio thread should drive it.

mod ffi;

use std::os::raw::c_int;
use std::ptr::NonNull;

/// NetEq's bound and the issue's `audio.max_slowdown` default: 10 % slower at most.
pub const DEFAULT_MIN_TEMPO: f32 = 0.90;
/// The lowest `min_tempo` accepted: below 0.5 libsonic switches to another algorithm.
pub const MIN_TEMPO_FLOOR: f32 = 0.5;
/// Lowest sample rate accepted (libsonic's pitch search needs rate / 400 ≥ 1 sample).
pub const MIN_RATE: u32 = 8_000;
/// Highest sample rate accepted.
pub const MAX_RATE: u32 = 192_000;
/// Most interleaved channels accepted.
pub const MAX_CHANNELS: u16 = 8;

// libsonic 0.2.0's pitch range (sonic.h): SONIC_MIN_PITCH 65 Hz sets the longest period
// it looks for, and it works on windows of two of them ("maxRequired").
const SONIC_MIN_PITCH: u32 = 65;

/// How a [`Stretcher`] is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StretchConfig {
    /// Frames per second of the audio (the device's rate).
    pub rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// The most frames one [`Stretcher::push`] takes, and the output backlog at or above
    /// which `push` takes nothing until the caller pulls: one device period is right.
    pub max_push_frames: usize,
    /// The slowest tempo [`Stretcher::set_tempo`] allows (0.5–1.0; 1.0 turns stretching off).
    pub min_tempo: f32,
}

impl StretchConfig {
    /// A config with [`DEFAULT_MIN_TEMPO`].
    pub fn new(rate: u32, channels: u16, max_push_frames: usize) -> Self {
        StretchConfig {
            rate,
            channels,
            max_push_frames,
            min_tempo: DEFAULT_MIN_TEMPO,
        }
    }

    /// The same config with another slowest tempo.
    pub fn with_min_tempo(self, min_tempo: f32) -> Self {
        StretchConfig { min_tempo, ..self }
    }
}

/// Why a [`Stretcher`] could not be made, or (out of memory only) could not go on.
#[derive(Debug, thiserror::Error)]
pub enum StretchError {
    /// The sample rate is out of range.
    #[error("time-stretcher: sample rate {rate} Hz is outside {MIN_RATE}–{MAX_RATE} Hz")]
    Rate {
        /// The rate asked for.
        rate: u32,
    },
    /// The channel count is out of range.
    #[error("time-stretcher: {channels} channels asked for, 1–{MAX_CHANNELS} supported")]
    Channels {
        /// The channel count asked for.
        channels: u16,
    },
    /// `max_push_frames` is zero or longer than a second.
    #[error(
        "time-stretcher: max_push_frames {frames} is outside 1–{rate} (one second at {rate} Hz)"
    )]
    MaxPush {
        /// The value asked for.
        frames: usize,
        /// The stream's rate, which bounds it.
        rate: u32,
    },
    /// `min_tempo` is not within 0.5–1.0.
    #[error("time-stretcher: min_tempo {min_tempo} is outside {MIN_TEMPO_FLOOR}–1.0")]
    MinTempo {
        /// The value asked for.
        min_tempo: f32,
    },
    /// `sonicCreateStream` returned NULL.
    #[error("libsonic could not create a stream ({rate} Hz, {channels} channels): out of memory")]
    Create {
        /// The stream's rate.
        rate: u32,
        /// The stream's channel count.
        channels: u16,
    },
    /// Growing libsonic's buffers to their steady-state size at creation failed.
    #[error(
        "libsonic could not size its buffers for {frames} frames ({rate} Hz, {channels} \
         channels): out of memory"
    )]
    Reserve {
        /// The frames each buffer was being grown to.
        frames: usize,
        /// The stream's rate.
        rate: u32,
        /// The stream's channel count.
        channels: u16,
    },
    /// libsonic failed to grow a buffer after creation. Cannot happen within the bounds
    /// `Stretcher` keeps (its buffers are sized at creation); kept rather than ignored.
    #[error("libsonic could not grow a buffer during {op}: out of memory")]
    OutOfMemory {
        /// `push`, `flush`, `release_held` or `clear`.
        op: &'static str,
    },
}

/// Frame counters since creation (or [`Stretcher::reset_stats`]), for the stretched share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StretchStats {
    /// Input frames taken by `push`.
    pub frames_in: u64,
    /// Of those, the frames taken while the tempo was below 1.0.
    pub frames_in_stretched: u64,
    /// Output frames handed out by `pull`.
    pub frames_out: u64,
}

impl StretchStats {
    /// Share of the input taken at a tempo below 1.0 (0 when nothing was pushed).
    pub fn stretched_share(&self) -> f64 {
        if self.frames_in == 0 {
            0.0
        } else {
            self.frames_in_stretched as f64 / self.frames_in as f64
        }
    }

    /// Output frames minus input frames: what stretching added so far, less what libsonic
    /// still holds (negative while it holds more than it has added).
    pub fn added_frames(&self) -> i64 {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        to_i64(self.frames_out) - to_i64(self.frames_in)
    }
}

/// A libsonic stream, sized at creation so that its steady state never reallocates.
///
/// Create it outside the audio loop; in the loop call only `set_tempo`, `push`, `pull`,
/// `buffered_frames`, `flush`, `release_held`, `clear` and the getters: none of them
/// allocate, lock, log or block (libsonic's own calls are plain memcpy/memmove and
/// arithmetic on buffers it already has; see docs/STRETCH.md for how that was checked).
#[derive(Debug)]
pub struct Stretcher {
    stream: NonNull<ffi::SonicStreamStruct>,
    rate: u32,
    channels: usize,
    max_push: usize,
    min_tempo: f32,
    tempo: f32,
    latency: usize,
    stats: StretchStats,
}

// SAFETY: the stream is a heap struct of libsonic's with no thread affinity, globals or
// thread-local state; `Stretcher` owns it exclusively and every call goes through
// `&mut self` (or `&self` for a read-only getter), so moving it to the audio thread is sound.
unsafe impl Send for Stretcher {}

impl Stretcher {
    /// Creates the stream and grows libsonic's buffers to the most the steady state needs
    /// (all allocation happens here).
    pub fn new(config: StretchConfig) -> Result<Self, StretchError> {
        let StretchConfig {
            rate,
            channels,
            max_push_frames: max_push,
            min_tempo,
        } = config;
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return Err(StretchError::Rate { rate });
        }
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(StretchError::Channels { channels });
        }
        if max_push == 0 || max_push > rate as usize {
            return Err(StretchError::MaxPush {
                frames: max_push,
                rate,
            });
        }
        if !(MIN_TEMPO_FLOOR..=1.0).contains(&min_tempo) {
            return Err(StretchError::MinTempo { min_tempo });
        }
        // Both fit a c_int: rate ≤ 192 000 and channels ≤ 8 were checked above.
        // SAFETY: plain constructor; a NULL return is handled below.
        let raw = unsafe { ffi::sonicCreateStream(rate as c_int, c_int::from(channels)) };
        let stream = NonNull::new(raw).ok_or(StretchError::Create { rate, channels })?;
        let mut s = Stretcher {
            stream,
            rate,
            channels: usize::from(channels),
            max_push,
            min_tempo,
            tempo: 1.0,
            // libsonic's maxRequired, as allocateStreamBuffers computes it.
            latency: 2 * (rate / SONIC_MIN_PITCH) as usize,
            stats: StretchStats::default(),
        };
        s.reserve()?;
        Ok(s)
    }

    /// Grows libsonic's input and output buffers past anything the bounds `push` keeps can
    /// need, so that their `realloc` (in `enlarge{Input,Output}BufferIfNeeded`) never runs
    /// in the loop. libsonic has no reserve call and never shrinks a buffer, so one write
    /// of that many frames at speed 1.0 (a copy, no pitch analysis, no state kept) grows
    /// both; reading it back and flushing leaves the stream as new.
    fn reserve(&mut self) -> Result<(), StretchError> {
        let frames = self.reserve_frames();
        let err = StretchError::Reserve {
            frames,
            rate: self.rate,
            channels: self.channels as u16,
        };
        let mut scratch = vec![0i16; frames * self.channels];
        let n = c_int::try_from(frames).map_err(|_| StretchError::MaxPush {
            frames: self.max_push,
            rate: self.rate,
        })?;
        // SAFETY: the stream is live; `scratch` holds `frames` whole frames and libsonic
        // only reads it (addShortSamplesToInputBuffer memcpy's from it).
        if unsafe { ffi::sonicWriteShortToStream(self.stream.as_ptr(), scratch.as_mut_ptr(), n) }
            == 0
        {
            return Err(err);
        }
        // SAFETY: the stream is live; `scratch` has room for `n` frames.
        let got =
            unsafe { ffi::sonicReadShortFromStream(self.stream.as_ptr(), scratch.as_mut_ptr(), n) };
        // SAFETY: the stream is live. At speed 1.0 with nothing held this adds and then
        // trims silence: it only proves the flush path fits in the grown buffers.
        if got != n || unsafe { ffi::sonicFlushStream(self.stream.as_ptr()) } == 0 {
            return Err(err);
        }
        if self.buffered_frames() != 0 {
            return Err(err);
        }
        Ok(())
    }

    /// Frames each libsonic buffer is grown to. With M = `latency` (maxRequired) and P =
    /// `max_push`, from sonic.c 0.2.0: after a write libsonic holds < M input frames; a
    /// write of ≤ P frames therefore needs input room < M + P and produces at most
    /// 2 × (M + P) output frames (each inserted period doubles one, the rest is copied);
    /// `push` writes only while < P frames wait, so the output stays < 3P + 2M;
    /// `release_held` adds < M; a flush checks input room for 2 × held + 2M < 4M and
    /// adds < 2 × (held + 2M) output transiently. No sequence of calls needs more than
    /// 3P + 8M; 4P + 12M leaves a margin (≈ 43 KB a channel at 48 kHz, P = 960).
    fn reserve_frames(&self) -> usize {
        4 * self.max_push + 12 * self.latency
    }

    /// Sets the tempo (1.0 normal, 0.9 = 10 % slower), clamped to `min_tempo..=1.0` (NaN
    /// means 1.0); returns the tempo now in force. Applies to all audio not yet in the
    /// output buffer, including what libsonic holds.
    pub fn set_tempo(&mut self, tempo: f32) -> f32 {
        let t = if tempo.is_nan() {
            1.0
        } else {
            tempo.clamp(self.min_tempo, 1.0)
        };
        if t != self.tempo {
            self.tempo = t;
            // SAFETY: the stream is live; this only stores a float.
            unsafe { ffi::sonicSetSpeed(self.stream.as_ptr(), t) };
        }
        t
    }

    /// The tempo in force.
    pub fn tempo(&self) -> f32 {
        self.tempo
    }

    /// The slowest tempo allowed.
    pub fn min_tempo(&self) -> f32 {
        self.min_tempo
    }

    /// Frames per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Interleaved channels per frame.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The most frames one `push` takes.
    pub fn max_push_frames(&self) -> usize {
        self.max_push
    }

    /// Input frames libsonic may hold back below tempo 1.0 (fewer than this; none at 1.0):
    /// its algorithmic latency, 2 × rate / 65 (1 476 frames, 30.75 ms at 48 kHz).
    pub fn latency_frames(&self) -> usize {
        self.latency
    }

    /// Output frames ready for `pull`: audio already stretched at the tempo it was pushed
    /// at, which a tempo change no longer affects. Keep this near one period.
    pub fn buffered_frames(&self) -> usize {
        // SAFETY: the stream is live; libsonic only reads a counter here.
        let n = unsafe { ffi::sonicSamplesAvailable(self.stream.as_ptr()) };
        usize::try_from(n).unwrap_or(0)
    }

    /// Feeds whole frames from `input` (interleaved; a trailing partial frame is ignored)
    /// at the current tempo. Takes at most `max_push_frames`, and nothing while
    /// `buffered_frames() >= max_push_frames` (pull first): that bound is what keeps
    /// stretched audio from piling up ahead of the tempo. Returns the frames taken.
    pub fn push(&mut self, input: &[i16]) -> Result<usize, StretchError> {
        let frames = (input.len() / self.channels).min(self.max_push);
        if frames == 0 || self.buffered_frames() >= self.max_push {
            return Ok(0);
        }
        // `frames` ≤ max_push ≤ rate ≤ MAX_RATE, so it fits.
        let n = frames as c_int;
        // SAFETY: the stream is live; `input` holds at least `frames` whole frames; libsonic
        // only reads through this pointer (sonic.c 0.2.0 memcpy's it into its input buffer),
        // so handing it a pointer derived from a shared slice is sound.
        let ok = unsafe {
            ffi::sonicWriteShortToStream(self.stream.as_ptr(), input.as_ptr().cast_mut(), n)
        };
        if ok == 0 {
            return Err(StretchError::OutOfMemory { op: "push" });
        }
        self.stats.frames_in += frames as u64;
        if self.tempo < 1.0 {
            self.stats.frames_in_stretched += frames as u64;
        }
        Ok(frames)
    }

    /// Moves up to `out.len() / channels` stretched frames into `out`; returns how many.
    pub fn pull(&mut self, out: &mut [i16]) -> usize {
        let max = c_int::try_from(out.len() / self.channels).unwrap_or(c_int::MAX);
        if max == 0 {
            return 0;
        }
        // SAFETY: the stream is live; `out` has room for `max` whole frames.
        let got =
            unsafe { ffi::sonicReadShortFromStream(self.stream.as_ptr(), out.as_mut_ptr(), max) };
        let got = usize::try_from(got).unwrap_or(0);
        self.stats.frames_out += got as u64;
        got
    }

    /// End of the stream: turns everything libsonic holds into output (`pull` it next).
    /// The total output then matches the input at the tempos used, within `latency_frames`.
    /// Mid-speech it may distort a little (libsonic pads with silence to finish a period).
    pub fn flush(&mut self) -> Result<(), StretchError> {
        // SAFETY: the stream is live; the buffers were sized for a flush in `reserve`.
        if unsafe { ffi::sonicFlushStream(self.stream.as_ptr()) } == 0 {
            return Err(StretchError::OutOfMemory { op: "flush" });
        }
        Ok(())
    }

    /// Makes the input libsonic holds (fewer than `latency_frames`) ready to `pull` now,
    /// unstretched, keeping the tempo: for when the source runs dry mid-utterance, where
    /// waiting would keep real audio back and `flush` would pad silence into the speech.
    pub fn release_held(&mut self) -> Result<(), StretchError> {
        let p = self.stream.as_ptr();
        // At speed 1.0 processing copies every held frame to the output, continuing the
        // audio exactly where the last stretched period ended.
        // SAFETY: the stream is live. A NULL pointer with 0 frames is how libsonic's own
        // flush asks for processing without input (nothing is read); the copy fits the
        // output buffer grown in `reserve` (see `reserve_frames`).
        let ok = unsafe {
            ffi::sonicSetSpeed(p, 1.0);
            let ok = ffi::sonicWriteShortToStream(p, std::ptr::null_mut(), 0);
            ffi::sonicSetSpeed(p, self.tempo);
            ok
        };
        if ok == 0 {
            return Err(StretchError::OutOfMemory { op: "release_held" });
        }
        Ok(())
    }

    /// Drops everything held and buffered (an interrupt), keeping the tempo.
    pub fn clear(&mut self) -> Result<(), StretchError> {
        let tempo = self.tempo;
        // At speed 1.0 the flush is a copy: no pitch analysis spent on audio to be dropped.
        // SAFETY: the stream is live; this only stores a float.
        unsafe { ffi::sonicSetSpeed(self.stream.as_ptr(), 1.0) };
        let flushed = self.flush();
        let mut sink = [0i16; 1024];
        let frames = c_int::try_from(sink.len() / self.channels).unwrap_or(1);
        loop {
            // SAFETY: the stream is live; `sink` has room for `frames` whole frames.
            let got = unsafe {
                ffi::sonicReadShortFromStream(self.stream.as_ptr(), sink.as_mut_ptr(), frames)
            };
            if got <= 0 {
                break;
            }
        }
        // SAFETY: as above.
        unsafe { ffi::sonicSetSpeed(self.stream.as_ptr(), tempo) };
        flushed.map_err(|_| StretchError::OutOfMemory { op: "clear" })
    }

    /// Frame counters since creation or the last `reset_stats`.
    pub fn stats(&self) -> StretchStats {
        self.stats
    }

    /// Zeroes the frame counters (e.g. at the start of an utterance).
    pub fn reset_stats(&mut self) {
        self.stats = StretchStats::default();
    }
}

impl Drop for Stretcher {
    fn drop(&mut self) {
        // SAFETY: the stream came from sonicCreateStream and is destroyed exactly once.
        unsafe { ffi::sonicDestroyStream(self.stream.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_out_of_range_is_refused_with_the_value() {
        let ok = StretchConfig::new(48_000, 1, 960);
        let cases = [
            (StretchConfig { rate: 4_000, ..ok }, "4000 Hz"),
            (StretchConfig { channels: 0, ..ok }, "0 channels"),
            (StretchConfig { channels: 9, ..ok }, "9 channels"),
            (
                StretchConfig {
                    max_push_frames: 0,
                    ..ok
                },
                "max_push_frames 0",
            ),
            (
                StretchConfig {
                    max_push_frames: 48_001,
                    ..ok
                },
                "max_push_frames 48001",
            ),
            (ok.with_min_tempo(0.4), "min_tempo 0.4"),
            (ok.with_min_tempo(1.1), "min_tempo 1.1"),
            (ok.with_min_tempo(f32::NAN), "min_tempo NaN"),
        ];
        for (cfg, want) in cases {
            let err = Stretcher::new(cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn latency_is_libsonics_max_required() {
        let s = Stretcher::new(StretchConfig::new(48_000, 1, 960)).unwrap();
        assert_eq!(s.latency_frames(), 1_476);
        assert_eq!(s.buffered_frames(), 0);
        assert_eq!(s.tempo(), 1.0);
    }

    #[test]
    fn stats_share_and_added_frames() {
        let st = StretchStats {
            frames_in: 1_000,
            frames_in_stretched: 250,
            frames_out: 1_020,
        };
        assert_eq!(st.stretched_share(), 0.25);
        assert_eq!(st.added_frames(), 20);
        assert_eq!(StretchStats::default().stretched_share(), 0.0);
    }
}
