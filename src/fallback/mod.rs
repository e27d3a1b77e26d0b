//! A local voice for when OpenAI can't be reached: the `LocalVoice` seam, its config rules
//! and its errors. One backend, `espeak.rs` (the `espeak-ng` program; docs/FALLBACK.md says
//! why a subprocess and not the library). The pipeline plays what it returns through the
//! same resampler, channel map and playout as the API's audio.

pub mod espeak;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::codec::PcmFormat;

/// espeak-ng's own default speaking rate, in words per minute.
pub const DEFAULT_RATE: u32 = 175;
/// The rates espeak-ng accepts (`espeakRATE_MINIMUM` ..= `espeakRATE_MAXIMUM`); outside it
/// espeak-ng clamps silently, so the config refuses them instead.
pub const RATES: std::ops::RangeInclusive<u32> = 80..=450;
/// The voice used when none is configured.
pub const DEFAULT_VOICE: &str = "en";
/// The longest voice name accepted (espeak's longest are about 30 characters).
const MAX_VOICE_CHARS: usize = 40;

/// Which local engine speaks when the API can't (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Engine {
    /// The `espeak-ng` program (Debian's `espeak-ng`).
    #[default]
    #[serde(rename = "espeak-ng")]
    EspeakNg,
    /// No fallback: jobs fail as they would without one.
    #[serde(rename = "none")]
    None,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::EspeakNg => "espeak-ng",
            Engine::None => "none",
        })
    }
}

/// The `[fallback]` settings the engine is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackSettings {
    /// Which engine.
    pub engine: Engine,
    /// espeak-ng voice or language, e.g. `en`, `en-us`, `de`.
    pub voice: String,
    /// Words per minute, within [`RATES`].
    pub rate: u32,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            engine: Engine::EspeakNg,
            voice: DEFAULT_VOICE.into(),
            rate: DEFAULT_RATE,
        }
    }
}

/// The one rule for a fallback voice name: what espeak-ng's voice and language names are
/// made of (`en`, `en-gb-x-rp`, `gmw/en-US`, `mb-en1`), so nothing else reaches its
/// command line. Returns what is wrong and what is allowed.
pub fn check_voice(voice: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/');
    if voice.is_empty()
        || voice.chars().count() > MAX_VOICE_CHARS
        || voice.starts_with(['-', '/'])
        || !voice.chars().all(ok_char)
    {
        return Err(format!(
            "'{voice}' is not an espeak-ng voice name (allowed: 1 to {MAX_VOICE_CHARS} of \
             A-Z a-z 0-9 - _ + /, not starting with - or /, e.g. \"en\", \"en-us\", \"de\"; \
             `espeak-ng --voices` lists them)"
        ));
    }
    Ok(())
}

/// The one rule for a fallback rate.
pub fn check_rate(rate: u32) -> Result<(), String> {
    if RATES.contains(&rate) {
        return Ok(());
    }
    Err(format!(
        "{rate} is out of range (allowed: {} to {} words per minute; espeak-ng's default is {DEFAULT_RATE})",
        RATES.start(),
        RATES.end()
    ))
}

/// Builds the configured engine (`None` for `engine = "none"`).
pub fn from_settings(s: &FallbackSettings) -> Option<Arc<dyn LocalVoice>> {
    match s.engine {
        Engine::EspeakNg => Some(Arc::new(espeak::EspeakNg::new(&s.voice, s.rate))),
        Engine::None => None,
    }
}

/// How long a running engine may send nothing before it counts as hung.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A stream of raw s16le PCM in the [`LocalSpeech::format`] it announced.
pub type PcmStream = Pin<Box<dyn Stream<Item = Result<Bytes, FallbackError>> + Send>>;

/// Speech from a local engine: its format, then its samples as they are synthesized.
pub struct LocalSpeech {
    /// Rate and channels of the samples.
    pub format: PcmFormat,
    /// Raw s16le samples, in any chunking; ends after the last one (or with an error).
    pub body: PcmStream,
}

/// What [`LocalVoice::open`] returns.
pub type LocalFuture<'a> =
    Pin<Box<dyn Future<Output = Result<LocalSpeech, FallbackError>> + Send + 'a>>;

/// A speech engine that runs on the device itself. Dropping what it returned stops it.
pub trait LocalVoice: Send + Sync {
    /// Which engine this is (named in replies and logs).
    fn engine(&self) -> Engine;
    /// Starts speaking `text`; resolves once the format of its audio is known.
    fn open<'a>(&'a self, text: &'a str) -> LocalFuture<'a>;
}

/// Everything that can go wrong speaking locally.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// The program is not installed.
    #[error(
        "{program} is not installed or not on PATH (Debian: apt install espeak-ng; or set \
         fallback.engine = \"none\")"
    )]
    NotInstalled {
        /// The program looked for.
        program: String,
    },
    /// Starting it failed for another reason.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing the text to it or reading its audio failed.
    #[error("{program}: {what}: {source}")]
    Io {
        /// The program.
        program: String,
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// It sent nothing for [`STALL_TIMEOUT`] (and was killed).
    #[error("{program} sent no audio for {} s: stopped", after.as_secs())]
    Stalled {
        /// The program.
        program: String,
        /// How long it was silent.
        after: std::time::Duration,
    },
    /// Its output did not start with a WAV header herald can play.
    #[error("{program} did not send playable audio: {detail}")]
    BadAudio {
        /// The program.
        program: String,
        /// What was wrong.
        detail: String,
    },
    /// It ended with an error (its own message, if it gave one).
    #[error("{program} failed ({status}){}", stderr_text(.stderr))]
    Failed {
        /// The program.
        program: String,
        /// How it exited.
        status: String,
        /// The start of what it wrote to stderr.
        stderr: String,
    },
    /// Its audio could not be converted for the device.
    #[error("its audio could not be converted for the device: {0}")]
    Decode(#[from] crate::codec::CodecError),
}

fn stderr_text(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_names_are_what_espeak_names_are_made_of() {
        for ok in ["en", "en-us", "gmw/en-US", "en-gb-x-rp", "mb-en1", "en+f3"] {
            assert!(check_voice(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-s",
            "/etc/passwd",
            "en us",
            "en;rm",
            "é",
            &"e".repeat(41),
        ] {
            let msg = check_voice(bad).unwrap_err();
            assert!(msg.contains("espeak-ng --voices"), "{bad}: {msg}");
        }
    }

    #[test]
    fn rates_outside_espeaks_range_are_refused() {
        assert!(check_rate(80).is_ok() && check_rate(175).is_ok() && check_rate(450).is_ok());
        for bad in [0, 79, 451] {
            assert!(check_rate(bad).unwrap_err().contains("80 to 450"), "{bad}");
        }
    }
}
