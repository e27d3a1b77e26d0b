//! The daemon's scheduler: one task that owns the announcement queue and the audio device.
//!
//! Requests arrive as [`Envelope`]s from the control server and the buttons; commands
//! (watchdog pings, reloads, shutdown) from the daemon. Jobs play one at a time through
//! `pipeline::speak`; while one plays the task keeps serving both, so `skip`, `stop`,
//! `cancel` and `interrupt` jobs take effect at once (the speak future is dropped and the
//! playout fades out in ≤ 20 ms). The audio thread's events (first audio, stalls) come up
//! through the pipeline as they happen. Every accepted job ends in exactly one terminal
//! reply. A failing or hung device fails the job that was playing; the device is reopened
//! with backoff, and the daemon never exits for it.
//!
//! This file is the task loop and the dispatch of requests and commands; beside it are
//! `job.rs` (playing one job), `queue.rs` (admission, priorities, presses), `device.rs`
//! (the device's life) and `stats.rs` (counters and the status report).

pub mod device;
mod job;
mod outputs;
pub mod queue;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::audio::SinkOpener;
use crate::chimes::{ChimeChoice, ChimeSet};
use crate::config::Config;
use crate::fallback::LocalVoice;
use crate::netmodel::store::{self, ModelStore};
use crate::pipeline::{PipelineError, SpeakReport, Voice};
use crate::presets::Renderer;
use crate::protocol::{
    CancelledBy, DaemonState, Envelope, OkCommand, PresetRequest, Reply, ReplyTo, Request,
    SpeakRequest, StatusReport,
};
use crate::systemd::Notifier;
use crate::tts::cache::{AudioCache, CachingSource};
use crate::tts::{OpenFuture, SpeechRequest, SpeechSource};
use device::{Device, DeviceSettings};
use outputs::Outputs;
use queue::{Job, JobSource, NewJob, Press, Queue, Refusal};
use stats::{Net, Stats};

/// Longest wait for an interrupt's fade-out before giving up on the device.
const FADE_WAIT: Duration = Duration::from_secs(1);
/// Waiting jobs listed in a status reply (the length is always given).
const STATUS_QUEUE_MAX: usize = 100;

/// What the watchdog learns from a liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The audio thread is not stuck in a device write (or no device is open).
    pub audio_ok: bool,
}

/// Messages to the scheduler from the daemon itself.
pub enum Command {
    /// Liveness probe for the watchdog.
    Ping(oneshot::Sender<Health>),
    /// A reloaded config (and a speech source built from it, if the API settings changed).
    Reload {
        /// The new config.
        config: Box<Config>,
        /// A new live speech source, when `[api]` changed.
        source: Option<Arc<dyn SpeechSource>>,
    },
    /// Stop: cancel everything, fade out, close the device, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// A cheap handle to the scheduler task.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
    requests: mpsc::Sender<Envelope>,
}

impl SchedulerHandle {
    /// Where clients' requests go (the control server and the buttons send here).
    pub fn requests(&self) -> mpsc::Sender<Envelope> {
        self.requests.clone()
    }

    /// Sends a command; `false` if the scheduler has stopped.
    pub async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Asks the scheduler whether it and the audio thread are alive (`None`: no answer
    /// within `within`).
    pub async fn ping(&self, within: Duration) -> Option<Health> {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send_timeout(Command::Ping(tx), within)
            .await
            .is_err()
        {
            return None;
        }
        tokio::time::timeout(within, rx).await.ok()?.ok()
    }
}

/// The audio cache and the preset renderer, when the cache directory is usable.
#[derive(Debug, Clone)]
pub struct Presets {
    /// Keeps every preset rendered; its source is the cache-first source.
    pub renderer: Arc<Renderer>,
}

impl Presets {
    /// A renderer over `cache`, fetching through `source` (requests go to `api_base`).
    pub fn new(cache: Arc<AudioCache>, source: Arc<dyn SpeechSource>, api_base: &str) -> Self {
        let source = CachingSource::new(source, cache, api_base);
        Presets {
            renderer: Arc::new(Renderer::new(source, Default::default())),
        }
    }
}

/// What the scheduler works with, injected so its rules can be tested in-process.
pub struct Parts {
    /// Live speech (the OpenAI client in the daemon).
    pub source: Arc<dyn SpeechSource>,
    /// Opens the audio device (ALSA in the daemon).
    pub opener: Arc<dyn SinkOpener>,
    /// systemd notifications.
    pub notifier: Notifier,
    /// The audio cache and preset renderer, or why there is none.
    pub presets: Result<Presets, String>,
    /// The network model learned so far (and where it is kept).
    pub model: ModelStore,
}

/// The configured local voice, warning once when its program is missing (jobs that need it
/// then fail naming both errors).
fn fallback_for(cfg: &Config) -> Option<Arc<dyn LocalVoice>> {
    let settings = cfg.fallback();
    if settings.engine == crate::fallback::Engine::EspeakNg && !crate::fallback::espeak::installed()
    {
        tracing::warn!(
            "fallback.engine = \"espeak-ng\" but {} is not on PATH: announcements fail when the API can't be reached (install espeak-ng, or set fallback.engine = \"none\")",
            crate::fallback::espeak::PROGRAM
        );
    }
    crate::fallback::from_settings(&settings)
}

/// Opens through the cache with presets' audio pinned (never evicted while configured).
struct PinnedSource(CachingSource);

impl SpeechSource for PinnedSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(self.0.open_cached(req, true))
    }
}

/// What ended a playing job early.
enum Preempt {
    /// `cancel`, `skip`, `stop` or shutdown.
    Cancelled(CancelledBy),
    /// An `interrupt` job (its id), already at the front of the queue.
    Interrupted(String),
}

/// How a job's playing ended.
enum Outcome {
    /// The pipeline returned.
    Done(Result<SpeakReport, PipelineError>),
    /// A command cut it short.
    Preempted(Preempt),
    /// The device stopped taking audio (why).
    Hung(String),
}

/// The scheduler task's state.
pub struct Scheduler {
    cfg: Config,
    source: Arc<dyn SpeechSource>,
    rx: mpsc::Receiver<Command>,
    requests: mpsc::Receiver<Envelope>,
    queue: Queue,
    device: Device,
    /// The `[outputs.NAME]` devices (`to`); the playing job's stands in `device`.
    outputs: Outputs,
    stats: Stats,
    net: Net,
    started: Instant,
    notifier: Notifier,
    stopping: Option<oneshot::Sender<()>>,
    presets: Option<Presets>,
    /// Every configured preset's request (the `[speech]` defaults applied).
    preset_reqs: BTreeMap<String, SpeechRequest>,
    /// Why there is no cache (presets then play live).
    cache_error: Option<String>,
    /// What was learned about the network, per endpoint and format.
    model: ModelStore,
    /// Saving the model failed once already (warned; it stays in memory).
    model_unsaved: Arc<std::sync::atomic::AtomicBool>,
    /// The configured chimes, decoded (or why they could not be).
    chimes: ChimeSet,
    /// The local voice for when the API can't be reached (`None`: `engine = "none"`).
    fallback: Option<Arc<dyn LocalVoice>>,
}

impl Scheduler {
    /// Starts the scheduler task and starts rendering the configured presets in the
    /// background. The returned handle feeds it; the join handle tells when the task
    /// ended (after a shutdown, or if it panicked: a bug).
    pub fn spawn(cfg: Config, parts: Parts) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let (req_tx, requests) = mpsc::channel(256);
        let preset_reqs = preset_requests(&cfg);
        let (presets, cache_error) = match parts.presets {
            Ok(p) => {
                let summary = p.renderer.update(&preset_reqs);
                if !summary.rendering.is_empty() {
                    tracing::info!(presets = ?summary.rendering, "rendering presets in the background");
                }
                (Some(p), None)
            }
            Err(e) => (None, Some(e)),
        };
        let s = Scheduler {
            chimes: load_chimes(&cfg),
            fallback: fallback_for(&cfg),
            device: Device::new(parts.opener, DeviceSettings::from_config(&cfg)),
            outputs: Outputs::from_config(&cfg),
            source: parts.source,
            notifier: parts.notifier,
            model: parts.model,
            model_unsaved: Arc::default(),
            presets,
            preset_reqs,
            cache_error,
            cfg,
            rx,
            requests,
            queue: Queue::default(),
            stats: Stats::default(),
            net: Net::default(),
            started: Instant::now(),
            stopping: None,
        };
        let task = tokio::spawn(s.run());
        let handle = SchedulerHandle {
            tx,
            requests: req_tx,
        };
        (handle, task)
    }

    async fn run(mut self) {
        // Warm the API connection at once, so the first announcement is fast.
        self.keepalive();
        loop {
            if let Some(done) = self.stopping.take() {
                self.device.close().await;
                self.outputs.close_all().await;
                let _ = done.send(());
                return;
            }
            // At dequeue too: a timer that is due may not have been looked at yet.
            self.expire_due();
            if let Some(job) = self.queue.pop() {
                self.run_job(job).await;
                if self.queue.is_empty() && self.stopping.is_none() {
                    self.set_status();
                }
                continue;
            }
            if !self.idle().await {
                return;
            }
        }
    }

    /// Waits for the next thing to do while nothing plays; `false` when the daemon is gone.
    async fn idle(&mut self) -> bool {
        let warm_at = self.warm_at();
        let device_at = self.device.next_timer();
        let outputs_at = self.outputs.next_timer();
        let expiry_at = self.queue.next_expiry();
        tokio::select! {
            cmd = self.rx.recv() => match cmd {
                Some(cmd) => {
                    self.handle(cmd, None);
                }
                None => {
                    self.device.close().await;
                    self.outputs.close_all().await;
                    return false;
                }
            },
            Some(env) = self.requests.recv() => {
                self.handle_request(env, None);
            }
            _ = sleep_until(device_at.unwrap_or(self.started).into()), if device_at.is_some() => {
                self.device.on_timer().await;
                self.set_status();
            }
            _ = sleep_until(outputs_at.unwrap_or(self.started).into()), if outputs_at.is_some() => {
                self.outputs.on_timer().await;
            }
            _ = sleep_until(warm_at.unwrap_or(self.started).into()), if warm_at.is_some() => {
                self.keepalive();
            }
            _ = sleep_until(expiry_at.unwrap_or(self.started).into()), if expiry_at.is_some() => {
                self.expire_due();
            }
        }
        true
    }

    /// Ends every queued job whose expiry has passed with `expired` (never played).
    fn expire_due(&mut self) {
        for job in self.queue.take_expired(Instant::now()) {
            self.end_expired(&job);
        }
    }

    /// When the API connection is next refreshed (`None`: keep-alive is off).
    fn warm_at(&self) -> Option<Instant> {
        let every = Duration::from_secs(self.cfg.daemon.keepalive_s);
        (!every.is_zero()).then(|| self.net.last_use().unwrap_or(self.started) + every)
    }

    /// Refreshes the API connection in the background (never delays a job).
    fn keepalive(&mut self) {
        if self.cfg.daemon.keepalive_s == 0 {
            return;
        }
        let source = self.source.clone();
        let net = self.net.clone();
        net.used();
        tokio::spawn(async move {
            match source.warm().await {
                Ok(()) => net.ok(),
                Err(e) => {
                    tracing::warn!("keep-alive request to the API failed: {e}");
                    net.failed(e.to_string());
                }
            }
        });
    }

    /// Handles one command. `playing` is the job on the device, if any; returns how it
    /// must end when the command preempts it.
    fn handle(&mut self, cmd: Command, playing: Option<&Job>) -> Option<Preempt> {
        match cmd {
            Command::Ping(tx) => {
                let audio_ok = self.device.stuck_for().is_none();
                let _ = tx.send(Health { audio_ok });
                None
            }
            Command::Reload { config, source } => {
                self.reload(*config, source);
                None
            }
            Command::Shutdown(done) => {
                self.stopping = Some(done);
                for job in self.queue.clear() {
                    self.end_cancelled(&job, CancelledBy::Shutdown);
                }
                playing.map(|_| Preempt::Cancelled(CancelledBy::Shutdown))
            }
        }
    }

    fn reload(&mut self, config: Config, source: Option<Arc<dyn SpeechSource>>) {
        self.reconfigure_devices(&config);
        if config.cache != self.cfg.cache {
            tracing::warn!("[cache] changes take effect at the next restart");
        }
        self.cfg = config;
        self.fallback = fallback_for(&self.cfg);
        if let Some(src) = source {
            if let Some(p) = &self.presets {
                let cache = p.renderer.source().cache().clone();
                p.renderer.replace_source(CachingSource::new(
                    src.clone(),
                    cache,
                    &self.cfg.api.api_base,
                ));
            }
            self.source = src;
        }
        self.preset_reqs = preset_requests(&self.cfg);
        self.chimes = load_chimes(&self.cfg);
        if let Some(p) = &self.presets {
            let summary = p.renderer.update(&self.preset_reqs);
            tracing::info!(
                rendering = ?summary.rendering,
                removed = ?summary.removed,
                "presets updated"
            );
        }
        tracing::info!("configuration reloaded; the queue is kept");
    }

    /// Handles one client request, like [`Self::handle`].
    fn handle_request(&mut self, env: Envelope, playing: Option<&Job>) -> Option<Preempt> {
        self.stats.request();
        match env.req {
            Err(e) => self.refuse(&env.reply, None, e.to_string()),
            Ok(req) => self.request(req, env.reply, playing),
        }
    }

    fn request(
        &mut self,
        req: Request,
        reply: Arc<dyn ReplyTo>,
        playing: Option<&Job>,
    ) -> Option<Preempt> {
        match req {
            Request::Status => {
                reply.send(Reply::Status(Box::new(self.status())));
                None
            }
            Request::Speak(s) => self.enqueue(s, reply, playing),
            Request::Preset(p) => self.press(p, reply, playing),
            Request::Presets => {
                reply.send(Reply::Presets {
                    presets: self.preset_infos(),
                });
                None
            }
            Request::Skip => {
                let jobs = playing.map(|j| vec![j.id.clone()]).unwrap_or_default();
                reply.send(Reply::Ok {
                    cmd: OkCommand::Skip,
                    jobs,
                    forgotten: None,
                });
                playing.map(|_| Preempt::Cancelled(CancelledBy::Skip))
            }
            Request::Stop => {
                let mut jobs: Vec<String> = playing.map(|j| j.id.clone()).into_iter().collect();
                for job in self.queue.clear() {
                    jobs.push(job.id.clone());
                    self.end_cancelled(&job, CancelledBy::Stop);
                }
                reply.send(Reply::Ok {
                    cmd: OkCommand::Stop,
                    jobs,
                    forgotten: None,
                });
                playing.map(|_| Preempt::Cancelled(CancelledBy::Stop))
            }
            Request::Cancel { id } => self.cancel(id, reply, playing),
            Request::ResetNetworkModel => {
                self.reset_model(reply);
                None
            }
        }
    }

    fn cancel(
        &mut self,
        id: String,
        reply: Arc<dyn ReplyTo>,
        playing: Option<&Job>,
    ) -> Option<Preempt> {
        let preempt = if let Some(job) = self.queue.remove(&id) {
            self.end_cancelled(&job, CancelledBy::Cancel);
            None
        } else if playing.is_some_and(|j| j.id == id) {
            Some(Preempt::Cancelled(CancelledBy::Cancel))
        } else {
            let reason = format!("cancel: no queued or playing job has id '{id}'");
            return self.refuse(&reply, None, reason);
        };
        reply.send(Reply::Ok {
            cmd: OkCommand::Cancel,
            jobs: vec![id],
            forgotten: None,
        });
        preempt
    }

    fn enqueue(
        &mut self,
        s: SpeakRequest,
        reply: Arc<dyn ReplyTo>,
        playing: Option<&Job>,
    ) -> Option<Preempt> {
        let voice = match self.voice_for(&s) {
            Ok(v) => v,
            Err(reason) => return self.refuse(&reply, s.id.clone(), reason),
        };
        if let Err(e) = crate::outputs::check_to(s.to.as_deref(), &self.cfg.outputs) {
            return self.refuse(&reply, s.id.clone(), format!("speak: {e}"));
        }
        let d = &self.cfg.daemon;
        let chimes = self
            .chime_for("chime", s.chime.as_ref(), d.chime.as_deref())
            .and_then(|c| {
                let after = self.chime_for(
                    "chime_after",
                    s.chime_after.as_ref(),
                    d.chime_after.as_deref(),
                )?;
                Ok((c, after))
            });
        let (chime, chime_after) = match chimes {
            Ok(c) => c,
            Err(reason) => return self.refuse(&reply, s.id.clone(), format!("speak: {reason}")),
        };
        let source = if s.cache && self.presets.is_some() {
            JobSource::Cached { pinned: false }
        } else {
            JobSource::Live
        };
        let new = NewJob {
            id: s.id,
            text: s.text,
            voice,
            priority: s.priority,
            reply,
            source,
            preset: None,
            volume: s.volume,
            queued_at: Instant::now(),
            expires_in: s.expires_in_s.or(self.cfg.daemon.default_expiry_s),
            to: s.to,
            chime,
            chime_after,
            fallback: s.fallback.unwrap_or(true),
        };
        self.admit(new, playing)
    }

    /// Answers a request that is not accepted (counted as a failure).
    fn refuse(
        &mut self,
        reply: &Arc<dyn ReplyTo>,
        id: Option<String>,
        reason: String,
    ) -> Option<Preempt> {
        self.stats.failed();
        reply.send(Reply::Failed { id, reason });
        None
    }

    /// Queues a job whose request was validated, or refuses it with the queue's reason.
    fn admit(&mut self, new: NewJob, playing: Option<&Job>) -> Option<Preempt> {
        if self.stopping.is_some() {
            let id = new.id.clone();
            return self.refuse(&new.reply, id, "the daemon is stopping".into());
        }
        let (reply, id) = (new.reply.clone(), new.id.clone());
        match self.queue.admit(new, playing, self.cfg.daemon.queue_size) {
            Ok(a) => {
                self.stats.accepted();
                reply.send(Reply::Queued {
                    id: a.id.clone(),
                    position: a.position,
                });
                a.preempts.then_some(Preempt::Interrupted(a.id))
            }
            // The id belongs to the other job: the refusal names none.
            Err(r @ Refusal::IdInUse { .. }) => self.refuse(&reply, None, r.to_string()),
            Err(r) => self.refuse(&reply, id, r.to_string()),
        }
    }

    /// A preset press (socket `preset`, `herald press`, or a button): applies the
    /// `while_playing` rule, then queues the preset like a `speak` job that plays through
    /// the cache.
    fn press(
        &mut self,
        p: PresetRequest,
        reply: Arc<dyn ReplyTo>,
        playing: Option<&Job>,
    ) -> Option<Preempt> {
        let Some(req) = self.preset_reqs.get(&p.name).cloned() else {
            let reason = format!(
                "preset: unknown preset '{}' ({})",
                p.name,
                self.known_presets()
            );
            return self.refuse(&reply, p.id.clone(), reason);
        };
        let rule = p.while_playing.unwrap_or_else(|| self.button_rule(&p.name));
        let preset_cfg = self.cfg.presets.get(&p.name);
        let priority = preset_cfg.and_then(|c| c.priority).unwrap_or_default();
        let volume = p.volume.or(preset_cfg.and_then(|c| c.volume));
        let to = p.to.clone().or(preset_cfg.and_then(|c| c.to.clone()));
        if let Err(e) = crate::outputs::check_to(to.as_deref(), &self.cfg.outputs) {
            return self.refuse(&reply, p.id.clone(), format!("preset: {e}"));
        }
        // The press's (a button's) chime, else the preset's, else the daemon's.
        let d = &self.cfg.daemon;
        let own = p
            .chime
            .as_ref()
            .or(preset_cfg.and_then(|c| c.chime.as_ref()));
        let own_after = preset_cfg.and_then(|c| c.chime_after.as_ref());
        let chimes = self
            .chime_for("chime", own, d.chime.as_deref())
            .and_then(|c| {
                Ok((
                    c,
                    self.chime_for("chime_after", own_after, d.chime_after.as_deref())?,
                ))
            });
        let (chime, chime_after) = match chimes {
            Ok(c) => c,
            Err(reason) => return self.refuse(&reply, p.id.clone(), format!("preset: {reason}")),
        };
        let priority = match queue::press(rule, &p.name, priority, playing, &self.queue) {
            Press::AlreadyThere(id) => {
                tracing::info!(preset = %p.name, %id, "press ignored: the preset is playing or queued");
                reply.send(Reply::Ok {
                    cmd: OkCommand::Preset,
                    jobs: vec![id],
                    forgotten: None,
                });
                return None;
            }
            Press::Queue(priority) => priority,
        };
        let source = if self.presets.is_some() {
            JobSource::Cached { pinned: true }
        } else {
            JobSource::Live
        };
        let new = NewJob {
            id: p.id,
            voice: Voice::from(&req),
            text: req.input,
            priority,
            reply,
            source,
            // A press must be heard: an unrendered preset speaks locally when it must.
            preset: Some(p.name),
            volume,
            queued_at: Instant::now(),
            expires_in: p.expires_in_s.or(self.cfg.daemon.default_expiry_s),
            to,
            chime,
            chime_after,
            fallback: true,
        };
        self.admit(new, playing)
    }

    /// The chime a job asks for (`field`: `chime` or `chime_after`), over `default`; an
    /// unknown name is refused, naming the field and the configured chimes.
    fn chime_for(
        &self,
        field: &str,
        choice: Option<&ChimeChoice>,
        default: Option<&str>,
    ) -> Result<Option<String>, String> {
        crate::chimes::pick(choice, default, self.cfg.chimes.keys())
            .map(|n| n.map(str::to_string))
            .map_err(|e| format!("{field}: {e}"))
    }

    /// The `while_playing` rule of the button that plays preset `name` (default: ignore).
    fn button_rule(&self, name: &str) -> crate::protocol::WhilePlaying {
        self.cfg
            .buttons
            .iter()
            .find(|b| b.preset == name)
            .map(|b| b.while_playing)
            .unwrap_or_default()
    }

    fn known_presets(&self) -> String {
        if self.preset_reqs.is_empty() {
            "none are configured; add [presets.NAME] to the config".to_string()
        } else {
            let names: Vec<&str> = self.preset_reqs.keys().map(String::as_str).collect();
            format!("known presets: {}", names.join(", "))
        }
    }

    /// Every preset's cache state, for `presets` and `status`.
    fn preset_infos(&self) -> Vec<crate::protocol::PresetInfo> {
        let rendered = self.presets.as_ref().map(|p| p.renderer.status());
        stats::preset_infos(
            &self.preset_reqs,
            rendered.as_deref(),
            self.cache_error.as_deref(),
        )
    }

    /// Why preset `name` is not cached, if its rendering failed.
    fn render_failure(&self, name: &str) -> Option<String> {
        let p = self.presets.as_ref()?;
        p.renderer
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .and_then(|s| match s.state {
                crate::presets::PresetState::Failed { reason, .. } => Some(reason),
                _ => None,
            })
    }

    /// The request's voice settings over the configured defaults, validated.
    fn voice_for(&self, s: &SpeakRequest) -> Result<Voice, String> {
        crate::text::validate(&s.text, self.cfg.speech.max_text_chars)
            .map_err(|e| e.to_string())?;
        let voice = self.cfg.default_voice().with(
            s.model.clone(),
            s.voice.clone(),
            s.format,
            s.speed,
            s.instructions.clone(),
        );
        voice
            .request("check".into())
            .validate()
            .map_err(|e| e.to_string())?;
        Ok(voice)
    }

    fn end_cancelled(&mut self, job: &Job, by: CancelledBy) {
        self.stats.cancelled();
        tracing::info!(id = %job.id, by = %by, "job cancelled");
        job.reply.send(Reply::Cancelled {
            id: job.id.clone(),
            by,
        });
    }

    fn end_expired(&mut self, job: &Job) {
        self.stats.expired();
        let waited = job.queued_at.elapsed();
        let reason = format!(
            "still queued {:.1} s after it was accepted (expires_in_s = {}): dropped without playing",
            waited.as_secs_f64(),
            job.expires_in.map_or("none".to_string(), |e| e.to_string()),
        );
        tracing::info!(id = %job.id, %reason, "job expired");
        job.reply.send(Reply::Expired {
            id: job.id.clone(),
            reason,
            waited_ms: stats::ms(waited),
        });
    }

    fn end_failed(&mut self, job: &Job, reason: String) {
        self.stats.failed();
        tracing::warn!(id = %job.id, %reason, "job failed");
        job.reply.send(Reply::Failed {
            id: Some(job.id.clone()),
            reason,
        });
    }

    fn set_status(&self) {
        match self.device.error() {
            Some(e) => self.notifier.status(&format!("device error: {e}")),
            None => self.notifier.status("idle"),
        }
    }

    fn status(&self) -> StatusReport {
        let state = if self.stats.current.is_some() {
            DaemonState::Speaking
        } else if self.device.error().is_some() {
            DaemonState::DeviceError
        } else {
            DaemonState::Idle
        };
        let api_base = crate::tts::openai::redact_userinfo(&self.cfg.api.api_base);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            state,
            device: self.local_device().status(),
            outputs: self.output_statuses(),
            queue_length: self.queue.len(),
            queue: stats::queued(self.queue.iter().take(STATUS_QUEUE_MAX)),
            now_playing: self.stats.now_playing(),
            counters: self.stats.counters(),
            network: self.net.status(api_base),
            network_model: self.learned(),
            presets: self.preset_infos(),
            max_volume: self
                .cfg
                .volume_policy()
                .max_at(crate::volume::local_time_of_day())
                .get(),
        }
    }
}

impl Scheduler {
    /// Learns how a finished job's audio arrived, when it came over the network (cached
    /// audio arrives at once and says nothing about it), and saves the model.
    fn learn(&mut self, job: &Job, report: &SpeakReport) {
        // The cache's audio and the local voice's say nothing about the network.
        if report.attempts == 0 || report.fallback.is_some() {
            return;
        }
        let key = store::key(&self.cfg.api.api_base, job.voice.format);
        let audio_ms = report.audio.as_secs_f64() * 1000.0;
        self.model.learn(&key, &report.bursts, audio_ms);
        let warned = self.model_unsaved.clone();
        self.save_model(move |saved| {
            if let Err(e) = saved {
                if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("{e}; the network model is kept in memory");
                }
            }
        });
    }

    /// How the job's playout starts: by what was learned on its endpoint and format, once
    /// enough was (`None`: the fixed rules).
    fn plan_for(&self, job: &Job) -> Option<crate::netmodel::StartPlan> {
        let key = store::key(&self.cfg.api.api_base, job.voice.format);
        self.model.model(&key).plan(self.cfg.audio.start_quantile)
    }

    /// `reset_network_model`: forgets everything learned and saves the empty model; the
    /// `ok` (with how many endpoints and formats were forgotten) is sent once it is saved.
    fn reset_model(&mut self, reply: Arc<dyn ReplyTo>) {
        let forgotten = self.model.models().len();
        self.model.reset();
        tracing::info!(forgotten, "network model reset: learning starts afresh");
        self.save_model(move |saved| {
            reply.send(match saved {
                Ok(()) => Reply::Ok {
                    cmd: OkCommand::ResetNetworkModel,
                    jobs: Vec::new(),
                    forgotten: Some(forgotten),
                },
                Err(e) => Reply::Failed {
                    id: None,
                    reason: format!(
                        "reset_network_model: forgotten in memory, but {e}: the old model comes back when herald restarts"
                    ),
                },
            })
        });
    }

    /// Saves a snapshot of the model off the runtime (an SD card write must not hold the
    /// scheduler), then hands `done` the outcome on the blocking thread.
    fn save_model(&self, done: impl FnOnce(Result<(), store::StoreError>) + Send + 'static) {
        let snapshot = self.model.clone();
        tokio::task::spawn_blocking(move || done(snapshot.save()));
    }

    /// What was learned, for `status`.
    fn learned(&self) -> Vec<crate::protocol::LearnedNetwork> {
        self.model
            .models()
            .iter()
            .map(|(key, m)| crate::protocol::LearnedNetwork {
                key: key.clone(),
                summary: m.summary(self.cfg.audio.start_quantile),
            })
            .collect()
    }
}

/// Every configured preset's request with the `[speech]` defaults applied. The config was
/// validated when loaded (with the same function), so this fails only on a bug: logged.
/// Decodes the configured chimes; an unusable file is a warning naming it, and its jobs
/// play without it (and say so).
fn load_chimes(cfg: &Config) -> ChimeSet {
    let chimes = ChimeSet::load(&cfg.chimes, cfg.audio.rate);
    for problem in chimes.problems() {
        tracing::warn!("{problem}; jobs that ask for it play without it");
    }
    chimes
}

fn preset_requests(cfg: &Config) -> BTreeMap<String, SpeechRequest> {
    crate::presets::requests(&cfg.presets, &cfg.default_voice()).unwrap_or_else(|e| {
        tracing::error!("{e}");
        BTreeMap::new()
    })
}
