//! `herald serve` and `herald check`: wiring the config, the API client, the control
//! socket, the scheduler, signals and systemd notification together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::audio::alsa::AlsaSink;
use crate::buttons::rppal::RppalSource;
use crate::buttons::{pin_setups, ButtonAction, ButtonService};
use crate::config::{Config, ConfigError};
use crate::control::protocol::{PresetRequest, Reply, Request};
use crate::control::server::{self, ServerError};
use crate::scheduler::{Command, Presets, Replier, Scheduler, SchedulerHandle};
use crate::systemd::{self, Notifier, SystemdError};
use crate::tts::cache::AudioCache;
use crate::tts::openai::OpenAiClient;
use crate::tts::TtsError;

/// How long SIGTERM waits for the fade-out and the device to close before exiting anyway
/// (systemd's budget is 2 s; the rest is process teardown).
const STOP_BUDGET: Duration = Duration::from_millis(1200);
/// How long the last replies (cancelled, …) may take to reach the clients.
const REPLY_FLUSH: Duration = Duration::from_millis(300);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config or key file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API client settings.
    #[error(transparent)]
    Tts(#[from] TtsError),
    /// The control socket.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Socket activation.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// The scheduler task stopped unexpectedly (a bug).
    #[error(
        "the scheduler stopped unexpectedly ({0}); exiting so the service manager restarts herald"
    )]
    SchedulerDied(String),
    /// Signal handlers or the runtime.
    #[error("cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds the API client from `config`, reading the key; a missing key is logged, not fatal
/// (jobs then fail with a clear reason, and a reload can add it).
fn client_for(config: &Config) -> Result<OpenAiClient, DaemonError> {
    let key = config.api_key()?;
    if key.is_none() {
        tracing::error!(
            "no API key: set OPENAI_API_KEY, api.api_key_file, or the systemd credential openai_api_key; announcements will fail until then"
        );
    }
    Ok(OpenAiClient::new(config.openai(key))?)
}

/// Runs the daemon until SIGTERM/SIGINT. `config_path` is re-read on SIGHUP.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let client = client_for(&config)?;
    let sig = |kind, name| signal(kind).map_err(|source| DaemonError::Io { op: name, source });
    let mut sigterm = sig(SignalKind::terminate(), "handle SIGTERM")?;
    let mut sigint = sig(SignalKind::interrupt(), "handle SIGINT")?;
    let mut sighup = sig(SignalKind::hangup(), "handle SIGHUP")?;

    let d = &config.daemon;
    let (std_listener, bound) = match systemd::activated_listener()? {
        Some(l) => {
            tracing::info!("using the control socket passed by systemd");
            (l, None)
        }
        None => {
            let l = server::bind(&d.socket_path, d.socket_mode_bits(), &d.socket_group)?;
            tracing::info!(path = %d.socket_path.display(), "listening on the control socket");
            (l, Some(d.socket_path.clone()))
        }
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|source| DaemonError::Io {
            op: "make the control socket non-blocking",
            source,
        })?;
    let listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(|source| DaemonError::Io {
            op: "register the control socket",
            source,
        })?;

    let max_connections = d.max_connections;
    let presets = open_cache(&config, &client);
    // Presets render in the background (spawned by the scheduler): never before READY=1.
    let (sched, mut sched_task) =
        Scheduler::spawn(config.clone(), client, notifier.clone(), presets);
    start_buttons(&config, &sched);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(
        listener,
        sched.clone(),
        max_connections,
        stop_rx,
    ));
    if let Some(every) = notifier.watchdog_interval() {
        tokio::spawn(watchdog(sched.clone(), notifier.clone(), every));
    }
    notifier.ready("idle");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "herald is ready");

    let mut current = config;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            r = &mut sched_task => {
                // Only a bug ends it before shutdown: exit non-zero so systemd restarts us.
                let _ = stop_tx.send(true);
                if let Some(path) = &bound {
                    let _ = std::fs::remove_file(path);
                }
                let detail = match r {
                    Err(e) => e.to_string(),
                    Ok(()) => "it ended".into(),
                };
                return Err(DaemonError::SchedulerDied(detail));
            }
            _ = sighup.recv() => {
                notifier.reloading();
                current = reload(current, config_path.as_deref(), &sched, &notifier).await;
            }
        }
    }

    tracing::info!("stopping");
    notifier.stopping();
    let _ = stop_tx.send(true);
    let (done_tx, done_rx) = oneshot::channel();
    let stopped = async {
        if sched.send(Command::Shutdown(done_tx)).await {
            let _ = done_rx.await;
        }
    };
    if tokio::time::timeout(STOP_BUDGET, stopped).await.is_err() {
        tracing::warn!("the audio device did not close in time; exiting anyway");
    }
    let _ = tokio::time::timeout(REPLY_FLUSH, server).await;
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Opens the audio cache (`$CACHE_DIRECTORY` or `cache.dir`); without one, presets and
/// `"cache": true` requests play live, and the reason is logged once and shown by `presets`.
fn open_cache(config: &Config, client: &OpenAiClient) -> Result<Presets, String> {
    let dir = config.cache_dir();
    let max = config.cache.max_mb.saturating_mul(1024 * 1024);
    match AudioCache::open(&dir, max) {
        Ok(cache) => {
            tracing::info!(dir = %dir.display(), max_mb = config.cache.max_mb, "audio cache ready");
            Ok(Presets::new(
                std::sync::Arc::new(cache),
                client,
                &config.api.api_base,
            ))
        }
        Err(e) => {
            let reason = format!(
                "audio cache unavailable: {e} (set cache.dir to a writable directory); presets play live"
            );
            if !config.presets.is_empty() {
                tracing::error!("{reason}");
            } else {
                tracing::warn!("{reason}");
            }
            Err(reason)
        }
    }
}

/// Starts the GPIO buttons, if any are configured. Off a Pi or without access to the GPIO
/// device this logs one error naming the cause (and the group to add) and returns: the
/// socket keeps working. Buttons take effect at start (a reload does not change them).
fn start_buttons(config: &Config, sched: &SchedulerHandle) {
    if config.buttons.is_empty() {
        return;
    }
    let source = match RppalSource::open(&pin_setups(&config.buttons)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ButtonAction>(16);
    let service = match ButtonService::new(
        Box::new(source),
        &config.buttons,
        tx,
        std::time::Instant::now(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    if let Err(e) = service.spawn() {
        tracing::error!("GPIO buttons are disabled: cannot start their thread: {e}");
        return;
    }
    let pins: Vec<u8> = config.buttons.iter().map(|b| b.pin).collect();
    tracing::info!(?pins, "GPIO buttons ready");
    let sched = sched.clone();
    tokio::spawn(async move {
        while let Some(action) = rx.recv().await {
            let req = match action {
                ButtonAction::Preset {
                    name,
                    while_playing,
                    ..
                } => Request::Preset(PresetRequest {
                    name,
                    id: None,
                    while_playing: Some(while_playing),
                }),
                ButtonAction::Stop { .. } => Request::Stop,
                ButtonAction::Skip { .. } => Request::Skip,
            };
            if !sched
                .send(Command::Request {
                    req: Ok(req),
                    reply: button_replier(),
                })
                .await
            {
                return;
            }
        }
    });
}

/// Where replies to a button press go: the log (failures as errors).
fn button_replier() -> Replier {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            match &reply {
                Reply::Failed { reason, .. } => tracing::error!("button press failed: {reason}"),
                r if r.is_terminal() => tracing::info!("button press: {}", r.to_line().trim_end()),
                _ => {}
            }
        }
    });
    Replier::new(0, tx, std::sync::Arc::new(tokio::sync::Notify::new()))
}

/// SIGHUP: loads the config again; a bad one is reported and the old one kept.
async fn reload(
    current: Config,
    path: Option<&Path>,
    sched: &SchedulerHandle,
    notifier: &Notifier,
) -> Config {
    let loaded = match Config::load(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("reload failed, keeping the old configuration: {e}");
            notifier.ready(&format!("reload failed, old config kept: {e}"));
            return current;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let new = loaded.config;
    let client = if new.api != current.api {
        match client_for(&new) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("reload failed, keeping the old configuration: {e}");
                notifier.ready(&format!("reload failed, old config kept: {e}"));
                return current;
            }
        }
    } else {
        None
    };
    if new.buttons != current.buttons {
        tracing::warn!("[[buttons]] changes take effect at the next restart");
    }
    if new.daemon.socket_path != current.daemon.socket_path
        || new.daemon.max_connections != current.daemon.max_connections
    {
        tracing::warn!(
            "daemon.socket_path and daemon.max_connections take effect at the next restart"
        );
    }
    sched
        .send(Command::Reload {
            config: Box::new(new.clone()),
            client,
        })
        .await;
    notifier.ready("config reloaded");
    new
}

/// Pings systemd's watchdog only while the scheduler answers and the audio thread is not
/// stuck, so a hung daemon is restarted.
async fn watchdog(sched: SchedulerHandle, notifier: Notifier, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match sched.ping(every).await {
            Some(h) if h.audio_ok => notifier.watchdog(),
            Some(_) => tracing::error!(
                "the audio thread is stuck in a device write; not pinging the watchdog"
            ),
            None => tracing::error!("the scheduler did not answer; not pinging the watchdog"),
        }
    }
}

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
    println!("API: {}", config.api.api_base);
    let req = config.sink_request();
    match AlsaSink::open(&config.audio.device, &req) {
        Ok(sink) => {
            use crate::audio::Sink;
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
    if std::fs::symlink_metadata(sock).is_ok() {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(_) => println!(
                "socket: {} — a herald daemon is serving on it",
                sock.display()
            ),
            Err(_) => println!(
                "socket: {} exists but nobody answers (a stale file; `herald serve` replaces it)",
                sock.display()
            ),
        }
    } else {
        match sock.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {
                println!("socket: {} (free; its directory exists)", sock.display())
            }
            Some(dir) => println!(
                "socket: {} (free; `herald serve` will create {})",
                sock.display(),
                dir.display()
            ),
            None => println!("socket: {}", sock.display()),
        }
    }
    // A warning, not a failure: the daemon works, it just has to absorb more jitter.
    match crate::net::wifi_power_save() {
        Ok(Some(w)) => println!("network: warning: {}", w.warning()),
        Ok(None) => println!("network: no WiFi interface with power saving on"),
        Err(e) => println!("network: cannot check WiFi power saving: {e}"),
    }
    ok
}
