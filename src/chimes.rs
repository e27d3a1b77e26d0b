//! Chimes: short sounds played before (and optionally after) an announcement's speech.
//! Each `[chimes.NAME]` file (Ogg Opus or WAV) is decoded once, at start and on reload,
//! into memory at the device rate, so a job's chime starts without touching the disk or
//! the network. A file that cannot be used is reported and its jobs play without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::opus::{decode_rate_for, OggOpusDecoder};
use crate::codec::resample::Resampler;
use crate::codec::StreamDecoder;

/// The longest chime kept in memory: a chime is a signal, not a message.
pub const MAX_CHIME_MS: u64 = 10_000;

/// `[chimes.NAME]`: where a chime's sound is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChimeConfig {
    /// An Ogg Opus or 16-bit PCM WAV file.
    pub file: PathBuf,
}

/// A chime decoded into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Chime {
    /// Its name in the config.
    pub name: String,
    /// Sample rate of `samples`.
    pub rate: u32,
    /// Interleaved channels of `samples`.
    pub channels: u16,
    /// The sound, interleaved.
    pub samples: Arc<[i16]>,
}

impl Chime {
    /// Its length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        let frames = self.samples.len() as u64 / u64::from(self.channels.max(1));
        frames * 1000 / u64::from(self.rate.max(1))
    }
}

/// Why a chime file cannot be played; the message names the chime and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChimeError {
    /// The file could not be read.
    #[error("chime '{name}': cannot read {path}: {reason}")]
    Read {
        /// The chime.
        name: String,
        /// Its file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not a playable Ogg Opus or WAV file.
    #[error(
        "chime '{name}': {path} is not playable: {reason} (allowed: Ogg Opus, or 16-bit PCM WAV)"
    )]
    Decode {
        /// The chime.
        name: String,
        /// Its file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Silent, empty or too long.
    #[error("chime '{name}': {path} {reason}")]
    Unsuitable {
        /// The chime.
        name: String,
        /// Its file.
        path: String,
        /// What was wrong and what is allowed.
        reason: String,
    },
}

/// Which chime a request, preset or button asks for: a name, `false` for none, or `true`
/// for the configured default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ChimeChoice {
    /// `"NAME"`: that chime.
    Named(String),
    /// `false`: no chime; `true`: the default one.
    Default(bool),
}

impl<'de> Deserialize<'de> for ChimeChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ChimeChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a chime: the name of a [chimes] table, false for none or true for the default",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ChimeChoice, E> {
                Ok(ChimeChoice::Named(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ChimeChoice, E> {
                Ok(ChimeChoice::Default(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl ChimeChoice {
    /// The chime this choice plays, given the default (`daemon.chime` or `chime_after`).
    pub fn resolve<'a>(
        choice: Option<&'a ChimeChoice>,
        default: Option<&'a str>,
    ) -> Option<&'a str> {
        match choice {
            None | Some(ChimeChoice::Default(true)) => default,
            Some(ChimeChoice::Default(false)) => None,
            Some(ChimeChoice::Named(n)) => Some(n.as_str()),
        }
    }
}

/// Checks that chime `name` is one of `known` (the `[chimes.*]` tables); the error lists them.
pub fn check_name<'a>(
    name: &str,
    mut known: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    let names: Vec<&String> = known.by_ref().collect();
    if names.iter().any(|k| k.as_str() == name) {
        return Ok(());
    }
    let allowed = if names.is_empty() {
        "none are configured: add a [chimes.NAME] table with a file".to_string()
    } else {
        format!(
            "configured: {}",
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(format!("unknown chime '{name}' ({allowed})"))
}

/// The chime a request, preset or button asks for (`choice` over `default`), checked
/// against the configured names (`known`): `None` for no chime.
pub fn pick<'a, 'k>(
    choice: Option<&'a ChimeChoice>,
    default: Option<&'a str>,
    known: impl Iterator<Item = &'k String>,
) -> Result<Option<&'a str>, String> {
    let name = ChimeChoice::resolve(choice, default);
    if let Some(n) = name {
        check_name(n, known)?;
    }
    Ok(name)
}

/// Every configured chime, decoded, or why it could not be.
#[derive(Debug, Clone, Default)]
pub struct ChimeSet {
    chimes: BTreeMap<String, Result<Arc<Chime>, ChimeError>>,
}

impl ChimeSet {
    /// Decodes every chime of `config` at `rate` (the device rate asked for). Files that
    /// cannot be used are kept as their error, for `problems` and the jobs that ask.
    pub fn load(config: &BTreeMap<String, ChimeConfig>, rate: u32) -> ChimeSet {
        let chimes = config
            .iter()
            .map(|(name, c)| (name.clone(), load_one(name, &c.file, rate).map(Arc::new)))
            .collect();
        ChimeSet { chimes }
    }

    /// The chime `name`: `None` if it is not configured, `Some(Err)` if its file is unusable.
    pub fn get(&self, name: &str) -> Option<Result<Arc<Chime>, ChimeError>> {
        self.chimes.get(name).cloned()
    }

    /// The chime `name` ready to play, or why its job plays without it (its file is
    /// unusable, or a reload removed it).
    pub fn playable(&self, name: &str) -> Result<Arc<Chime>, String> {
        match self.chimes.get(name) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("chime '{name}' is no longer configured")),
        }
    }

    /// Why each unusable chime is unusable.
    pub fn problems(&self) -> Vec<&ChimeError> {
        self.chimes
            .values()
            .filter_map(|c| c.as_ref().err())
            .collect()
    }

    /// The configured names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.chimes.keys().map(String::as_str).collect()
    }
}

/// Reads, decodes and resamples one chime file.
fn load_one(name: &str, path: &Path, rate: u32) -> Result<Chime, ChimeError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ChimeError::Read {
        name: name.to_string(),
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| ChimeError::Decode {
        name: name.to_string(),
        path: shown.clone(),
        reason,
    };
    let (from, channels, samples) = if bytes.starts_with(b"OggS") {
        decode_opus(&bytes, rate).map_err(bad)?
    } else if bytes.starts_with(b"RIFF") {
        decode_wav(&bytes).map_err(bad)?
    } else {
        return Err(bad("it starts with neither 'OggS' nor 'RIFF'".into()));
    };
    let samples = to_rate(samples, from, rate, channels).map_err(bad)?;
    let chime = Chime {
        name: name.to_string(),
        rate,
        channels,
        samples: samples.into(),
    };
    check_suitable(chime, &shown)
}

/// A chime that is empty, silent or longer than [`MAX_CHIME_MS`] is refused.
fn check_suitable(chime: Chime, path: &str) -> Result<Chime, ChimeError> {
    let unsuitable = |reason: String| ChimeError::Unsuitable {
        name: chime.name.clone(),
        path: path.to_string(),
        reason,
    };
    let ms = chime.duration_ms();
    if chime.samples.iter().all(|&s| s == 0) {
        return Err(unsuitable("is silent or empty".into()));
    }
    if ms > MAX_CHIME_MS {
        return Err(unsuitable(format!(
            "lasts {ms} ms (allowed: at most {MAX_CHIME_MS} ms)"
        )));
    }
    Ok(chime)
}

fn decode_opus(bytes: &[u8], rate: u32) -> Result<(u32, u16, Vec<i16>), String> {
    let decode_rate = decode_rate_for(rate);
    let mut dec = OggOpusDecoder::new(decode_rate).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    dec.push(bytes, &mut out).map_err(|e| e.to_string())?;
    dec.finish(&mut out).map_err(|e| e.to_string())?;
    let channels = dec.format().map_or(1, |f| f.channels);
    Ok((decode_rate, channels, out))
}

fn decode_wav(bytes: &[u8]) -> Result<(u32, u16, Vec<i16>), String> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(format!(
            "{} {}-bit samples",
            if spec.sample_format == hound::SampleFormat::Int {
                "integer"
            } else {
                "float"
            },
            spec.bits_per_sample
        ));
    }
    if !(1..=2).contains(&spec.channels) {
        return Err(format!("{} channels (allowed: 1 or 2)", spec.channels));
    }
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((spec.sample_rate, spec.channels, samples))
}

/// Resamples interleaved `samples` from `from` to `to` Hz (nothing to do when equal).
pub fn to_rate(samples: Vec<i16>, from: u32, to: u32, channels: u16) -> Result<Vec<i16>, String> {
    if from == to {
        return Ok(samples);
    }
    let mut rs = Resampler::new(from, to, channels).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(samples.len() * to as usize / from.max(1) as usize + 1024);
    rs.process(&samples, &mut out).map_err(|e| e.to_string())?;
    rs.flush(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(dir: &Path, name: &str, rate: u32, samples: &[i16]) -> PathBuf {
        let path = dir.join(name);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for &s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    fn set(entries: &[(&str, &Path)]) -> ChimeSet {
        let cfg = entries
            .iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    ChimeConfig {
                        file: p.to_path_buf(),
                    },
                )
            })
            .collect();
        ChimeSet::load(&cfg, 48_000)
    }

    #[test]
    fn a_wav_chime_is_decoded_at_the_device_rate() {
        let dir = tempfile::tempdir().unwrap();
        let tone: Vec<i16> = (0..12_000)
            .map(|i| ((i as f32 * 0.2).sin() * 8000.0) as i16)
            .collect();
        let p = wav(dir.path(), "ding.wav", 24_000, &tone);
        let chimes = set(&[("ding", &p)]);
        let c = chimes.get("ding").unwrap().unwrap();
        assert_eq!((c.rate, c.channels), (48_000, 1));
        // 0.5 s at 24 kHz is 0.5 s at 48 kHz.
        assert_eq!(c.samples.len(), 24_000);
        assert_eq!(c.duration_ms(), 500);
        assert!(chimes.problems().is_empty());
    }

    #[test]
    fn unusable_files_are_errors_that_name_the_chime_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mp3");
        std::fs::write(&junk, b"ID3\x04 not a chime").unwrap();
        let silent = wav(dir.path(), "silent.wav", 48_000, &[0; 4800]);
        let long = wav(dir.path(), "long.wav", 8_000, &vec![100; 8_000 * 11]);
        let missing = dir.path().join("missing.opus");
        let chimes = set(&[
            ("junk", &junk),
            ("silent", &silent),
            ("long", &long),
            ("gone", &missing),
        ]);
        let msg = |n: &str| chimes.get(n).unwrap().unwrap_err().to_string();
        assert!(msg("junk").contains("chime 'junk'") && msg("junk").contains("junk.mp3"));
        assert!(msg("junk").contains("allowed: Ogg Opus"), "{}", msg("junk"));
        assert!(msg("silent").contains("silent"), "{}", msg("silent"));
        assert!(msg("long").contains("at most 10000 ms"), "{}", msg("long"));
        assert!(msg("gone").contains("cannot read") && msg("gone").contains("missing.opus"));
        assert_eq!(chimes.problems().len(), 4);
        assert!(chimes.get("other").is_none());
    }

    #[test]
    fn a_choice_resolves_against_the_default() {
        let named = ChimeChoice::Named("bell".into());
        assert_eq!(ChimeChoice::resolve(None, Some("ding")), Some("ding"));
        assert_eq!(
            ChimeChoice::resolve(Some(&ChimeChoice::Default(true)), Some("ding")),
            Some("ding")
        );
        assert_eq!(
            ChimeChoice::resolve(Some(&ChimeChoice::Default(false)), Some("ding")),
            None
        );
        assert_eq!(ChimeChoice::resolve(Some(&named), None), Some("bell"));
        let parsed: ChimeChoice = serde_json::from_str("false").unwrap();
        assert_eq!(parsed, ChimeChoice::Default(false));
        let parsed: ChimeChoice = serde_json::from_str("\"bell\"").unwrap();
        assert_eq!(parsed, named);
    }
}
