//! The Raspberry Pi backend: rppal's GPIO character-device interrupts (`poll_interrupts`),
//! blocking, on the button thread. Debouncing is ours (the same code the tests drive), so
//! rppal's own debounce is left off.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::rppal::gpio::{self, Gpio, InputPin, Trigger};

use super::config::Pull;
use super::{ButtonError, ButtonSource, Edge, Level, PinSetup, SourceEvent};

/// Longest blocking wait without a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Buttons on the Pi's GPIO header through rppal.
pub struct RppalSource {
    gpio: Gpio,
    pins: Vec<InputPin>,
}

impl std::fmt::Debug for RppalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pins: Vec<u8> = self.pins.iter().map(|p| p.pin()).collect();
        f.debug_struct("RppalSource").field("pins", &pins).finish()
    }
}

/// Maps rppal's error to one that names the cause and the fix.
pub fn map_error(e: gpio::Error, pin: Option<u8>) -> ButtonError {
    match (e, pin) {
        (gpio::Error::UnknownModel, _) => ButtonError::NotAPi {
            detail: "rppal: Unknown Raspberry Pi model".into(),
        },
        (gpio::Error::PermissionDenied(device), _) => ButtonError::PermissionDenied { device },
        (gpio::Error::Io(io), _) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            ButtonError::PermissionDenied {
                device: format!("the GPIO device ({io})"),
            }
        }
        (gpio::Error::PinUsed(p), _) => ButtonError::Pin {
            pin: p,
            detail: "already in use by another process or a kernel driver (check \
                     /boot/firmware/config.txt overlays and `gpioinfo`)"
                .into(),
        },
        (gpio::Error::PinNotAvailable(p), _) => ButtonError::Pin {
            pin: p,
            detail: "this board has no such GPIO (allowed: BCM 0 to 27)".into(),
        },
        (other, Some(pin)) => ButtonError::Pin {
            pin,
            detail: other.to_string(),
        },
        (other, None) => ButtonError::Gpio(other.to_string()),
    }
}

impl RppalSource {
    /// Opens the GPIO peripheral and claims each pin as an input with its pull resistor and
    /// an interrupt on both edges. Off a Pi this fails with [`ButtonError::NotAPi`]; without
    /// access to the device, [`ButtonError::PermissionDenied`].
    pub fn open(setups: &[PinSetup]) -> Result<RppalSource, ButtonError> {
        let gpio = Gpio::new().map_err(|e| map_error(e, None))?;
        let mut pins = Vec::with_capacity(setups.len());
        for s in setups {
            let pin = gpio.get(s.pin).map_err(|e| map_error(e, Some(s.pin)))?;
            let mut input = match s.pull {
                Pull::Up => pin.into_input_pullup(),
                Pull::Down => pin.into_input_pulldown(),
                Pull::None => pin.into_input(),
            };
            input
                .set_interrupt(Trigger::Both, None)
                .map_err(|e| map_error(e, Some(s.pin)))?;
            pins.push(input);
        }
        Ok(RppalSource { gpio, pins })
    }
}

/// The kernel stamps line events with CLOCK_MONOTONIC; turn that into an `Instant` by its
/// age, so queued bounce trains keep their real spacing.
fn instant_of(timestamp: Duration) -> Instant {
    let now = Instant::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 || timestamp.is_zero() {
        return now;
    }
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let age = mono.saturating_sub(timestamp);
    now.checked_sub(age).unwrap_or(now)
}

fn level(l: gpio::Level) -> Level {
    match l {
        gpio::Level::Low => Level::Low,
        gpio::Level::High => Level::High,
    }
}

impl ButtonSource for RppalSource {
    fn levels(&mut self) -> Result<BTreeMap<u8, Level>, ButtonError> {
        Ok(self
            .pins
            .iter()
            .map(|p| (p.pin(), level(p.read())))
            .collect())
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<SourceEvent, ButtonError> {
        // Without a deadline, still wake now and then so the service notices a shutdown.
        let timeout =
            Some(deadline.map_or(IDLE_WAKE, |d| d.saturating_duration_since(Instant::now())));
        let refs: Vec<&InputPin> = self.pins.iter().collect();
        match self.gpio.poll_interrupts(&refs, false, timeout) {
            Ok(Some((pin, event))) => {
                let level = match event.trigger {
                    Trigger::RisingEdge => Level::High,
                    Trigger::FallingEdge => Level::Low,
                    // Both-edge interrupts report the direction; fall back to reading it.
                    _ => level(pin.read()),
                };
                Ok(SourceEvent::Edge(Edge {
                    pin: pin.pin(),
                    level,
                    at: instant_of(event.timestamp),
                }))
            }
            Ok(None) => Ok(SourceEvent::Timeout(Instant::now())),
            Err(e) => Err(map_error(e, None)),
        }
    }
}
