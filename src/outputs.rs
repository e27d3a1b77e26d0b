//! `[outputs.NAME]`: named places a job can be sent with `"to": "NAME"` besides this box's
//! own ALSA device — today a Snapcast stream that every room plays in sync — and their rules.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audio::snapcast::SnapcastTarget;

/// The name `to` takes for this box's own device (`[audio] device`); no output may use it.
pub const LOCAL: &str = "local";

/// What kind of output it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// A snapserver `tcp://…?mode=server` stream source.
    Snapcast,
}

/// Where a job goes when its output cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// This box's own device; the reply says so.
    Local,
}

/// snapserver's `sampleformat`, `RATE:BITS:CHANNELS` (herald sends 16-bit samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleFormat {
    /// Frames per second.
    pub rate: u32,
    /// Bits per sample (16 is what herald sends).
    pub bits: u16,
    /// Channels per frame.
    pub channels: u16,
}

impl Default for SampleFormat {
    fn default() -> Self {
        SampleFormat {
            rate: 48_000,
            bits: 16,
            channels: 2,
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.rate, self.bits, self.channels)
    }
}

impl std::str::FromStr for SampleFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not RATE:BITS:CHANNELS, e.g. \"48000:16:2\"");
        let parts: Vec<&str> = s.split(':').collect();
        let [rate, bits, channels] = parts.as_slice() else {
            return Err(bad());
        };
        Ok(SampleFormat {
            rate: rate.trim().parse().map_err(|_| bad())?,
            bits: bits.trim().parse().map_err(|_| bad())?,
            channels: channels.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl<'de> Deserialize<'de> for SampleFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for SampleFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `[outputs.NAME]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct OutputConfig {
    /// The kind of output (`snapcast`).
    #[serde(rename = "type")]
    pub kind: OutputType,
    /// snapserver's tcp source, `HOST:PORT`.
    pub server: String,
    /// The stream's `sampleformat`.
    #[serde(default)]
    pub format: SampleFormat,
    /// snapserver's `buffer` (ms): `finished` waits this long after the last sample is sent.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Silence streamed before the first word (ms), so a snapserver `meta` stream has
    /// switched to the announcement before it speaks.
    #[serde(default = "default_lead_in_ms")]
    pub lead_in_ms: u32,
    /// Play here instead when the output cannot be reached (unset: the job fails).
    #[serde(default)]
    pub fallback_to: Option<Fallback>,
}

fn default_latency_ms() -> u32 {
    1000
}

/// snapserver 0.26 looks at a tcp source's state every 500 ms + `chunk_ms`, and a `meta`
/// stream plays only the source it has switched to: 600 ms covers that with 20 ms chunks.
fn default_lead_in_ms() -> u32 {
    600
}

impl OutputConfig {
    /// Where its sink connects and what it sends.
    pub fn target(&self, name: &str) -> SnapcastTarget {
        SnapcastTarget {
            output: name.to_string(),
            server: self.server.clone(),
            rate: self.format.rate,
            channels: self.format.channels,
            latency: Duration::from_millis(u64::from(self.latency_ms)),
        }
    }
}

/// A bad `[outputs.NAME]`, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct OutputError {
    /// The config key, e.g. `outputs.house.format`.
    pub key: String,
    /// What was wrong and what is allowed.
    pub message: String,
}

/// Checks every output's rules.
pub fn validate(outputs: &BTreeMap<String, OutputConfig>) -> Result<(), OutputError> {
    for (name, o) in outputs {
        let bad = |field: &str, message: String| OutputError {
            key: if field.is_empty() {
                format!("outputs.{name}")
            } else {
                format!("outputs.{name}.{field}")
            },
            message,
        };
        if name == LOCAL
            || name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("", format!("'{name}' is not allowed as an output name (allowed: letters, digits, '-' and '_'; '{LOCAL}' means this box's own device)")));
        }
        let server_ok = o.server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !server_ok {
            return Err(bad("server", format!("'{}' is not HOST:PORT (e.g. \"snapserver.lan:4953\", the port of the stream's `tcp://…?mode=server` source)", o.server)));
        }
        let f = o.format;
        if f.bits != 16 || !(8_000..=192_000).contains(&f.rate) || !(1..=8).contains(&f.channels) {
            return Err(bad("format", format!("{f} is not allowed (allowed: RATE:16:CHANNELS with a rate from 8000 to 192000 and 1 to 8 channels: herald sends 16-bit samples, so set the stream's sampleformat to match)")));
        }
        if o.latency_ms > 10_000 {
            return Err(bad("latency_ms", format!("{} is out of range (allowed: 0 to 10000; snapserver's `buffer`, 1000 by default)", o.latency_ms)));
        }
        if o.lead_in_ms > 5_000 {
            return Err(bad(
                "lead_in_ms",
                format!("{} is out of range (allowed: 0 to 5000)", o.lead_in_ms),
            ));
        }
    }
    Ok(())
}

/// Checks a job's `to` against the configured outputs: `None` and `local` are this box.
pub fn check_to(to: Option<&str>, outputs: &BTreeMap<String, OutputConfig>) -> Result<(), String> {
    match to {
        None | Some(LOCAL) => Ok(()),
        Some(name) if outputs.contains_key(name) => Ok(()),
        Some(name) => {
            let known: Vec<&str> = std::iter::once(LOCAL)
                .chain(outputs.keys().map(String::as_str))
                .collect();
            Err(format!(
                "to: unknown output '{name}' (allowed: {}; outputs are configured as [outputs.NAME])",
                known.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(toml_src: &str) -> Result<(), OutputError> {
        let outputs: BTreeMap<String, OutputConfig> = toml::from_str(toml_src).unwrap();
        validate(&outputs)
    }

    #[test]
    fn formats_parse_and_bad_ones_name_the_key() {
        assert_eq!(
            "44100:16:1".parse::<SampleFormat>().unwrap(),
            SampleFormat {
                rate: 44_100,
                bits: 16,
                channels: 1
            }
        );
        assert!("48000:16".parse::<SampleFormat>().is_err());
        let e = one("[house]\ntype = \"snapcast\"\nserver = \"h:4953\"\nformat = \"48000:24:2\"\n")
            .unwrap_err();
        assert_eq!(e.key, "outputs.house.format");
        assert!(e.message.contains("RATE:16:CHANNELS"), "{e}");
    }

    #[test]
    fn server_and_name_rules() {
        let e = one("[house]\ntype = \"snapcast\"\nserver = \"snapserver\"\n").unwrap_err();
        assert_eq!(e.key, "outputs.house.server");
        let e = one("[local]\ntype = \"snapcast\"\nserver = \"h:1\"\n").unwrap_err();
        assert_eq!(e.key, "outputs.local");
        assert!(one(
            "[house]\ntype = \"snapcast\"\nserver = \"127.0.0.1:4953\"\nfallback_to = \"local\"\n"
        )
        .is_ok());
    }

    #[test]
    fn unknown_to_lists_the_known_outputs() {
        let outputs: BTreeMap<String, OutputConfig> =
            toml::from_str("[house]\ntype = \"snapcast\"\nserver = \"h:1\"\n").unwrap();
        assert!(check_to(Some("house"), &outputs).is_ok());
        assert!(check_to(Some("local"), &outputs).is_ok());
        let e = check_to(Some("garage"), &outputs).unwrap_err();
        assert!(
            e.contains("'garage'") && e.contains("allowed: local, house"),
            "{e}"
        );
    }
}
