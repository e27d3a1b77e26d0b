//! The audio device's whole life in the daemon, owned in one place: opening it (with the
//! before-open hook), lending its playout to one job at a time, the lead-in, idle close
//! (with the after-close hook), failure with reopen backoff, and a hung device. Its state
//! stays visible to `status` and the watchdog while a job holds the playout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;

use crate::audio::playout::{Playout, PlayoutConfig, PlayoutHealth, RealtimeStatus};
use crate::audio::{DeviceFormat, SinkOpener, SinkRequest};
use crate::config::Config;
use crate::protocol::{DeviceState, DeviceStatus};
use crate::tts::{OpenFuture, SpeechRequest, SpeechSource};

/// Reopen backoff after a device failure: first wait and cap.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long closing may wait for the audio thread to stop before abandoning it.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// A device call blocked this much longer than the device buffer lasts is not normal: the
/// device counts as stuck (status says so, the watchdog is not fed) until it moves or the
/// job gives up on it after `write_timeout`.
const STUCK_MARGIN: Duration = Duration::from_millis(500);

/// How the device is opened and kept, from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSettings {
    /// ALSA PCM name.
    pub name: String,
    /// What to ask the device for.
    pub sink: SinkRequest,
    /// The playout buffer's tuning.
    pub playout: PlayoutConfig,
    /// Silence fed before a job's first audio (wakes amplifiers).
    pub lead_in: Duration,
    /// Close after this long unused (zero: never).
    pub idle_close: Duration,
    /// argv run before opening (empty: none).
    pub hook_before_open: Vec<String>,
    /// argv run after closing (empty: none).
    pub hook_after_close: Vec<String>,
    /// A hook running longer is killed.
    pub hook_timeout: Duration,
    /// A device write or drain blocked this long means the device hangs: the job fails.
    pub write_timeout: Duration,
}

impl DeviceSettings {
    /// The settings in `cfg`.
    pub fn from_config(cfg: &Config) -> Self {
        let d = &cfg.daemon;
        DeviceSettings {
            name: cfg.audio.device.clone(),
            sink: cfg.sink_request(),
            playout: cfg.playout(),
            lead_in: Duration::from_millis(u64::from(d.lead_in_ms)),
            idle_close: Duration::from_secs(d.idle_close_s),
            hook_before_open: d.hook_before_open.clone(),
            hook_after_close: d.hook_after_close.clone(),
            hook_timeout: Duration::from_millis(d.hook_timeout_ms),
            write_timeout: Duration::from_millis(cfg.audio.write_timeout_ms),
        }
    }

    /// Whether the open device must be reopened to apply `other`.
    fn needs_reopen(&self, other: &DeviceSettings) -> bool {
        self.name != other.name || self.sink != other.sink || self.playout != other.playout
    }
}

/// The open device's playout, lent to a job.
pub struct Lease {
    /// The playout the job plays on.
    pub playout: Playout,
    /// The device was opened for this job (the lead-in has not played yet).
    pub fresh: bool,
    opened_at: Instant,
}

/// An open device. `playout` is `None` while a job holds it.
struct Open {
    playout: Option<Playout>,
    health: PlayoutHealth,
    format: DeviceFormat,
    opened_at: Instant,
}

enum State {
    Closed,
    // Boxed: the playout is large and there is only ever one of these.
    Open(Box<Open>),
    Failed { reason: String, retry_at: Instant },
}

/// The one owner of the audio device.
pub struct Device {
    opener: Arc<dyn SinkOpener>,
    settings: DeviceSettings,
    state: State,
    retry_wait: Duration,
    /// Reopen with new settings once it is free.
    stale: bool,
    last_used: Instant,
    realtime: String,
}

impl Device {
    /// A closed device, opened through `opener` when a job needs it.
    pub fn new(opener: Arc<dyn SinkOpener>, settings: DeviceSettings) -> Self {
        Device {
            opener,
            settings,
            state: State::Closed,
            retry_wait: RETRY_FIRST,
            stale: false,
            last_used: Instant::now(),
            realtime: "unknown (the device has not been opened yet)".into(),
        }
    }

    /// Applies reloaded settings; the device is reopened once free if they need it.
    pub fn reconfigure(&mut self, settings: DeviceSettings) {
        if self.settings.needs_reopen(&settings) {
            self.stale = true;
        }
        self.settings = settings;
    }

    /// The device's playout for one job, opening the device first if needed. The error is
    /// why it cannot be opened (also kept for `status`; a reopen is scheduled).
    pub async fn acquire(&mut self) -> Result<Lease, String> {
        if self.stale {
            self.close().await;
        }
        let fresh = !matches!(self.state, State::Open(_));
        if fresh {
            self.open().await?;
        }
        match &mut self.state {
            State::Open(o) => match o.playout.take() {
                Some(playout) => Ok(Lease {
                    playout,
                    fresh,
                    opened_at: o.opened_at,
                }),
                None => Err("the audio device is still held by the previous job".into()),
            },
            State::Failed { reason, .. } => Err(reason.clone()),
            State::Closed => Err("the audio device closed while opening".into()),
        }
    }

    /// Prepares a lent playout for a job: the lead-in starts feeding silence, and on a
    /// freshly opened device the first audio waits until the lead-in has played.
    pub fn lead_in(
        &self,
        lease: &mut Lease,
        source: Arc<dyn SpeechSource>,
    ) -> Arc<dyn SpeechSource> {
        let lead_in = self.settings.lead_in;
        if lead_in.is_zero() {
            return source;
        }
        lease.playout.lead_in();
        if !lease.fresh {
            return source;
        }
        Arc::new(LeadInSource {
            inner: source,
            until: (lease.opened_at + lead_in).into(),
        })
    }

    /// The lead-in for a job that starts with a chime: the device warms up with silence and
    /// the chime waits until the returned moment (a freshly opened device) — the speech is
    /// behind the chime anyway, so it is asked for at once.
    pub fn lead_in_until(&self, lease: &mut Lease) -> Option<Instant> {
        let lead_in = self.settings.lead_in;
        if lead_in.is_zero() {
            return None;
        }
        lease.playout.lead_in();
        lease.fresh.then(|| lease.opened_at + lead_in)
    }

    /// Takes the playout back after a job that left the device working.
    pub fn give_back(&mut self, mut lease: Lease) {
        lease.playout.cancel_lead_in();
        self.last_used = Instant::now();
        match &mut self.state {
            State::Open(o) => o.playout = Some(lease.playout),
            // Cannot happen (only a lease's owner changes the state of an open device);
            // close it off the runtime rather than lose track of it.
            _ => drop(tokio::task::spawn_blocking(move || {
                lease.playout.shutdown()
            })),
        }
    }

    /// The device failed (`reason`): releases it (abandoning an audio thread stuck in the
    /// device) and schedules a reopen with backoff.
    pub async fn fail(&mut self, reason: String, lease: Option<Lease>) {
        tracing::error!(%reason, "audio device error; retrying in {:?}", self.retry_wait);
        if let Some(l) = lease {
            self.give_back(l);
        }
        self.close().await;
        self.state = State::Failed {
            reason,
            retry_at: Instant::now() + self.retry_wait,
        };
        self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
    }

    /// Closes the device if it is open and not lent, then runs the after-close hook.
    pub async fn close(&mut self) {
        let State::Open(open) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        self.stale = false;
        if let Some(playout) = open.playout {
            stop_playout(playout, &self.settings.name).await;
        }
        run_hook(
            "hook_after_close",
            &self.settings.hook_after_close,
            self.settings.hook_timeout,
        )
        .await;
    }

    /// When the device next needs attention while no job runs: idle close or a reopen.
    pub fn next_timer(&self) -> Option<Instant> {
        let idle = self.settings.idle_close;
        match &self.state {
            State::Open(o) if o.playout.is_some() && self.stale => Some(Instant::now()),
            State::Open(o) if o.playout.is_some() && !idle.is_zero() => Some(self.last_used + idle),
            State::Failed { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Does what the timer was for: closes an idle or stale device, or tries to reopen a
    /// failed one (it then stays open until idle).
    pub async fn on_timer(&mut self) {
        match &self.state {
            State::Open(_) if self.stale => self.close().await,
            State::Open(_) => {
                let idle = self.settings.idle_close;
                tracing::info!("closing the audio device after {} s idle", idle.as_secs());
                self.close().await;
            }
            State::Failed { .. } => {
                if self.open().await.is_ok() {
                    tracing::info!("audio device is back");
                    self.last_used = Instant::now();
                }
            }
            State::Closed => {}
        }
    }

    /// How long the device call in progress has been blocked, once that is longer than a
    /// device buffer lasts (a hung DAC; the watchdog is not fed meanwhile).
    pub fn stuck_for(&self) -> Option<Duration> {
        let State::Open(o) = &self.state else {
            return None;
        };
        let stuck_after = self.stuck_after(o);
        o.health.device_call_for().filter(|d| *d >= stuck_after)
    }

    /// When the device call in progress will count as stuck (`None`: none is in progress).
    pub fn stuck_at(&self) -> Option<Instant> {
        self.call_passes(|o| self.stuck_after(o))
    }

    /// When the device call in progress will have been blocked for `limit(open device)`.
    fn call_passes(&self, limit: impl Fn(&Open) -> Duration) -> Option<Instant> {
        let State::Open(o) = &self.state else {
            return None;
        };
        let blocked = o.health.device_call_for()?;
        Some(Instant::now() + limit(o).saturating_sub(blocked))
    }

    /// How long a fade-out may take on the open device: `base` plus what its buffer holds
    /// (a Snapcast output's buffer is snapserver's, ~1 s, all of which a fade waits for).
    pub fn fade_wait(&self, base: Duration) -> Duration {
        match &self.state {
            State::Open(o) => {
                let rate = f64::from(o.format.rate.max(1));
                base + Duration::from_secs_f64(o.format.buffer_frames as f64 / rate)
            }
            _ => base,
        }
    }

    /// How long a device call may block before the device counts as stuck.
    fn stuck_after(&self, o: &Open) -> Duration {
        let buffer = o.format.buffer_frames as f64 / f64::from(o.format.rate.max(1));
        (Duration::from_secs_f64(buffer) + STUCK_MARGIN).min(self.settings.write_timeout)
    }

    /// How long the device call in progress has been blocked, once that is past
    /// `write_timeout`: the playing job gives up on the device.
    pub fn hung_for(&self) -> Option<Duration> {
        self.stuck_for()
            .filter(|d| *d >= self.settings.write_timeout)
    }

    /// When the device call in progress would pass `write_timeout` (`None`: none is).
    pub fn hung_at(&self) -> Option<Instant> {
        self.call_passes(|_| self.settings.write_timeout)
    }

    /// Why the device counts as stuck, for the job's failure and `status`.
    pub fn stuck_reason(&self, blocked: Duration) -> String {
        format!(
            "audio device '{}' stopped taking audio: a write has been blocked for {:.1} s (the job gives up after audio.write_timeout_ms = {})",
            self.settings.name,
            blocked.as_secs_f64(),
            self.settings.write_timeout.as_millis()
        )
    }

    /// Why the device is failing or stuck, if it is.
    pub fn error(&self) -> Option<String> {
        match &self.state {
            State::Failed { reason, .. } => Some(reason.clone()),
            _ => self.stuck_for().map(|d| self.stuck_reason(d)),
        }
    }

    /// The device part of `status`.
    pub fn status(&self) -> DeviceStatus {
        let format = match &self.state {
            State::Open(o) => Some(o.format),
            _ => None,
        };
        let state = match &self.state {
            State::Closed => DeviceState::Closed,
            State::Open(_) if self.stuck_for().is_some() => DeviceState::Stuck,
            State::Open(_) => DeviceState::Open,
            State::Failed { .. } => DeviceState::Failed,
        };
        DeviceStatus {
            name: self.settings.name.clone(),
            state,
            open: format.is_some(),
            rate: format.map(|f| f.rate),
            channels: format.map(|f| f.channels),
            period_frames: format.map(|f| f.period_frames),
            error: self.error(),
            retry_in_ms: match &self.state {
                State::Failed { retry_at, .. } => Some(
                    u64::try_from(
                        retry_at
                            .saturating_duration_since(Instant::now())
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                ),
                _ => None,
            },
            realtime: self.realtime.clone(),
        }
    }

    /// Runs the before-open hook, opens the device and starts the audio thread.
    async fn open(&mut self) -> Result<(), String> {
        let s = &self.settings;
        run_hook("hook_before_open", &s.hook_before_open, s.hook_timeout).await;
        let (opener, name, req, cfg) = (
            self.opener.clone(),
            s.name.clone(),
            s.sink.clone(),
            s.playout.clone(),
        );
        let opened = tokio::task::spawn_blocking(move || {
            let sink = opener.open(&name, &req).map_err(|e| e.to_string())?;
            Playout::spawn(sink, cfg).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("opening the audio device panicked: {e}"))
        .and_then(|r| r);
        match opened {
            Ok(playout) => {
                self.opened(playout);
                Ok(())
            }
            Err(reason) => {
                self.fail(reason.clone(), None).await;
                Err(reason)
            }
        }
    }

    fn opened(&mut self, playout: Playout) {
        self.realtime = describe_realtime(playout.realtime());
        let format = playout.format();
        tracing::info!(
            device = %self.settings.name,
            rate = format.rate,
            channels = format.channels,
            period_frames = format.period_frames,
            "audio device opened"
        );
        self.state = State::Open(Box::new(Open {
            health: playout.health(),
            playout: Some(playout),
            format,
            opened_at: Instant::now(),
        }));
        self.stale = false;
        self.retry_wait = RETRY_FIRST;
    }
}

fn describe_realtime(r: &RealtimeStatus) -> String {
    match r {
        RealtimeStatus::NotRequested => "not requested".into(),
        RealtimeStatus::Granted { priority } => format!("granted (SCHED_FIFO {priority})"),
        RealtimeStatus::Denied { priority, reason } => {
            format!("denied (asked SCHED_FIFO {priority}): {reason}")
        }
    }
}

/// Stops the audio thread off the runtime. A thread stuck in the device is abandoned at
/// once, and one that does not stop within `CLOSE_WAIT` is left to end on its own: a hung
/// DAC never holds the scheduler.
async fn stop_playout(playout: Playout, device: &str) {
    if playout
        .health()
        .device_call_for()
        .is_some_and(|d| d >= CLOSE_WAIT)
    {
        tracing::warn!(
            device,
            "the audio thread is stuck in the device; abandoning it"
        );
        playout.abandon();
        return;
    }
    let stopped = tokio::task::spawn_blocking(move || playout.shutdown());
    match tokio::time::timeout(CLOSE_WAIT, stopped).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(device, "closing the audio device: {e}"),
        Ok(Err(e)) => tracing::warn!(device, "closing the audio device panicked: {e}"),
        Err(_) => tracing::warn!(
            device,
            "the audio thread did not stop within {} ms; left to end on its own",
            CLOSE_WAIT.as_millis()
        ),
    }
}

/// Delays the first audio of a freshly opened device until `until`, so the device plays
/// at least the lead-in's silence first; the request itself is sent at once.
struct LeadInSource {
    inner: Arc<dyn SpeechSource>,
    until: tokio::time::Instant,
}

impl SpeechSource for LeadInSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(async move {
            let r = self.inner.open(req).await;
            sleep_until(self.until).await;
            r
        })
    }
}

/// Runs a hook (argv, no shell) and waits for it, killing it after `timeout`. Failures
/// are logged: an amplifier script must not stop announcements.
async fn run_hook(name: &str, argv: &[String], timeout: Duration) {
    let Some((prog, args)) = argv.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = name, program = %prog, "cannot run hook: {e}");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => tracing::debug!(hook = name, "hook ran"),
        Ok(Ok(out)) => tracing::warn!(hook = name, program = %prog, "hook failed: {}", out.status),
        Ok(Err(e)) => tracing::warn!(hook = name, program = %prog, "hook failed: {e}"),
        Err(_) => tracing::warn!(
            hook = name,
            program = %prog,
            "hook killed after {} ms (hook_timeout_ms)",
            timeout.as_millis()
        ),
    }
}
