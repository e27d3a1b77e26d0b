//! The `[[buttons]]` config: pins, pull, active level, debounce, long press and the
//! `while_playing` rule, their validation and wiring warnings.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::protocol::ExpiresIn;
pub use crate::protocol::WhilePlaying;
use crate::volume::Volume;

/// Highest BCM GPIO number on the 40-pin header.
pub const MAX_PIN: u8 = 27;
/// Longest allowed debounce time.
pub const MAX_DEBOUNCE_MS: u64 = 1000;

/// The internal pull resistor of a button pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Pull-up (button wired to ground; the usual wiring).
    #[default]
    Up,
    /// Pull-down (button wired to 3.3 V).
    Down,
    /// No pull (an external resistor).
    None,
}

/// Which level means "pressed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveLevel {
    /// Pressed pulls the pin low (with `pull = "up"`).
    #[default]
    Low,
    /// Pressed pulls the pin high (with `pull = "down"`).
    High,
}

/// What a long press does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongAction {
    /// Play another preset.
    Preset(String),
    /// Stop everything.
    Stop,
    /// Skip the current announcement.
    Skip,
}

/// A long press: hold time and action. TOML: `{ ms = 1500, action = "stop" }` (or
/// `"skip"`), or `{ ms = 1500, preset = "NAME" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "LongPressToml")]
pub struct LongPress {
    /// Hold time in milliseconds.
    pub ms: u64,
    /// What it does.
    pub action: LongAction,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPressToml {
    ms: u64,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    preset: Option<String>,
}

impl TryFrom<LongPressToml> for LongPress {
    type Error = String;
    fn try_from(t: LongPressToml) -> Result<Self, String> {
        let action = match (t.action.as_deref(), t.preset) {
            (Some("stop"), None) => LongAction::Stop,
            (Some("skip"), None) => LongAction::Skip,
            (None, Some(p)) => LongAction::Preset(p),
            (Some(a), None) => {
                return Err(format!(
                    "unknown long_press action '{a}' (allowed: \"stop\", \"skip\", or preset = \"NAME\")"
                ))
            }
            (Some(_), Some(_)) => {
                return Err("long_press has both action and preset (give one)".into())
            }
            (None, None) => {
                return Err(
                    "long_press needs action = \"stop\" | \"skip\" or preset = \"NAME\"".into(),
                )
            }
        };
        Ok(LongPress { ms: t.ms, action })
    }
}

fn default_debounce_ms() -> u64 {
    30
}

/// A press waits in the queue at most this long by default: someone at the button
/// expects to hear it now, not minutes later.
pub const DEFAULT_PRESS_EXPIRY: ExpiresIn = ExpiresIn::constant(30.0);

fn default_expires_in_s() -> ExpiresIn {
    DEFAULT_PRESS_EXPIRY
}

/// One GPIO button (`[[buttons]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonConfig {
    /// BCM GPIO number, 0–27.
    pub pin: u8,
    /// The preset a short press plays.
    pub preset: String,
    /// Internal pull resistor (default up).
    #[serde(default)]
    pub pull: Pull,
    /// Pressed level (default low).
    #[serde(default)]
    pub active: ActiveLevel,
    /// Debounce time in milliseconds (default 30).
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Optional long press.
    #[serde(default)]
    pub long_press: Option<LongPress>,
    /// What a press does while this preset is playing (default ignore).
    #[serde(default)]
    pub while_playing: WhilePlaying,
    /// Volume 0–100 of its presses (default: the preset's, else `audio.volume`).
    #[serde(default)]
    pub volume: Option<Volume>,
    /// A press still queued after this many seconds expires unplayed (default 30).
    #[serde(default = "default_expires_in_s")]
    pub expires_in_s: ExpiresIn,
    /// The output its presses play on (`[outputs.NAME]`; default: the preset's, else
    /// this box's device).
    #[serde(default)]
    pub to: Option<String>,
    /// Chime before its presses (default: the preset's, else `daemon.chime`).
    #[serde(default)]
    pub chime: Option<crate::chimes::ChimeChoice>,
}

/// A button configuration error; the message names the pin and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ButtonConfigError {
    /// A pin beyond the header.
    #[error("button on pin {pin}: pin out of range (allowed: BCM GPIO 0 to 27)")]
    PinOutOfRange {
        /// The pin.
        pin: u8,
    },
    /// Two buttons on one pin.
    #[error("pin {pin} is used by two buttons (presets '{first}' and '{second}'); each pin can have one button")]
    PinConflict {
        /// The pin.
        pin: u8,
        /// The first button's preset.
        first: String,
        /// The second button's preset.
        second: String,
    },
    /// A button naming a preset that does not exist.
    #[error("button on pin {pin}: {what} '{preset}' does not exist (defined presets: {known})")]
    UnknownPreset {
        /// The pin.
        pin: u8,
        /// "preset" or "long_press preset".
        what: &'static str,
        /// The name given.
        preset: String,
        /// The defined names, comma separated.
        known: String,
    },
    /// A debounce time that would swallow presses.
    #[error("button on pin {pin}: debounce_ms {ms} is too long (allowed: 0 to 1000; default 30)")]
    Debounce {
        /// The pin.
        pin: u8,
        /// The value given.
        ms: u64,
    },
    /// A long press that is not longer than the debounce time.
    #[error(
        "button on pin {pin}: long_press ms {ms} must be longer than debounce_ms {debounce_ms}"
    )]
    LongPress {
        /// The pin.
        pin: u8,
        /// The hold time given.
        ms: u64,
        /// The debounce time.
        debounce_ms: u64,
    },
}

/// Checks buttons: pins in range and unique, debounce and long-press times, and every
/// preset they name among `presets` (the configured preset names).
pub fn validate<'a>(
    buttons: &[ButtonConfig],
    presets: impl Iterator<Item = &'a String> + Clone,
) -> Result<(), ButtonConfigError> {
    let names: std::collections::BTreeSet<&String> = presets.collect();
    let known = || {
        if names.is_empty() {
            "none".to_string()
        } else {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut pins: BTreeMap<u8, &str> = BTreeMap::new();
    for b in buttons {
        if b.pin > MAX_PIN {
            return Err(ButtonConfigError::PinOutOfRange { pin: b.pin });
        }
        if let Some(first) = pins.insert(b.pin, &b.preset) {
            return Err(ButtonConfigError::PinConflict {
                pin: b.pin,
                first: first.to_string(),
                second: b.preset.clone(),
            });
        }
        if !names.contains(&b.preset) {
            return Err(ButtonConfigError::UnknownPreset {
                pin: b.pin,
                what: "preset",
                preset: b.preset.clone(),
                known: known(),
            });
        }
        if b.debounce_ms > MAX_DEBOUNCE_MS {
            return Err(ButtonConfigError::Debounce {
                pin: b.pin,
                ms: b.debounce_ms,
            });
        }
        if let Some(lp) = &b.long_press {
            if lp.ms <= b.debounce_ms {
                return Err(ButtonConfigError::LongPress {
                    pin: b.pin,
                    ms: lp.ms,
                    debounce_ms: b.debounce_ms,
                });
            }
            if let LongAction::Preset(p) = &lp.action {
                if !names.contains(p) {
                    return Err(ButtonConfigError::UnknownPreset {
                        pin: b.pin,
                        what: "long_press preset",
                        preset: p.clone(),
                        known: known(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Wirings that are probably mistakes but can be right with external circuitry
/// (e.g. pull-up with active-high): one message per button, for a config warning.
pub fn wiring_warnings(buttons: &[ButtonConfig]) -> Vec<String> {
    buttons
        .iter()
        .filter_map(|b| match (b.pull, b.active) {
            (Pull::Up, ActiveLevel::High) => Some(format!(
                "button on pin {}: pull = \"up\" with active = \"high\" only works with an external driver; a plain button to 3.3 V is never seen (use pull = \"down\")",
                b.pin
            )),
            (Pull::Down, ActiveLevel::Low) => Some(format!(
                "button on pin {}: pull = \"down\" with active = \"low\" only works with an external driver; a plain button to ground is never seen (use pull = \"up\")",
                b.pin
            )),
            _ => None,
        })
        .collect()
}
