//! `herald check`: the config, the API key, the audio device, the socket path and the
//! network, one line each, before the daemon is trusted with announcements.

use std::path::{Path, PathBuf};

use crate::audio::alsa::AlsaSink;
use crate::audio::Sink;
use crate::config::Config;
use crate::control::server::SocketPath;
use crate::netmodel::store::{self, ModelStore, ReadError};
use crate::netmodel::DEFAULT_QUANTILE;
use crate::protocol::LearnedNetwork;
use crate::tts::openai::redact_userinfo;

/// `herald check`: what was found, one line each; `false` if something would stop the
/// daemon from speaking.
pub fn check(config: &Config, path: Option<&Path>, warnings: &[String]) -> bool {
    let mut ok = true;
    match path {
        Some(p) => println!("config: {} is valid", p.display()),
        None => println!("config: none found, using the built-in defaults"),
    }
    for w in warnings {
        println!("config: warning: {w}");
    }
    match config.api_key() {
        Ok(Some(_)) => println!("API key: found"),
        Ok(None) => {
            ok = false;
            println!("API key: MISSING (set OPENAI_API_KEY, api.api_key_file, or the systemd credential openai_api_key)");
        }
        Err(e) => {
            ok = false;
            println!("API key: {e}");
        }
    }
    // Credentials in the base URL are as secret as the key.
    println!("API: {}", redact_userinfo(&config.api.api_base));
    let req = config.sink_request();
    match AlsaSink::open(&config.audio.device, &req) {
        Ok(sink) => {
            let f = sink.format();
            println!(
                "audio device: '{}' opens: {} Hz, {} channel(s), {} frames per period, {} frames buffer",
                config.audio.device, f.rate, f.channels, f.period_frames, f.buffer_frames
            );
            if f.rate != config.audio.rate {
                println!(
                    "audio device: note: {} Hz was asked for; audio will be resampled to {} Hz",
                    config.audio.rate, f.rate
                );
            }
        }
        Err(e) => {
            ok = false;
            println!("audio device: {e}");
        }
    }
    let sock = &config.daemon.socket_path;
    match SocketPath::inspect(sock) {
        SocketPath::Live => println!(
            "socket: {} — a herald daemon is serving on it",
            sock.display()
        ),
        SocketPath::Stale => println!(
            "socket: {} exists but nobody answers (a stale socket; `herald serve` replaces it)",
            sock.display()
        ),
        SocketPath::Other(kind) => {
            ok = false;
            println!(
                "socket: {} is {kind}, not a socket: `herald serve` will refuse to start (move or delete it, or set daemon.socket_path)",
                sock.display()
            );
        }
        SocketPath::Unknown(e) => println!("socket: {}: cannot check it: {e}", sock.display()),
        SocketPath::Free => match sock.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {
                println!("socket: {} (free; its directory exists)", sock.display())
            }
            Some(dir) => println!(
                "socket: {} (free; `herald serve` will create {})",
                sock.display(),
                dir.display()
            ),
            None => println!("socket: {}", sock.display()),
        },
    }
    // A warning, not a failure: the daemon works, it just has to absorb more jitter.
    match crate::wifi::wifi_power_save() {
        Ok(Some(w)) => println!("network: warning: {}", w.warning()),
        Ok(None) => println!("network: no WiFi interface with power saving on"),
        Err(e) => println!("network: cannot check WiFi power saving: {e}"),
    }
    // Warnings, not failures: without them the daemon still speaks.
    chimes(config);
    fallback(config);
    // Learning is an optimisation: whatever the file's state, a line and never a failure.
    network_model(config);
    ok
}

/// Each configured chime: decoded, or why its jobs will play without it.
fn chimes(config: &Config) {
    let set = crate::chimes::ChimeSet::load(&config.chimes, config.audio.rate);
    for name in set.names() {
        match set.get(name) {
            Some(Ok(c)) => println!(
                "chime: '{name}' ({}) plays, {} ms",
                config.chimes[name].file.display(),
                c.duration_ms()
            ),
            Some(Err(e)) => println!("chime: warning: {e}; jobs that ask for it play without it"),
            None => {}
        }
    }
}

/// The local voice for when the API can't be reached, and whether it can run.
fn fallback(config: &Config) {
    match config.fallback.engine {
        crate::fallback::Engine::None => println!(
            "fallback voice: none (fallback.engine = \"none\": announcements fail when the API can't be reached)"
        ),
        crate::fallback::Engine::EspeakNg if crate::fallback::espeak::installed() => {
            println!("fallback voice: espeak-ng found (voice {}, {} words per minute)", config.fallback.voice, config.fallback.rate)
        }
        crate::fallback::Engine::EspeakNg => println!(
            "fallback voice: warning: espeak-ng is not on PATH (install the espeak-ng package): announcements fail when the API can't be reached"
        ),
    }
}

/// What the daemon learned about the network for the configured endpoint and format, read
/// from its state directory: `$STATE_DIRECTORY`, else the systemd unit's (`check` runs as
/// the admin, outside the unit).
fn network_model(config: &Config) {
    let dir = store::daemon_dir().unwrap_or_else(|| PathBuf::from(store::SYSTEM_DIR));
    // The key never holds credentials: `store::key` cuts userinfo and query off.
    let key = store::key(&config.api.api_base, config.speech.format);
    let learned = match ModelStore::read(&dir) {
        Ok(learned) => learned,
        Err(e @ ReadError::Unreadable { .. }) => {
            println!("network model: {e}; run check as root or as the herald user to see what the daemon learned");
            return;
        }
        Err(e @ ReadError::Corrupt { .. }) => {
            println!("network model: {e}; the daemon starts afresh and replaces it");
            return;
        }
    };
    let model = learned.model(&key);
    let from = dir.join(store::FILE_NAME);
    if model.is_cold() {
        println!(
            "network model: {key}: nothing learned yet (cold start: playout uses the fixed rules; {})",
            from.display()
        );
    } else {
        let line = LearnedNetwork {
            key: key.clone(),
            summary: model.summary(DEFAULT_QUANTILE),
        };
        println!("network model: {line} ({})", from.display());
    }
    let others = learned.models().keys().filter(|k| **k != key).count();
    if others > 0 {
        println!(
            "network model: also learned for {others} other endpoint(s) and format(s) (`herald status` lists them)"
        );
    }
}
