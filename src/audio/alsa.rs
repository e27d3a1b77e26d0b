//! The ALSA sink: opens a playback PCM, negotiates rate/channels/period/buffer defensively,
//! reads back what the device granted, and writes whole periods with xrun recovery.
//! Also device listing (`herald devices`) and capability probing.
//!
//! Negotiation in [`AlsaSink::open`]: RW interleaved; S16 native-endian, else S32, else float
//! (converted in `write`, into a buffer allocated at open); the requested channel count if
//! accepted, else the nearest (the audio thread up-mixes to `format().channels`); the rate
//! nearest the request (a 44.1 kHz-only DAC gives 44100; the pipeline resamples); period and
//! buffer near `period_ms` × `buffer_periods`, and if `hw_params` refuses that, a power-of-two
//! period, then the buffer alone, then the device's defaults. Everything is read back into
//! [`DeviceFormat`] and logged once. Start threshold and avail_min are one period.

use std::ffi::CString;

use alsa::pcm::{Access, Format, Frames, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::{DeviceFormat, Sink, SinkError, SinkRequest};

/// Sample rates `probe` checks individually (the usual DAC rates from 8 kHz to 192 kHz).
pub const COMMON_RATES: [u32; 12] = [
    8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000, 176_400, 192_000,
];

/// Sample encodings the sink can write, most preferred first. S16 is what the pipeline
/// produces; S32 and float are converted into a buffer allocated once at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleKind {
    S16,
    S32,
    F32,
}

impl SampleKind {
    const PREFERENCE: [SampleKind; 3] = [SampleKind::S16, SampleKind::S32, SampleKind::F32];

    fn alsa(self) -> Format {
        match self {
            SampleKind::S16 => Format::s16(),
            SampleKind::S32 => Format::s32(),
            SampleKind::F32 => Format::float(),
        }
    }

    fn bytes(self) -> usize {
        match self {
            SampleKind::S16 => 2,
            SampleKind::S32 | SampleKind::F32 => 4,
        }
    }
}

/// A playback PCM opened in blocking mode; the audio thread owns it.
pub struct AlsaSink {
    pcm: PCM,
    device: String,
    format: DeviceFormat,
    kind: SampleKind,
    /// Native-endian bytes of one period in the device's sample format (allocated at open so
    /// `write` never allocates).
    buf: Vec<u8>,
    xruns: u64,
}

impl std::fmt::Debug for AlsaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsaSink")
            .field("device", &self.device)
            .field("format", &self.format)
            .field("sample_format", &self.sample_format())
            .field("xruns", &self.xruns)
            .finish()
    }
}

/// One playback device from ALSA's name hints (or `default`), with what it accepts.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The name to put in the config (`device = "..."`).
    pub name: String,
    /// ALSA's description (may span lines), empty if none.
    pub description: String,
    /// What the device accepts, or why it could not be probed ("busy", "not found: ...").
    pub caps: Result<DeviceCaps, String>,
}

/// What a playback device accepts, as reported by alsa-lib's hw-params space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Lowest and highest rate (frames/s).
    pub rates: (u32, u32),
    /// Which of [`COMMON_RATES`] the device accepts.
    pub common_rates: Vec<u32>,
    /// Fewest and most channels.
    pub channels: (u32, u32),
    /// Sample formats by ALSA name (e.g. `S16_LE`).
    pub formats: Vec<String>,
}

/// The errno inside an alsa error (the crate stores it positive; be lenient about the sign).
fn errno(e: &alsa::Error) -> i32 {
    e.errno().abs()
}

fn c_name(device: &str) -> Result<CString, SinkError> {
    CString::new(device).map_err(|_| SinkError::NotFound {
        device: device.to_string(),
        detail: "the device name contains a NUL byte".to_string(),
    })
}

/// Maps an error from opening a PCM to what the user needs to know.
fn open_error(device: &str, e: alsa::Error) -> SinkError {
    let device = device.to_string();
    match errno(&e) {
        libc::ENOENT | libc::ENXIO => SinkError::NotFound {
            device,
            detail: "no such PCM; `herald devices` or `aplay -L` lists the playback devices"
                .to_string(),
        },
        libc::ENODEV => SinkError::NotFound {
            device,
            detail: "no such sound card or device (is the DAC plugged in?)".to_string(),
        },
        libc::EBUSY | libc::EAGAIN => SinkError::Busy { device },
        libc::EACCES | libc::EPERM => SinkError::Io {
            device,
            op: "open",
            detail: format!("{e} (is the user in the 'audio' group?)"),
        },
        _ => SinkError::Io {
            device,
            op: "open",
            detail: e.to_string(),
        },
    }
}

/// Opens a playback PCM without ever blocking in `open`: a busy `hw:` device makes a
/// blocking open wait until it is free, which would hang the daemon silently.
fn open_nonblocking(device: &str) -> Result<PCM, SinkError> {
    let name = c_name(device)?;
    PCM::open(&name, Direction::Playback, true).map_err(|e| open_error(device, e))
}

/// Formats the device offers, by ALSA name.
fn offered_formats(hwp: &HwParams) -> Vec<String> {
    Format::all()
        .iter()
        // Unknown is -1: alsa-lib asserts (aborts) on it instead of returning an error.
        .filter(|f| **f != Format::Unknown && hwp.test_format(**f).is_ok())
        .map(|f| f.to_string())
        .collect()
}

fn params_error(device: &str, param: &'static str, detail: String) -> SinkError {
    SinkError::Params {
        device: device.to_string(),
        param,
        detail,
    }
}

/// Rate, channels, period and buffer the caller asked for, in frames.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    rate: u32,
    channels: u32,
    period_ms: u32,
    buffer_periods: u32,
}

/// How period and buffer sizes are asked for; tried in order until the device takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// Period near `period_ms`, buffer near `buffer_periods` periods.
    Requested,
    /// The same with the period rounded up to a power of two (which many drivers prefer).
    PowerOfTwo,
    /// Only the total buffer; the device picks its period.
    BufferOnly,
    /// Nothing: the device's own defaults.
    DeviceDefaults,
}

impl Timing {
    const ORDER: [Timing; 4] = [
        Timing::Requested,
        Timing::PowerOfTwo,
        Timing::BufferOnly,
        Timing::DeviceDefaults,
    ];

    fn describe(self) -> &'static str {
        match self {
            Timing::Requested => "as requested",
            Timing::PowerOfTwo => "period rounded to a power of two",
            Timing::BufferOnly => "buffer only; the device chose the period",
            Timing::DeviceDefaults => "the device's default period and buffer",
        }
    }
}

/// Why one negotiation attempt failed: fatal (format, channels, rate: no timing choice helps)
/// or only for this timing strategy.
enum Attempt {
    Fatal(SinkError),
    Timing(SinkError),
}

/// Applies access, format, channels and rate (which the sink cannot work without), then
/// period and buffer as `timing` says.
fn negotiate(
    device: &str,
    hwp: &HwParams,
    want: Wanted,
    timing: Timing,
) -> Result<SampleKind, Attempt> {
    hwp.set_access(Access::RWInterleaved).map_err(|e| {
        Attempt::Fatal(params_error(
            device,
            "access",
            format!("interleaved read/write access refused: {e}"),
        ))
    })?;

    let kind = SampleKind::PREFERENCE
        .into_iter()
        .find(|k| hwp.test_format(k.alsa()).is_ok())
        .ok_or_else(|| {
            Attempt::Fatal(params_error(
                device,
                "format",
                format!(
                    "the device offers {}; herald writes {}, {} or {}",
                    offered_formats(hwp).join(", "),
                    Format::s16(),
                    Format::s32(),
                    Format::float()
                ),
            ))
        })?;
    hwp.set_format(kind.alsa()).map_err(|e| {
        Attempt::Fatal(params_error(
            device,
            "format",
            format!("{}: {e}", kind.alsa()),
        ))
    })?;

    if hwp.test_channels(want.channels).is_ok() {
        hwp.set_channels(want.channels).map_err(|e| {
            Attempt::Fatal(params_error(
                device,
                "channels",
                format!("{}: {e}", want.channels),
            ))
        })?;
    } else {
        let range = (hwp.get_channels_min().ok(), hwp.get_channels_max().ok());
        hwp.set_channels_near(want.channels).map_err(|e| {
            Attempt::Fatal(params_error(
                device,
                "channels",
                format!(
                    "{} refused and no nearby count accepted (device range {range:?}): {e}",
                    want.channels
                ),
            ))
        })?;
    }

    hwp.set_rate_near(want.rate, ValueOr::Nearest)
        .map_err(|e| {
            let range = (hwp.get_rate_min().ok(), hwp.get_rate_max().ok());
            Attempt::Fatal(params_error(
                device,
                "rate",
                format!("near {} Hz (device range {range:?}): {e}", want.rate),
            ))
        })?;

    let rate = hwp.get_rate().unwrap_or(want.rate);
    let period = (u64::from(rate) * u64::from(want.period_ms) / 1000).max(1);
    let period = match timing {
        Timing::PowerOfTwo => period.next_power_of_two(),
        _ => period,
    };
    let period = Frames::try_from(period).unwrap_or(Frames::MAX);
    // Frames is a C long (32 bits on armhf, where i32: From<u32> does not exist); via u16
    // the conversion is infallible everywhere (buffer_periods is validated to 2..=64).
    let periods = Frames::from(u16::try_from(want.buffer_periods.max(2)).unwrap_or(u16::MAX));
    let set_buffer = |buffer: Frames| {
        hwp.set_buffer_size_near(buffer).map_err(|e| {
            Attempt::Timing(params_error(
                device,
                "buffer size",
                format!("near {buffer} frames: {e}"),
            ))
        })
    };
    match timing {
        Timing::Requested | Timing::PowerOfTwo => {
            let granted = hwp
                .set_period_size_near(period, ValueOr::Nearest)
                .map_err(|e| {
                    Attempt::Timing(params_error(
                        device,
                        "period size",
                        format!("near {period} frames: {e}"),
                    ))
                })?;
            set_buffer(granted.saturating_mul(periods))?;
        }
        Timing::BufferOnly => {
            set_buffer(period.saturating_mul(periods))?;
        }
        Timing::DeviceDefaults => {}
    }
    Ok(kind)
}

impl AlsaSink {
    /// Opens `device` for playback and negotiates the format (see the module docs); logs one
    /// line with what was requested and what the device granted.
    pub fn open(device: &str, req: &SinkRequest) -> Result<AlsaSink, SinkError> {
        // Fail fast on busy/missing devices without blocking (see `open_nonblocking`), then
        // reopen in blocking mode so writes are clocked by the device. The tiny window between
        // the two opens only matters if another program grabs the device in between.
        drop(open_nonblocking(device)?);
        let name = c_name(device)?;
        let pcm =
            PCM::open(&name, Direction::Playback, false).map_err(|e| open_error(device, e))?;

        let want = Wanted {
            rate: req.rate,
            channels: u32::from(req.channels.max(1)),
            period_ms: req.period_ms.max(1),
            buffer_periods: req.buffer_periods,
        };

        // Some drivers advertise sizes in their hw-params space and then refuse them when
        // applied; a less exact period is better than no sound.
        let mut first_error = None;
        let mut chosen = None;
        for timing in Timing::ORDER {
            match apply(device, &pcm, want, timing) {
                Ok(kind) => {
                    chosen = Some((kind, timing));
                    break;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Timing(e)) => {
                    tracing::warn!(device, strategy = timing.describe(), error = %e, "period/buffer refused; trying the next choice");
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((kind, timing)) = chosen else {
            return Err(first_error.unwrap_or_else(|| {
                params_error(
                    device,
                    "hw params",
                    "no period/buffer choice was accepted".to_string(),
                )
            }));
        };

        let hwp = pcm
            .hw_params_current()
            .map_err(|e| params_error(device, "hw params", format!("read back: {e}")))?;
        let rate = hwp
            .get_rate()
            .map_err(|e| params_error(device, "rate", format!("read back: {e}")))?;
        let channels = hwp
            .get_channels()
            .map_err(|e| params_error(device, "channels", format!("read back: {e}")))?;
        let channels = u16::try_from(channels).map_err(|_| {
            params_error(
                device,
                "channels",
                format!(
                    "device granted {channels} channels; at most {} are supported",
                    u16::MAX
                ),
            )
        })?;
        let period = hwp
            .get_period_size()
            .map_err(|e| params_error(device, "period size", format!("read back: {e}")))?;
        let buffer = hwp
            .get_buffer_size()
            .map_err(|e| params_error(device, "buffer size", format!("read back: {e}")))?;
        let granted_format = hwp.get_format().ok();
        drop(hwp);
        let period_frames = usize::try_from(period)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                params_error(
                    device,
                    "period size",
                    format!("device granted an unusable period of {period} frames"),
                )
            })?;
        let buffer_frames = usize::try_from(buffer)
            .ok()
            .filter(|b| *b >= period_frames)
            .ok_or_else(|| {
                params_error(
                    device,
                    "buffer size",
                    format!(
                        "device granted {buffer} frames, less than one period ({period_frames})"
                    ),
                )
            })?;

        {
            let swp = pcm
                .sw_params_current()
                .map_err(|e| params_error(device, "sw params", e.to_string()))?;
            // Start as soon as one period is queued (lowest latency to first sound), and wake
            // the writer whenever a whole period fits.
            swp.set_start_threshold(period)
                .map_err(|e| params_error(device, "start threshold", e.to_string()))?;
            swp.set_avail_min(period)
                .map_err(|e| params_error(device, "avail min", e.to_string()))?;
            pcm.sw_params(&swp)
                .map_err(|e| params_error(device, "sw params", e.to_string()))?;
        }

        let format = DeviceFormat {
            rate,
            channels,
            period_frames,
            buffer_frames,
        };
        tracing::info!(
            device,
            req.rate,
            req.channels,
            req.period_ms,
            req.buffer_periods,
            granted.rate = rate,
            granted.channels = channels,
            granted.period_frames = period_frames,
            granted.buffer_frames = buffer_frames,
            granted.format = %granted_format.map(|f| f.to_string()).unwrap_or_else(|| kind.alsa().to_string()),
            timing = timing.describe(),
            "ALSA device opened"
        );

        let buf = vec![0u8; period_frames * usize::from(channels) * kind.bytes()];
        Ok(AlsaSink {
            pcm,
            device: device.to_string(),
            format,
            kind,
            buf,
            xruns: 0,
        })
    }

    /// The sample format written to the device (`S16_LE`, `S32_LE` or `FLOAT_LE` on little-endian).
    pub fn sample_format(&self) -> String {
        self.kind.alsa().to_string()
    }
}

/// Negotiates into a fresh hw-params space and applies it to the PCM.
fn apply(device: &str, pcm: &PCM, want: Wanted, timing: Timing) -> Result<SampleKind, Attempt> {
    let hwp = HwParams::any(pcm)
        .map_err(|e| Attempt::Fatal(params_error(device, "hw params", e.to_string())))?;
    let kind = negotiate(device, &hwp, want, timing)?;
    pcm.hw_params(&hwp)
        .map_err(|e| Attempt::Timing(params_error(device, "hw params", e.to_string())))?;
    Ok(kind)
}

/// Converts one chunk of S16 samples into `out` in the device's sample format.
fn convert(kind: SampleKind, samples: &[i16], out: &mut [u8]) {
    match kind {
        SampleKind::S16 => {
            for (s, o) in samples.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&s.to_ne_bytes());
            }
        }
        SampleKind::S32 => {
            for (s, o) in samples.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&(i32::from(*s) << 16).to_ne_bytes());
            }
        }
        SampleKind::F32 => {
            for (s, o) in samples.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&(f32::from(*s) / 32_768.0).to_ne_bytes());
            }
        }
    }
}

/// Consecutive failed attempts without progress before `write` gives up.
const MAX_RETRIES: u32 = 8;

impl AlsaSink {
    /// Handles a failed `writei`/`drain`: recovers xruns and suspends (counting them), maps a
    /// vanished device to `Gone` and anything else to `Io`.
    fn recover(&mut self, op: &'static str, e: alsa::Error) -> Result<(), SinkError> {
        match errno(&e) {
            libc::EINTR | libc::EAGAIN => Ok(()),
            libc::EPIPE | libc::ESTRPIPE => match self.pcm.try_recover(e, true) {
                Ok(()) => {
                    self.xruns += 1;
                    Ok(())
                }
                Err(e2) => Err(self.io_error(op, e2)),
            },
            // The PCM fell out of the running/prepared states (e.g. after a failed drain).
            libc::EBADFD => self.pcm.prepare().map_err(|e2| self.io_error(op, e2)),
            _ => Err(self.io_error(op, e)),
        }
    }

    fn io_error(&self, op: &'static str, e: alsa::Error) -> SinkError {
        let device = self.device.clone();
        match errno(&e) {
            // An unplugged USB DAC fails writes with ENODEV.
            libc::ENODEV | libc::ENXIO => SinkError::Gone {
                device,
                detail: e.to_string(),
            },
            _ => SinkError::Io {
                device,
                op,
                detail: e.to_string(),
            },
        }
    }
}

/// Opens ALSA PCMs for the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlsaOpener;

impl super::SinkOpener for AlsaOpener {
    fn open(&self, device: &str, req: &SinkRequest) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(AlsaSink::open(device, req)?))
    }
}

impl Sink for AlsaSink {
    fn format(&self) -> DeviceFormat {
        self.format
    }

    fn name(&self) -> &str {
        &self.device
    }

    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        let channels = usize::from(self.format.channels);
        if period.len() % channels != 0 {
            return Err(SinkError::Io {
                device: self.device.clone(),
                op: "write",
                detail: format!(
                    "{} samples is not a whole number of {channels}-channel frames",
                    period.len()
                ),
            });
        }
        let sample_bytes = self.kind.bytes();
        let frame_bytes = channels * sample_bytes;
        let chunk_samples = self.buf.len() / sample_bytes;
        // A period longer than negotiated is written in buffer-sized chunks (never reallocated).
        for chunk in period.chunks(chunk_samples) {
            let len = chunk.len() * sample_bytes;
            convert(self.kind, chunk, &mut self.buf[..len]);
            let mut off = 0;
            let mut retries = 0;
            while off < len {
                let res = self.pcm.io_bytes().writei(&self.buf[off..len]);
                match res {
                    Ok(frames) => {
                        off += frames * frame_bytes;
                        retries = 0;
                    }
                    Err(e) => {
                        retries += 1;
                        if retries > MAX_RETRIES {
                            return Err(self.io_error("write", e));
                        }
                        self.recover("write", e)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), SinkError> {
        if let Err(e) = self.pcm.drain() {
            match errno(&e) {
                // An underrun at the very end loses nothing that was written; prepare below.
                libc::EPIPE | libc::ESTRPIPE | libc::EBADFD => {}
                _ => return Err(self.io_error("drain", e)),
            }
        }
        // drain leaves the PCM in SETUP; prepare so the next utterance can be written.
        self.pcm.prepare().map_err(|e| self.io_error("prepare", e))
    }

    fn xruns(&self) -> u64 {
        self.xruns
    }

    fn queued_frames(&mut self) -> Option<u64> {
        // An error (e.g. the PCM is in XRUN) means: do not count on anything queued.
        let delay = self.pcm.delay().ok()?;
        u64::try_from(delay).ok()
    }
}

/// What `device` accepts, probed without blocking (a busy device gives `SinkError::Busy`).
pub fn probe(device: &str) -> Result<DeviceCaps, SinkError> {
    let pcm = open_nonblocking(device)?;
    let hwp = HwParams::any(&pcm).map_err(|e| params_error(device, "hw params", e.to_string()))?;
    // Only interleaved read/write matters to herald; probe within that access mode.
    hwp.set_access(Access::RWInterleaved).map_err(|e| {
        params_error(
            device,
            "access",
            format!("interleaved read/write access refused: {e}"),
        )
    })?;
    let rmin = hwp
        .get_rate_min()
        .map_err(|e| params_error(device, "rate", e.to_string()))?;
    let rmax = hwp
        .get_rate_max()
        .map_err(|e| params_error(device, "rate", e.to_string()))?;
    let cmin = hwp
        .get_channels_min()
        .map_err(|e| params_error(device, "channels", e.to_string()))?;
    let cmax = hwp
        .get_channels_max()
        .map_err(|e| params_error(device, "channels", e.to_string()))?;
    let common_rates = COMMON_RATES
        .into_iter()
        .filter(|r| hwp.test_rate(*r).is_ok())
        .collect();
    Ok(DeviceCaps {
        rates: (rmin, rmax),
        common_rates,
        channels: (cmin, cmax),
        formats: offered_formats(&hwp),
    })
}

/// Playback devices from ALSA's name hints, plus `default` if the hints lack it, each probed.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut out: Vec<DeviceInfo> = Vec::new();
    let hints = match alsa::device_name::HintIter::new_str(None, "pcm") {
        Ok(h) => h.collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read ALSA device hints");
            Vec::new()
        }
    };
    for h in hints {
        if matches!(h.direction, Some(Direction::Capture)) {
            continue;
        }
        let Some(name) = h.name else { continue };
        if out.iter().any(|d| d.name == name) {
            continue;
        }
        out.push(DeviceInfo {
            name,
            description: h.desc.unwrap_or_default(),
            caps: Err(String::new()),
        });
    }
    if !out.iter().any(|d| d.name == "default") {
        out.insert(
            0,
            DeviceInfo {
                name: "default".to_string(),
                description: "ALSA's default device".to_string(),
                caps: Err(String::new()),
            },
        );
    }
    for d in &mut out {
        d.caps = probe(&d.name).map_err(|e| match e {
            SinkError::Busy { .. } => "busy".to_string(),
            other => other.to_string(),
        });
    }
    out
}

/// alsa-lib prints its own diagnostics ("ALSA lib pcm.c:2666:(snd_pcm_open_noupdate)
/// Unknown PCM …") straight to stderr, burying herald's clear error under noise. This
/// routes them to `tracing` at debug level instead (`-vv` shows them). Call once at start.
pub fn route_alsa_lib_errors() {
    type Handler = unsafe extern "C" fn(
        *const std::os::raw::c_char,
        std::os::raw::c_int,
        *const std::os::raw::c_char,
        std::os::raw::c_int,
        *const std::os::raw::c_char,
    );
    unsafe extern "C" fn to_tracing(
        file: *const std::os::raw::c_char,
        line: std::os::raw::c_int,
        function: *const std::os::raw::c_char,
        err: std::os::raw::c_int,
        fmt: *const std::os::raw::c_char,
    ) {
        let text = |p: *const std::os::raw::c_char| {
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: alsa-lib passes NUL-terminated static strings.
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            }
        };
        tracing::debug!(
            "alsa-lib {}:{line} ({}) err={err}: {}",
            text(file),
            text(function),
            text(fmt)
        );
    }
    // SAFETY: alsa-lib calls the handler as a C variadic function. Stable Rust cannot
    // define one, so this handler takes only the five named arguments and never reads the
    // variadic ones; on the System V x86-64, AAPCS64 (Linux) and AAPCS (armhf) calling
    // conventions the named arguments are passed identically either way and the caller
    // cleans up, so ignoring the rest is sound.
    unsafe {
        let handler: Handler = to_tracing;
        let handler: alsa_sys::snd_lib_error_handler_t = Some(std::mem::transmute::<
            Handler,
            unsafe extern "C" fn(
                *const std::os::raw::c_char,
                std::os::raw::c_int,
                *const std::os::raw::c_char,
                std::os::raw::c_int,
                *const std::os::raw::c_char,
                ...
            ),
        >(handler));
        alsa_sys::snd_lib_error_set_handler(handler);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_full_scale_and_sign() {
        let samples = [i16::MIN, -1, 0, 1, 16_384, i16::MAX];
        let mut out = [0u8; 24];
        convert(SampleKind::S32, &samples, &mut out);
        let s32: Vec<i32> = out
            .chunks_exact(4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(
            s32,
            vec![i32::MIN, -65_536, 0, 65_536, 1 << 30, 0x7fff_0000]
        );

        convert(SampleKind::F32, &samples, &mut out);
        let f: Vec<f32> = out
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(f[0], -1.0);
        assert_eq!(f[2], 0.0);
        assert_eq!(f[4], 0.5);
        assert!(f[5] < 1.0 && f[5] > 0.9999);

        let mut out16 = [0u8; 12];
        convert(SampleKind::S16, &samples, &mut out16);
        let s16: Vec<i16> = out16
            .chunks_exact(2)
            .map(|b| i16::from_ne_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(s16, samples);
    }
}
