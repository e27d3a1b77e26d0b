//! `herald serve`, the composition root: wires the config, the API client, the audio
//! cache, the control socket, the scheduler, the buttons, signals and systemd together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::audio::alsa::AlsaOpener;
use crate::buttons::rppal::RppalSource;
use crate::buttons::{pin_setups, ButtonAction, ButtonService};
use crate::config::{Config, ConfigError};
use crate::control::server::{self, ServerError};
use crate::netmodel::store::{self, ModelStore};
use crate::protocol::{Envelope, Reply, ReplyTo};
use crate::scheduler::{Command, Parts, Presets, Scheduler, SchedulerHandle};
use crate::systemd::{self, Notifier, SystemdError};
use crate::tts::cache::AudioCache;
use crate::tts::openai::OpenAiClient;
use crate::tts::{SpeechSource, TtsError};

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

    let limits = config.server_limits();
    let source: Arc<dyn SpeechSource> = Arc::new(client);
    // What was learned about the network survives restarts in systemd's StateDirectory=;
    // without one it is learned in memory only.
    let (model, warning) = ModelStore::open(store::daemon_dir().as_deref());
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let parts = Parts {
        model,
        presets: open_cache(&config, &source),
        source,
        opener: Arc::new(AlsaOpener),
        notifier: notifier.clone(),
    };
    // Presets render in the background (spawned by the scheduler): never before READY=1.
    let (sched, mut sched_task) = Scheduler::spawn(config.clone(), parts);
    start_buttons(&config, &sched);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, sched.requests(), limits, stop_rx));
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
fn open_cache(config: &Config, source: &Arc<dyn SpeechSource>) -> Result<Presets, String> {
    let dir = config.cache_dir();
    let max = config.cache.max_mb.saturating_mul(1024 * 1024);
    match AudioCache::open(&dir, max) {
        Ok(cache) => {
            tracing::info!(dir = %dir.display(), max_mb = config.cache.max_mb, "audio cache ready");
            Ok(Presets::new(
                Arc::new(cache),
                source.clone(),
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
    let requests = sched.requests();
    let reply: Arc<dyn ReplyTo> = Arc::new(ButtonLog);
    tokio::spawn(async move {
        while let Some(action) = rx.recv().await {
            let req = action.request();
            let envelope = Envelope {
                req: Ok(req),
                reply: reply.clone(),
            };
            if requests.send(envelope).await.is_err() {
                return;
            }
        }
    });
}

/// Where replies to a button press go: the log (failures as errors).
#[derive(Debug)]
struct ButtonLog;

impl ReplyTo for ButtonLog {
    fn send(&self, reply: Reply) {
        match &reply {
            Reply::Failed { reason, .. } => tracing::error!("button press failed: {reason}"),
            r if r.is_terminal() => tracing::info!("button press: {}", r.to_line().trim_end()),
            _ => {}
        }
    }
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
    let source = if new.api != current.api {
        match client_for(&new) {
            Ok(c) => Some(Arc::new(c) as Arc<dyn SpeechSource>),
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
        || new.server_limits() != current.server_limits()
    {
        tracing::warn!(
            "daemon.socket_path, daemon.max_connections, daemon.idle_timeout_s and the request line limit (from speech.max_text_chars) take effect at the next restart"
        );
    }
    sched
        .send(Command::Reload {
            config: Box::new(new.clone()),
            source,
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
