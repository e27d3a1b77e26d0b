//! herald: streams OpenAI text-to-speech as Ogg Opus, decodes it on the device as it
//! arrives and plays it gaplessly on ALSA. docs/ARCHITECTURE.md has the data flow, the module
//! map and the audio thread's rules.
#![warn(missing_docs)]

pub mod audio;
pub mod buttons;
pub mod check;
pub mod chimes;
pub mod codec;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fallback;
pub mod netmodel;
pub mod outputs;
pub mod pipeline;
pub mod presets;
pub mod protocol;
pub mod scheduler;
pub mod systemd;
pub mod text;
pub mod tts;
pub mod volume;
pub mod wifi;
