//! PCM → speaker: the `Sink` trait and its backends (ALSA, WAV, Snapcast), the playout buffer
//! and the audio thread that owns the sink.

pub mod alsa;
pub mod channels;
pub mod clock;
pub mod playout;
pub mod policy;
pub mod snapcast;
pub mod stretch;
pub mod stretch_gate;
mod thread;
pub mod wav;

/// The format a sink actually granted (read back from the device, never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFormat {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// Frames per period: the audio thread always writes exactly this many.
    pub period_frames: usize,
    /// Frames the device buffer holds.
    pub buffer_frames: usize,
}

/// What the caller would like from a sink; backends negotiate and may grant something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRequest {
    /// Preferred rate (48 kHz suits Opus best).
    pub rate: u32,
    /// Preferred channel count (the source's; the device may need more).
    pub channels: u16,
    /// Preferred period length in milliseconds.
    pub period_ms: u32,
    /// Preferred number of periods in the device buffer.
    pub buffer_periods: u32,
}

impl Default for SinkRequest {
    fn default() -> Self {
        SinkRequest {
            rate: 48_000,
            channels: 1,
            period_ms: 20,
            buffer_periods: 4,
        }
    }
}

/// Errors from any sink, each naming the device or file.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The device does not exist.
    #[error("audio device '{device}' not found: {detail}")]
    NotFound {
        /// The ALSA device name.
        device: String,
        /// alsa-lib's or the OS's description.
        detail: String,
    },
    /// The device is held by another program.
    #[error("audio device '{device}' is busy (another program is using it)")]
    Busy {
        /// The ALSA device name.
        device: String,
    },
    /// A hardware parameter could not be set.
    #[error("audio device '{device}': cannot set {param}: {detail}")]
    Params {
        /// The ALSA device name.
        device: String,
        /// The hardware parameter being set.
        param: &'static str,
        /// alsa-lib's or the OS's description.
        detail: String,
    },
    /// Writing or draining failed and could not be recovered.
    #[error("audio device '{device}': {op} failed: {detail}")]
    Io {
        /// The ALSA device name.
        device: String,
        /// The operation that failed.
        op: &'static str,
        /// alsa-lib's or the OS's description.
        detail: String,
    },
    /// The device went away (e.g. a USB DAC was unplugged).
    #[error("audio device '{device}' disappeared: {detail}")]
    Gone {
        /// The ALSA device name.
        device: String,
        /// alsa-lib's or the OS's description.
        detail: String,
    },
    /// A snapserver stream could not be reached or fed (names the output and server).
    #[error("{device}: {detail}")]
    Snapcast {
        /// The output and its server, e.g. "snapcast output 'house' (snapserver h:4953)".
        device: String,
        /// What failed and what to check.
        detail: String,
    },
    /// A WAV file could not be written.
    #[error("cannot write WAV file '{path}': {detail}")]
    Wav {
        /// The WAV file.
        path: String,
        /// alsa-lib's or the OS's description.
        detail: String,
    },
}

/// A place whole periods of PCM go to. Only the audio thread calls these.
pub trait Sink: Send {
    /// The granted format.
    fn format(&self) -> DeviceFormat;
    /// Human-readable name (ALSA device name or file path).
    fn name(&self) -> &str;
    /// Writes one whole period (`period_frames * channels` samples); blocks while the
    /// device buffer is full, which is what clocks the audio thread. Must not allocate.
    fn write(&mut self, period: &[i16]) -> Result<(), SinkError>;
    /// Blocks until every written sample has been played.
    fn drain(&mut self) -> Result<(), SinkError>;
    /// Whether writes are paced by a real clock (a device). A file is not: the audio
    /// thread then waits for data instead of inserting silence for stalls or lead-in.
    fn is_clocked(&self) -> bool {
        true
    }
    /// Underruns/suspends recovered so far (for stats).
    fn xruns(&self) -> u64 {
        0
    }
    /// Frames written but not yet played, if the device can tell (ALSA's delay). The audio
    /// thread waits for data rather than insert silence while this is more than a period.
    fn queued_frames(&mut self) -> Option<u64> {
        None
    }
}

/// Opens the daemon's audio device by name: ALSA on the appliance, a stand-in in tests.
/// Called off the async runtime (opening may block).
pub trait SinkOpener: Send + Sync {
    /// Opens `device`, negotiating `req`.
    fn open(&self, device: &str, req: &SinkRequest) -> Result<Box<dyn Sink>, SinkError>;
}
