//! GPIO buttons → announcements: edges from a [`ButtonSource`] (rppal on a Pi, a simulated
//! source in tests) are debounced per pin by a pure [`PressDetector`] and turned into
//! [`ButtonAction`]s on a tokio channel the daemon consumes.
//!
//! Timing rules (see docs/BUTTONS.md):
//! - A level counts once it has been stable for the debounce time (default 30 ms), so bounce
//!   trains and glitches shorter than that never produce a press.
//! - Without a long press configured, the short action fires as soon as the press is
//!   confirmed (lowest latency). With one, the short action fires on the confirmed release,
//!   and the long action fires while still held, the moment the hold reaches the threshold;
//!   the release that follows does nothing.
//! - Hold time is measured between the raw edges that start the press and the release
//!   (debounce delays the decision, not the measurement); a hold of exactly the threshold
//!   is long.
//! - A button already held when herald starts is ignored until it is released.

pub mod config;
pub mod rppal;
pub mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::protocol::{ExpiresIn, PresetRequest, Request};
use crate::volume::Volume;
use config::{ActiveLevel, ButtonConfig, LongAction, Pull, WhilePlaying};

/// A logic level on a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// 0 V.
    Low,
    /// 3.3 V.
    High,
}

/// One raw level change on a pin, with the time it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// BCM pin number.
    pub pin: u8,
    /// The level the pin changed to.
    pub level: Level,
    /// When the change happened (the kernel's timestamp where the backend has one).
    pub at: Instant,
}

/// What [`ButtonSource::next`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEvent {
    /// A level change.
    Edge(Edge),
    /// The deadline passed without an edge; carries the source's current time.
    Timeout(Instant),
}

/// How one pin is set up by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinSetup {
    /// BCM pin number.
    pub pin: u8,
    /// Internal pull resistor.
    pub pull: Pull,
}

/// Where edges come from: a GPIO backend or a simulation. Blocking, so it runs on its own
/// thread (the interrupt APIs of both rppal and gpiocdev are blocking polls).
pub trait ButtonSource: Send {
    /// The current level of each configured pin (read once at start).
    fn levels(&mut self) -> Result<BTreeMap<u8, Level>, ButtonError>;
    /// Waits for the next edge, or until `deadline` (`None`: no deadline; a backend may
    /// still time out early). [`ButtonError::Closed`] ends the service.
    fn next(&mut self, deadline: Option<Instant>) -> Result<SourceEvent, ButtonError>;
}

/// Errors from button sources and their setup. Each names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ButtonError {
    /// Not a Raspberry Pi (rppal could not identify the board).
    #[error(
        "GPIO buttons are disabled: this machine is not a recognised Raspberry Pi ({detail}); \
         remove the [[buttons]] sections or run herald on a Pi"
    )]
    NotAPi {
        /// rppal's own message.
        detail: String,
    },
    /// The GPIO device could not be opened for lack of permission.
    #[error(
        "GPIO buttons are disabled: permission denied opening {device}; add the herald user to \
         the gpio group (`sudo usermod -aG gpio herald`, then restart herald)"
    )]
    PermissionDenied {
        /// The device path rppal tried, e.g. /dev/gpiomem or /dev/gpiochip0.
        device: String,
    },
    /// A pin could not be claimed (used by another process or a kernel driver, or absent).
    #[error("GPIO pin {pin} cannot be used: {detail}")]
    Pin {
        /// BCM pin number.
        pin: u8,
        /// What went wrong.
        detail: String,
    },
    /// Any other GPIO failure.
    #[error("GPIO error: {0}")]
    Gpio(String),
    /// The source has no more edges (simulation ended).
    #[error("the button source was closed")]
    Closed,
}

/// What a debounced press means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    /// A short press of the button on this pin.
    Short(u8),
    /// A press held for the long-press threshold.
    Long(u8),
}

/// Timing and polarity of one button, for the [`PressDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// BCM pin number (carried into the events).
    pub pin: u8,
    /// The level that means "pressed".
    pub active: Level,
    /// How long a level must hold before it counts.
    pub debounce: Duration,
    /// Hold time that makes a press long; `None`: no long press.
    pub long_press: Option<Duration>,
}

/// Pure, synchronous debounce + short/long press state machine for one pin.
///
/// Feed raw edges with [`on_edge`](Self::on_edge) and call [`tick`](Self::tick) at
/// [`next_deadline`](Self::next_deadline); events are appended to `out`. Times must not go
/// backwards (an older time is treated as the latest one seen).
#[derive(Debug, Clone)]
pub struct PressDetector {
    cfg: DetectorConfig,
    /// The last raw level seen and when it was reached.
    raw: Level,
    raw_since: Instant,
    /// The debounced level.
    stable: Level,
    /// Raw time of the edge that started the current confirmed press.
    pressed_at: Option<Instant>,
    long_fired: bool,
    /// False while a press that was already held at start is still held.
    armed: bool,
    now: Instant,
}

impl PressDetector {
    /// A detector whose pin reads `initial` at time `now`.
    pub fn new(cfg: DetectorConfig, initial: Level, now: Instant) -> Self {
        PressDetector {
            cfg,
            raw: initial,
            raw_since: now,
            stable: initial,
            pressed_at: None,
            long_fired: false,
            armed: initial != cfg.active,
            now,
        }
    }

    /// A raw edge to `level` at time `at`.
    pub fn on_edge(&mut self, level: Level, at: Instant, out: &mut Vec<ButtonEvent>) {
        // Decisions that were due before this edge happen first.
        self.tick(at, out);
        let at = self.now;
        if level == self.raw {
            return; // A repeated report of the same level is not a change.
        }
        self.raw = level;
        self.raw_since = at;
        if self.cfg.debounce.is_zero() {
            self.tick(at, out);
        }
    }

    /// Advances time to `now`, confirming levels that held for the debounce time and firing
    /// a long press whose threshold was reached.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<ButtonEvent>) {
        let now = now.max(self.now);
        // The threshold counts if the raw level is "pressed" when it is reached. Every edge
        // ticks before it is applied, so the raw level seen here is the level at `t`.
        if let Some(t) = self.long_due() {
            if t <= now && self.raw == self.cfg.active {
                self.fire_long(out);
            }
        }
        if self.raw != self.stable && now >= self.raw_since + self.cfg.debounce {
            self.confirm(out);
        }
        self.now = now;
    }

    /// When [`tick`](Self::tick) next has something to decide, if anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        let debounce = (self.raw != self.stable).then(|| self.raw_since + self.cfg.debounce);
        let long = self
            .long_due()
            .filter(|_| self.raw == self.cfg.active && self.stable == self.cfg.active);
        match (debounce, long) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The time a long press becomes due, while one can still fire.
    fn long_due(&self) -> Option<Instant> {
        let threshold = self.cfg.long_press?;
        let pressed_at = self.pressed_at?;
        (!self.long_fired && self.armed).then_some(pressed_at + threshold)
    }

    fn fire_long(&mut self, out: &mut Vec<ButtonEvent>) {
        self.long_fired = true;
        out.push(ButtonEvent::Long(self.cfg.pin));
    }

    /// The raw level held for the debounce time: it becomes the stable level.
    fn confirm(&mut self, out: &mut Vec<ButtonEvent>) {
        self.stable = self.raw;
        if self.stable == self.cfg.active {
            self.pressed_at = Some(self.raw_since);
            self.long_fired = false;
            if self.armed && self.cfg.long_press.is_none() {
                out.push(ButtonEvent::Short(self.cfg.pin));
            }
            // A confirmed press that already reached the threshold (e.g. debounce longer
            // than the threshold) is long straight away.
            if let Some(t) = self.long_due() {
                if t <= self.raw_since + self.cfg.debounce {
                    self.fire_long(out);
                }
            }
        } else {
            let was_long = self.long_fired;
            if self.armed && self.cfg.long_press.is_some() && !was_long {
                out.push(ButtonEvent::Short(self.cfg.pin));
            }
            self.pressed_at = None;
            self.long_fired = false;
            self.armed = true;
        }
    }
}

/// What the daemon should do because of a button.
#[derive(Debug, Clone, PartialEq)]
pub enum ButtonAction {
    /// Play a preset (the press carries the button's `while_playing` rule, volume and
    /// expiry).
    Preset {
        /// Preset name.
        name: String,
        /// The pin that was pressed.
        pin: u8,
        /// What to do if this preset is already playing.
        while_playing: WhilePlaying,
        /// The button's volume, if it has one.
        volume: Option<Volume>,
        /// How long the press may wait in the queue.
        expires_in_s: ExpiresIn,
        /// The button's output (`to`), if it has one (else the preset's).
        to: Option<String>,
        /// The button's chime, if it has one.
        chime: Option<crate::chimes::ChimeChoice>,
    },
    /// Stop everything (a long press configured as `stop`).
    Stop {
        /// The pin that was pressed.
        pin: u8,
    },
    /// Skip the current announcement (a long press configured as `skip`).
    Skip {
        /// The pin that was pressed.
        pin: u8,
    },
}

/// The [`DetectorConfig`] for a button's config entry.
pub fn detector_config(b: &ButtonConfig) -> DetectorConfig {
    DetectorConfig {
        pin: b.pin,
        active: match b.active {
            ActiveLevel::Low => Level::Low,
            ActiveLevel::High => Level::High,
        },
        debounce: Duration::from_millis(b.debounce_ms),
        long_press: b.long_press.as_ref().map(|l| Duration::from_millis(l.ms)),
    }
}

/// Maps a detector event to the configured action.
pub fn action_for(b: &ButtonConfig, ev: ButtonEvent) -> ButtonAction {
    let preset = |name: &str| ButtonAction::Preset {
        name: name.to_string(),
        pin: b.pin,
        while_playing: b.while_playing,
        volume: b.volume,
        expires_in_s: b.expires_in_s,
        to: b.to.clone(),
        chime: b.chime.clone(),
    };
    match ev {
        ButtonEvent::Short(_) => preset(&b.preset),
        ButtonEvent::Long(_) => match b.long_press.as_ref().map(|l| &l.action) {
            Some(LongAction::Stop) => ButtonAction::Stop { pin: b.pin },
            Some(LongAction::Skip) => ButtonAction::Skip { pin: b.pin },
            Some(LongAction::Preset(name)) => preset(name),
            None => preset(&b.preset),
        },
    }
}

impl ButtonAction {
    /// The request a press makes of the scheduler (the same as a socket client's).
    pub fn request(self) -> Request {
        match self {
            ButtonAction::Preset {
                name,
                while_playing,
                volume,
                expires_in_s,
                to,
                chime,
                ..
            } => Request::Preset(PresetRequest {
                name,
                id: None,
                while_playing: Some(while_playing),
                volume,
                expires_in_s: Some(expires_in_s),
                to,
                chime,
            }),
            ButtonAction::Stop { .. } => Request::Stop,
            ButtonAction::Skip { .. } => Request::Skip,
        }
    }
}

/// Pin setups for a button list (what a backend must configure).
pub fn pin_setups(buttons: &[ButtonConfig]) -> Vec<PinSetup> {
    buttons
        .iter()
        .map(|b| PinSetup {
            pin: b.pin,
            pull: b.pull,
        })
        .collect()
}

/// Owns a source and the detectors, and sends [`ButtonAction`]s to the daemon.
pub struct ButtonService {
    source: Box<dyn ButtonSource>,
    buttons: BTreeMap<u8, (ButtonConfig, PressDetector)>,
    tx: mpsc::Sender<ButtonAction>,
}

impl ButtonService {
    /// Reads the pins' start levels from `source` and sets up one detector per button.
    /// `buttons` must have passed [`config::validate`] (unique pins).
    pub fn new(
        mut source: Box<dyn ButtonSource>,
        buttons: &[ButtonConfig],
        tx: mpsc::Sender<ButtonAction>,
        now: Instant,
    ) -> Result<Self, ButtonError> {
        let levels = source.levels()?;
        let mut map = BTreeMap::new();
        for b in buttons {
            let cfg = detector_config(b);
            // A pin the source did not report is assumed released.
            let idle = match cfg.active {
                Level::Low => Level::High,
                Level::High => Level::Low,
            };
            let initial = levels.get(&b.pin).copied().unwrap_or(idle);
            map.insert(b.pin, (b.clone(), PressDetector::new(cfg, initial, now)));
        }
        Ok(ButtonService {
            source,
            buttons: map,
            tx,
        })
    }

    /// Runs until the source closes or the receiver is dropped. Blocking: call it on a
    /// dedicated thread (see [`spawn`](Self::spawn)).
    pub fn run(mut self) -> Result<(), ButtonError> {
        let mut events = Vec::new();
        loop {
            if self.tx.is_closed() {
                return Ok(()); // The daemon is shutting down.
            }
            let deadline = self
                .buttons
                .values()
                .filter_map(|(_, d)| d.next_deadline())
                .min();
            let ev = match self.source.next(deadline) {
                Ok(ev) => ev,
                Err(ButtonError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let now = match ev {
                SourceEvent::Edge(edge) => {
                    if let Some((b, d)) = self.buttons.get_mut(&edge.pin) {
                        d.on_edge(edge.level, edge.at, &mut events);
                        if !Self::flush(&self.tx, b, &mut events) {
                            return Ok(());
                        }
                    }
                    edge.at
                }
                SourceEvent::Timeout(now) => now,
            };
            for (b, d) in self.buttons.values_mut() {
                d.tick(now, &mut events);
                if !Self::flush(&self.tx, b, &mut events) {
                    return Ok(());
                }
            }
        }
    }

    /// Runs the service on its own OS thread named `herald-buttons`.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<Result<(), ButtonError>>> {
        std::thread::Builder::new()
            .name("herald-buttons".into())
            .spawn(move || self.run())
    }

    /// Sends the pending events' actions; false once the receiver is gone (shutdown).
    fn flush(
        tx: &mpsc::Sender<ButtonAction>,
        b: &ButtonConfig,
        events: &mut Vec<ButtonEvent>,
    ) -> bool {
        for ev in events.drain(..) {
            let action = action_for(b, ev);
            tracing::info!(pin = b.pin, ?action, "button");
            if tx.blocking_send(action).is_err() {
                return false;
            }
        }
        true
    }
}
