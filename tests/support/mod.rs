//! Test helpers shared by integration tests (`mod support;` in a test file).
//!
//! - [`alsa_env`]: a per-process ALSA configuration with test PCMs (see docs/TESTING-AUDIO.md).
//! - [`FifoClock`]: drains a FIFO-backed PCM at the sample rate, like a DAC, and records gaps.
//!
//! Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod alsa_env;
pub mod conn;
pub mod daemon;
pub mod emulator;
pub mod fifo_clock;
pub mod reference;
pub mod snapcast;

#[allow(unused_imports)]
pub use alsa_env::{alsa_env, claim_fifo, AlsaTestEnv, FifoPcm};
#[allow(unused_imports)]
pub use fifo_clock::{Capture, FifoClock, Gap};

/// The audio duration (seconds) in herald's summary line (`…, audio 1.55 s, …`), if any.
pub fn summary_audio_s(summary: &str) -> Option<f64> {
    summary
        .split(", audio ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}
