//! The daemon's scheduler: one task that owns the announcement queue and the audio device.
//!
//! Requests arrive as [`Command`]s from the control server, each with a [`Replier`] for its
//! connection. Jobs play one at a time through `pipeline::speak`; while one plays the task
//! keeps serving commands, so `skip`, `stop`, `cancel` and `interrupt` jobs take effect at
//! once (the speak future is dropped and the playout fades out in ≤ 20 ms). Every accepted
//! job ends in exactly one terminal reply. A failing device fails the job that was playing;
//! the device is reopened with backoff, and the daemon never exits for it.
//!
//! Presets (`preset` requests and buttons) and `"cache": true` requests play through the
//! audio cache (`CachingSource`) instead of the plain client; the [`Presets`] renderer keeps
//! every configured preset rendered in the background and is updated on reload.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::audio::alsa::AlsaSink;
use crate::audio::playout::{Playout, PlayoutError, RealtimeStatus};
use crate::audio::{DeviceFormat, Sink, SinkError};
use crate::config::Config;
use crate::pipeline::{self, Limits, PipelineError, Voice};
use crate::presets::{PresetState, Renderer};
use crate::protocol::{
    Counters, DeviceStatus, Envelope, NetworkStatus, NowPlaying, PresetInfo, PresetRequest,
    Priority, QueuedJob, Reply, ReplyTo, Request, SpeakRequest, StatusReport, WhilePlaying,
};
use crate::systemd::Notifier;
use crate::tts::cache::{AudioCache, CachingSource};
use crate::tts::openai::OpenAiClient;
use crate::tts::{OpenFuture, SpeechRequest, SpeechSource};

/// Time-to-first-audio samples kept for the percentiles.
const TTFA_WINDOW: usize = 200;
/// How often a playing job checks whether its first audio reached the device.
const START_POLL: Duration = Duration::from_millis(10);
/// A device write blocked this long means the audio thread is stuck (watchdog).
const WRITE_STUCK: Duration = Duration::from_secs(5);
/// Longest wait for an interrupt's fade-out before giving up on the device.
const FADE_WAIT: Duration = Duration::from_secs(1);
/// Reopen backoff after a device failure: first wait and cap.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// reqwest keeps idle connections this long (see `OpenAiClient::new`).
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Waiting jobs listed in a status reply (the length is always given).
const STATUS_QUEUE_MAX: usize = 100;
/// Characters of text shown in status and logs.
const PREVIEW_CHARS: usize = 40;

/// What the watchdog learns from a liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The audio thread is not stuck in a device write (or no device is open).
    pub audio_ok: bool,
}

/// Messages to the scheduler.
#[derive(Debug)]
pub enum Command {
    /// Liveness probe for the watchdog.
    Ping(oneshot::Sender<Health>),
    /// A reloaded config (and a client built from it, if the API settings changed).
    Reload {
        /// The new config.
        config: Box<Config>,
        /// A new API client, when `[api]` changed.
        client: Option<OpenAiClient>,
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

/// Observes the device from inside the audio thread without allocating or locking: when
/// the first non-silent period of a job is written, and whether a write is stuck.
#[derive(Debug)]
struct Meter {
    base: Instant,
    armed: AtomicBool,
    /// Nanoseconds after `base` of the first audible period (0 = not yet).
    first_audio_ns: AtomicU64,
    /// Nanoseconds after `base` when the current write began (0 = not writing).
    write_began_ns: AtomicU64,
}

impl Meter {
    fn new() -> Self {
        Meter {
            base: Instant::now(),
            armed: AtomicBool::new(false),
            first_audio_ns: AtomicU64::new(0),
            write_began_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn arm(&self) {
        self.first_audio_ns.store(0, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    fn first_audio(&self) -> Option<Instant> {
        match self.first_audio_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }

    fn stuck(&self) -> bool {
        match self.write_began_ns.load(Ordering::Acquire) {
            0 => false,
            ns => self.now_ns().saturating_sub(ns) > WRITE_STUCK.as_nanos() as u64,
        }
    }
}

/// The device sink with a [`Meter`] around it.
struct MeteredSink {
    inner: Box<dyn Sink>,
    meter: Arc<Meter>,
}

impl Sink for MeteredSink {
    fn format(&self) -> DeviceFormat {
        self.inner.format()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        let now = self.meter.now_ns();
        // Lead-in and stall silence are all zeros; the voice is the first period that is not.
        if self.meter.armed.load(Ordering::Acquire) && period.iter().any(|&s| s != 0) {
            self.meter.armed.store(false, Ordering::Release);
            self.meter.first_audio_ns.store(now, Ordering::Release);
        }
        self.meter.write_began_ns.store(now, Ordering::Release);
        let r = self.inner.write(period);
        self.meter.write_began_ns.store(0, Ordering::Release);
        r
    }
    fn drain(&mut self) -> Result<(), SinkError> {
        self.meter
            .write_began_ns
            .store(self.meter.now_ns(), Ordering::Release);
        let r = self.inner.drain();
        self.meter.write_began_ns.store(0, Ordering::Release);
        r
    }
    fn is_clocked(&self) -> bool {
        self.inner.is_clocked()
    }
    fn xruns(&self) -> u64 {
        self.inner.xruns()
    }
    fn queued_frames(&mut self) -> Option<u64> {
        self.inner.queued_frames()
    }
}

/// Delays the first audio of a freshly opened device until `until`, so the device plays
/// at least the lead-in's silence first; the request itself is sent at once.
struct LeadInSource {
    inner: Arc<dyn SpeechSource>,
    until: tokio::time::Instant,
}

impl SpeechSource for LeadInSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(async move {
            let r = self.inner.open(req).await;
            sleep_until(self.until).await;
            r
        })
    }
}

/// Opens through the cache with presets' audio pinned (never evicted while configured).
struct PinnedSource(CachingSource);

impl SpeechSource for PinnedSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(self.0.open_cached(req, true))
    }
}

/// The audio cache and the preset renderer, when the cache directory is usable.
#[derive(Debug, Clone)]
pub struct Presets {
    /// Keeps every preset rendered; its source is the cache-first source.
    pub renderer: Arc<Renderer>,
}

impl Presets {
    /// A renderer over `cache`, fetching through `client` (requests go to `api_base`).
    pub fn new(cache: Arc<AudioCache>, client: &OpenAiClient, api_base: &str) -> Self {
        let source = CachingSource::new(Arc::new(client.clone()), cache, api_base);
        Presets {
            renderer: Arc::new(Renderer::new(source, Default::default())),
        }
    }
}

/// Where a job's audio comes from.
#[derive(Clone)]
enum JobSource {
    /// Straight from the API.
    Live,
    /// Cache first, storing what is fetched (`pinned` for presets).
    Cached { pinned: bool },
}

/// The open device.
struct Device {
    playout: Playout,
    meter: Arc<Meter>,
    opened_at: Instant,
}

struct Job {
    id: String,
    text: String,
    voice: Voice,
    priority: Priority,
    reply: Arc<dyn ReplyTo>,
    source: JobSource,
    /// The preset this job plays, if any.
    preset: Option<String>,
}

/// What ended a playing job early.
enum Preempt {
    /// `cancel`, `skip`, `stop` or shutdown.
    Cancelled(&'static str),
    /// An `interrupt` job (its id), already at the front of the queue.
    Interrupted(String),
}

/// API health seen by jobs and the keep-alive.
#[derive(Debug, Default)]
struct NetState {
    last_ok: Option<Instant>,
    last_error: Option<String>,
    last_use: Option<Instant>,
}

/// The scheduler task's state.
pub struct Scheduler {
    cfg: Config,
    client: OpenAiClient,
    rx: mpsc::Receiver<Command>,
    requests: mpsc::Receiver<Envelope>,
    queue: VecDeque<Job>,
    device: Option<Device>,
    device_error: Option<String>,
    device_stale: bool,
    retry_at: Option<Instant>,
    retry_wait: Duration,
    last_activity: Instant,
    current: Option<(String, String, Instant)>,
    counters: Counters,
    ttfa: VecDeque<u64>,
    next_id: u64,
    started: Instant,
    net: Arc<Mutex<NetState>>,
    notifier: Notifier,
    realtime: String,
    stopping: Option<oneshot::Sender<()>>,
    presets: Option<Presets>,
    /// Every configured preset's request (the `[speech]` defaults applied).
    preset_reqs: BTreeMap<String, SpeechRequest>,
    /// Why there is no cache (presets then play live).
    cache_error: Option<String>,
}

impl Scheduler {
    /// Starts the scheduler task with the audio cache and preset renderer (or why there is
    /// none), and starts rendering the configured presets in the background. The returned
    /// handle feeds it commands; the join handle tells when the task ended (after a
    /// shutdown, or if it panicked: a bug).
    pub fn spawn(
        cfg: Config,
        client: OpenAiClient,
        notifier: Notifier,
        presets: Result<Presets, String>,
    ) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let (req_tx, requests) = mpsc::channel(256);
        let preset_reqs = preset_requests(&cfg);
        let (presets, cache_error) = match presets {
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
            presets,
            preset_reqs,
            cache_error,
            cfg,
            client,
            rx,
            requests,
            queue: VecDeque::new(),
            device: None,
            device_error: None,
            device_stale: false,
            retry_at: None,
            retry_wait: RETRY_FIRST,
            last_activity: Instant::now(),
            current: None,
            counters: Counters::default(),
            ttfa: VecDeque::new(),
            next_id: 0,
            started: Instant::now(),
            net: Arc::new(Mutex::new(NetState::default())),
            notifier,
            realtime: "unknown (the device has not been opened yet)".into(),
            stopping: None,
        };
        let task = tokio::spawn(s.run());
        (
            SchedulerHandle {
                tx,
                requests: req_tx,
            },
            task,
        )
    }

    async fn run(mut self) {
        // Warm the API connection at once, so the first announcement is fast.
        self.keepalive();
        loop {
            if let Some(done) = self.stopping.take() {
                self.close_device().await;
                let _ = done.send(());
                return;
            }
            if self.device_stale && self.device.is_some() {
                self.close_device().await;
            }
            if let Some(job) = self.queue.pop_front() {
                self.run_job(job).await;
                self.last_activity = Instant::now();
                if self.queue.is_empty() && self.stopping.is_none() {
                    self.set_status();
                }
                continue;
            }
            let idle = Duration::from_secs(self.cfg.daemon.idle_close_s);
            let close_at =
                (self.device.is_some() && !idle.is_zero()).then(|| self.last_activity + idle);
            let keepalive = Duration::from_secs(self.cfg.daemon.keepalive_s);
            let warm_at = (!keepalive.is_zero()).then(|| {
                let last = self.net.lock().ok().and_then(|n| n.last_use);
                last.unwrap_or(self.started) + keepalive
            });
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        self.handle(cmd, None);
                    }
                    None => {
                        self.close_device().await;
                        return;
                    }
                },
                Some(env) = self.requests.recv() => {
                    self.handle_request(env, None);
                }
                _ = sleep_until(close_at.unwrap_or(self.started).into()), if close_at.is_some() => {
                    tracing::info!("closing the audio device after {} s idle", idle.as_secs());
                    self.close_device().await;
                }
                _ = sleep_until(self.retry_at.unwrap_or(self.started).into()), if self.retry_at.is_some() => {
                    self.retry_device().await;
                }
                _ = sleep_until(warm_at.unwrap_or(self.started).into()), if warm_at.is_some() => {
                    self.keepalive();
                }
            }
        }
    }

    /// Refreshes the API connection in the background (never delays a job).
    fn keepalive(&mut self) {
        if self.cfg.daemon.keepalive_s == 0 {
            return;
        }
        let client = self.client.clone();
        let net = self.net.clone();
        if let Ok(mut n) = net.lock() {
            n.last_use = Some(Instant::now());
        }
        tokio::spawn(async move {
            let r = client.warm().await;
            if let Ok(mut n) = net.lock() {
                match r {
                    Ok(()) => {
                        n.last_ok = Some(Instant::now());
                        n.last_error = None;
                    }
                    Err(e) => {
                        tracing::warn!("keep-alive request to the API failed: {e}");
                        n.last_error = Some(e.to_string());
                    }
                }
            }
        });
    }

    /// Handles one command. `playing` is the job on the device, if any; returns how it
    /// must end when the command preempts it.
    fn handle(&mut self, cmd: Command, playing: Option<&Job>) -> Option<Preempt> {
        match cmd {
            Command::Ping(tx) => {
                let audio_ok = self.device.as_ref().is_none_or(|d| !d.meter.stuck());
                let _ = tx.send(Health { audio_ok });
                None
            }
            Command::Reload { config, client } => {
                if config.audio != self.cfg.audio {
                    // Reopened with the new settings once it is free.
                    self.device_stale = true;
                }
                if config.cache != self.cfg.cache {
                    tracing::warn!("[cache] changes take effect at the next restart");
                }
                self.cfg = *config;
                if let Some(c) = client {
                    if let Some(p) = &self.presets {
                        let cache = p.renderer.source().cache().clone();
                        p.renderer.replace_source(CachingSource::new(
                            Arc::new(c.clone()),
                            cache,
                            &self.cfg.api.api_base,
                        ));
                    }
                    self.client = c;
                }
                self.preset_reqs = preset_requests(&self.cfg);
                if let Some(p) = &self.presets {
                    let summary = p.renderer.update(&self.preset_reqs);
                    tracing::info!(
                        rendering = ?summary.rendering,
                        removed = ?summary.removed,
                        "presets updated"
                    );
                }
                tracing::info!("configuration reloaded; the queue is kept");
                None
            }
            Command::Shutdown(done) => {
                self.stopping = Some(done);
                for job in std::mem::take(&mut self.queue) {
                    self.end_cancelled(&job, "shutdown");
                }
                playing.map(|_| Preempt::Cancelled("shutdown"))
            }
        }
    }

    /// Handles one client request, like [`Self::handle`].
    fn handle_request(&mut self, env: Envelope, playing: Option<&Job>) -> Option<Preempt> {
        self.counters.requests += 1;
        match env.req {
            Err(e) => {
                self.counters.failed += 1;
                env.reply.send(Reply::Failed {
                    id: None,
                    reason: e.to_string(),
                });
                None
            }
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
                    cmd: "skip".into(),
                    jobs,
                });
                playing.map(|_| Preempt::Cancelled("skip"))
            }
            Request::Stop => {
                let mut jobs: Vec<String> = playing.map(|j| j.id.clone()).into_iter().collect();
                for job in std::mem::take(&mut self.queue) {
                    jobs.push(job.id.clone());
                    self.end_cancelled(&job, "stop");
                }
                reply.send(Reply::Ok {
                    cmd: "stop".into(),
                    jobs,
                });
                playing.map(|_| Preempt::Cancelled("stop"))
            }
            Request::Cancel { id } => {
                if let Some(pos) = self.queue.iter().position(|j| j.id == id) {
                    if let Some(job) = self.queue.remove(pos) {
                        self.end_cancelled(&job, "cancel");
                    }
                    reply.send(Reply::Ok {
                        cmd: "cancel".into(),
                        jobs: vec![id],
                    });
                    None
                } else if playing.is_some_and(|j| j.id == id) {
                    reply.send(Reply::Ok {
                        cmd: "cancel".into(),
                        jobs: vec![id],
                    });
                    Some(Preempt::Cancelled("cancel"))
                } else {
                    self.counters.failed += 1;
                    reply.send(Reply::Failed {
                        id: None,
                        reason: format!("cancel: no queued or playing job has id '{id}'"),
                    });
                    None
                }
            }
        }
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
        let source = if s.cache && self.presets.is_some() {
            JobSource::Cached { pinned: false }
        } else {
            JobSource::Live
        };
        self.admit(s, voice, source, None, reply, playing)
    }

    /// Answers a request that is not accepted (counted as a failure).
    fn refuse(
        &mut self,
        reply: &Arc<dyn ReplyTo>,
        id: Option<String>,
        reason: String,
    ) -> Option<Preempt> {
        self.counters.failed += 1;
        reply.send(Reply::Failed { id, reason });
        None
    }

    /// Queues a job whose request was validated.
    fn admit(
        &mut self,
        s: SpeakRequest,
        voice: Voice,
        source: JobSource,
        preset: Option<String>,
        reply: Arc<dyn ReplyTo>,
        playing: Option<&Job>,
    ) -> Option<Preempt> {
        if let Some(id) = &s.id {
            if self.queue.iter().any(|j| &j.id == id) || playing.is_some_and(|j| &j.id == id) {
                return self.refuse(
                    &reply,
                    None,
                    format!("id '{id}' is already in use by a queued or playing job (ids must be unique among live jobs)"),
                );
            }
        }
        if self.stopping.is_some() {
            return self.refuse(&reply, s.id.clone(), "the daemon is stopping".into());
        }
        let limit = self.cfg.daemon.queue_size;
        if self.queue.len() >= limit {
            return self.refuse(
                &reply,
                s.id.clone(),
                format!(
                    "the queue is full ({} jobs waiting; queue_size = {limit}): try again later",
                    self.queue.len()
                ),
            );
        }
        let id = s.id.clone().unwrap_or_else(|| {
            self.next_id += 1;
            format!("j{}", self.next_id)
        });
        self.counters.accepted += 1;
        let position = match s.priority {
            Priority::Normal => self.queue.len(),
            Priority::High => self
                .queue
                .iter()
                .position(|j| j.priority == Priority::Normal)
                .unwrap_or(self.queue.len()),
            Priority::Interrupt => 0,
        };
        reply.send(Reply::Queued {
            id: id.clone(),
            position,
        });
        self.queue.insert(
            position,
            Job {
                id: id.clone(),
                text: s.text,
                voice,
                priority: s.priority,
                reply,
                source,
                preset,
            },
        );
        (s.priority == Priority::Interrupt && playing.is_some()).then_some(Preempt::Interrupted(id))
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
            self.counters.failed += 1;
            let known = if self.preset_reqs.is_empty() {
                "none are configured; add [presets.NAME] to the config".to_string()
            } else {
                format!(
                    "known presets: {}",
                    self.preset_reqs
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            reply.send(Reply::Failed {
                id: p.id.clone(),
                reason: format!("preset: unknown preset '{}' ({known})", p.name),
            });
            return None;
        };
        let rule = p.while_playing.unwrap_or_else(|| {
            self.cfg
                .buttons
                .iter()
                .find(|b| b.preset == p.name)
                .map(|b| b.while_playing)
                .unwrap_or_default()
        });
        let same_playing = playing.filter(|j| j.preset.as_deref() == Some(p.name.as_str()));
        let same_queued = self
            .queue
            .iter()
            .find(|j| j.preset.as_deref() == Some(p.name.as_str()))
            .map(|j| j.id.clone());
        let cfg = self.cfg.presets.get(&p.name);
        let mut priority = match cfg.and_then(|c| c.priority.as_deref()) {
            Some("high") => Priority::High,
            Some("interrupt") => Priority::Interrupt,
            _ => Priority::Normal,
        };
        match (rule, same_playing) {
            (WhilePlaying::Ignore, Some(j)) => {
                tracing::info!(preset = %p.name, id = %j.id, "press ignored: the preset is playing");
                reply.send(Reply::Ok {
                    cmd: "preset".into(),
                    jobs: vec![j.id.clone()],
                });
                return None;
            }
            // Played again from the start: cut the current one like an interrupt.
            (WhilePlaying::Restart, Some(_)) => priority = Priority::Interrupt,
            _ => {}
        }
        if rule != WhilePlaying::Queue {
            if let Some(id) = same_queued {
                // It is about to play from the start anyway.
                tracing::info!(preset = %p.name, %id, "press ignored: the preset is queued");
                reply.send(Reply::Ok {
                    cmd: "preset".into(),
                    jobs: vec![id],
                });
                return None;
            }
        }
        let voice = Voice::from(&req);
        let source = if self.presets.is_some() {
            JobSource::Cached { pinned: true }
        } else {
            JobSource::Live
        };
        let s = SpeakRequest {
            text: req.input,
            priority,
            id: p.id,
            ..SpeakRequest::default()
        };
        self.admit(s, voice, source, Some(p.name), reply, playing)
    }

    /// Every preset's cache state, for `presets` and `status`.
    fn preset_infos(&self) -> Vec<PresetInfo> {
        let states: BTreeMap<String, PresetState> = self
            .presets
            .as_ref()
            .map(|p| {
                p.renderer
                    .status()
                    .into_iter()
                    .map(|s| (s.name, s.state))
                    .collect()
            })
            .unwrap_or_default();
        self.preset_reqs
            .iter()
            .map(|(name, req)| {
                let (state, reason, retry_in_s) = match states.get(name) {
                    Some(PresetState::Pending) => ("pending", None, None),
                    Some(PresetState::Rendering) => ("rendering", None, None),
                    Some(PresetState::Cached) => ("cached", None, None),
                    Some(PresetState::Failed {
                        reason, next_retry, ..
                    }) => (
                        "failed",
                        Some(reason.clone()),
                        Some(
                            next_retry
                                .saturating_duration_since(Instant::now())
                                .as_secs(),
                        ),
                    ),
                    None => (
                        "uncached",
                        Some(
                            self.cache_error
                                .clone()
                                .unwrap_or_else(|| "not rendered yet".into()),
                        ),
                        None,
                    ),
                };
                PresetInfo {
                    name: name.clone(),
                    state: state.into(),
                    reason,
                    retry_in_s,
                    text: preview(&req.input),
                }
            })
            .collect()
    }

    /// Why preset `name` is not cached, if its rendering failed.
    fn render_failure(&self, name: &str) -> Option<String> {
        let p = self.presets.as_ref()?;
        p.renderer
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .and_then(|s| match s.state {
                PresetState::Failed { reason, .. } => Some(reason),
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

    fn end_cancelled(&mut self, job: &Job, by: &str) {
        self.counters.cancelled += 1;
        tracing::info!(id = %job.id, by, "job cancelled");
        job.reply.send(Reply::Cancelled {
            id: job.id.clone(),
            by: by.into(),
        });
    }

    fn end_failed(&mut self, job: &Job, reason: String) {
        self.counters.failed += 1;
        tracing::warn!(id = %job.id, %reason, "job failed");
        job.reply.send(Reply::Failed {
            id: Some(job.id.clone()),
            reason,
        });
    }

    async fn run_job(&mut self, job: Job) {
        // `started` counts from here, so opening the device (and its hook) is included.
        let t0 = Instant::now();
        self.notifier
            .status(&format!("speaking: {}", preview(&job.text)));
        let fresh = self.device.is_none();
        if fresh {
            if let Err(reason) = self.open_device().await {
                self.end_failed(&job, reason);
                return;
            }
        }
        let Some(mut dev) = self.device.take() else {
            return;
        };
        let lead_in = Duration::from_millis(u64::from(self.cfg.daemon.lead_in_ms));
        let source: Arc<dyn SpeechSource> = match (&job.source, &self.presets) {
            (JobSource::Cached { pinned: true }, Some(p)) => {
                Arc::new(PinnedSource(p.renderer.source()))
            }
            (JobSource::Cached { pinned: false }, Some(p)) => Arc::new(p.renderer.source()),
            _ => Arc::new(self.client.clone()),
        };
        let source: Arc<dyn SpeechSource> = if fresh && !lead_in.is_zero() {
            Arc::new(LeadInSource {
                inner: source,
                until: (dev.opened_at + lead_in).into(),
            })
        } else {
            source
        };
        if !lead_in.is_zero() {
            dev.playout.lead_in();
        }
        dev.meter.arm();
        if let Ok(mut n) = self.net.lock() {
            n.last_use = Some(Instant::now());
        }
        let limits = Limits {
            max_text_chars: self.cfg.speech.max_text_chars,
            lookahead: self.cfg.speech.lookahead,
        };
        self.current = Some((job.id.clone(), preview(&job.text), t0));
        let mut started_sent = false;
        let mut poll = tokio::time::interval(START_POLL);
        let meter = dev.meter.clone();
        let outcome = {
            let fut = pipeline::speak(source, &mut dev.playout, &job.text, &job.voice, limits);
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    r = &mut fut => break Ok(r),
                    _ = poll.tick(), if !started_sent => {
                        if let Some(at) = meter.first_audio() {
                            started_sent = true;
                            job.reply.send(Reply::Started {
                                id: job.id.clone(),
                                time_to_first_audio_ms: ms(at.saturating_duration_since(t0)),
                            });
                        }
                    }
                    cmd = self.rx.recv() => match cmd {
                        Some(cmd) => if let Some(p) = self.handle(cmd, Some(&job)) {
                            break Err(p);
                        },
                        // Every sender is gone: the daemon is exiting.
                        None => break Err(Preempt::Cancelled("shutdown")),
                    },
                    Some(env) = self.requests.recv() => if let Some(p) = self.handle_request(env, Some(&job)) {
                        break Err(p);
                    },
                }
            }
        };
        self.current = None;
        dev.playout.cancel_lead_in();
        match outcome {
            Ok(Ok(report)) => {
                if !started_sent {
                    // A short job on a fast device can end before the next poll: `started`
                    // still comes first.
                    let at = meter.first_audio().unwrap_or_else(Instant::now);
                    job.reply.send(Reply::Started {
                        id: job.id.clone(),
                        time_to_first_audio_ms: ms(at.saturating_duration_since(t0)),
                    });
                }
                self.device = Some(dev);
                self.device_error = None;
                if let Ok(mut n) = self.net.lock() {
                    n.last_ok = Some(Instant::now());
                    n.last_error = None;
                }
                let ttfa = report.time_to_first_audio.map(ms);
                if let Some(t) = ttfa {
                    if self.ttfa.len() == TTFA_WINDOW {
                        self.ttfa.pop_front();
                    }
                    self.ttfa.push_back(t);
                }
                self.counters.finished += 1;
                self.counters.stalls += u64::from(report.stalls);
                tracing::info!(
                    id = %job.id,
                    ttfa_ms = ttfa,
                    duration_ms = ms(report.audio),
                    stalls = report.stalls,
                    stall_ms = report.stall_ms,
                    bytes = report.bytes,
                    segments = report.segments,
                    attempts = report.attempts,
                    "job finished: {report}"
                );
                job.reply.send(Reply::Finished {
                    id: job.id.clone(),
                    time_to_first_audio_ms: ttfa,
                    duration_ms: ms(report.audio),
                    stalls: report.stalls,
                    stall_ms: report.stall_ms,
                    bytes: report.bytes,
                    segments: report.segments,
                    attempts: report.attempts,
                });
            }
            Ok(Err(e)) => {
                let device_lost = matches!(
                    e,
                    PipelineError::Playout(
                        PlayoutError::Device(_) | PlayoutError::Stopped | PlayoutError::Panicked
                    )
                );
                if let PipelineError::Tts { source, .. } = &e {
                    if let Ok(mut n) = self.net.lock() {
                        n.last_error = Some(source.to_string());
                    }
                }
                if device_lost {
                    let reason = format!("audio device failed: {e}");
                    self.device_failed(reason.clone(), Some(dev)).await;
                    self.end_failed(&job, reason);
                } else {
                    self.device = Some(dev);
                    let reason = match job.preset.as_deref().map(|n| (n, self.render_failure(n))) {
                        Some((name, Some(why))) => format!(
                            "preset '{name}' is not cached (rendering failed: {why}) and live synthesis failed too: {e}"
                        ),
                        Some((name, None)) => format!("preset '{name}': {e}"),
                        None => e.to_string(),
                    };
                    self.end_failed(&job, reason);
                }
            }
            Err(pre) => {
                // The speak future is gone; fade out whatever it left playing.
                match tokio::time::timeout(FADE_WAIT, dev.playout.interrupt()).await {
                    Ok(Ok(_)) | Ok(Err(PlayoutError::NoUtterance { .. })) => {
                        self.device = Some(dev)
                    }
                    Ok(Err(e)) => {
                        self.device_failed(format!("audio device failed: {e}"), Some(dev))
                            .await
                    }
                    Err(_) => {
                        self.device_failed(
                            "audio device did not finish a fade-out within 1 s".into(),
                            Some(dev),
                        )
                        .await
                    }
                }
                match pre {
                    Preempt::Cancelled(by) => self.end_cancelled(&job, by),
                    Preempt::Interrupted(by) => {
                        self.counters.cancelled += 1;
                        tracing::info!(id = %job.id, by = %by, "job interrupted");
                        job.reply.send(Reply::Interrupted {
                            id: job.id.clone(),
                            by,
                        });
                    }
                }
            }
        }
    }

    /// Runs the before-open hook, opens the device and starts the audio thread.
    async fn open_device(&mut self) -> Result<(), String> {
        run_hook(
            "hook_before_open",
            &self.cfg.daemon.hook_before_open,
            self.cfg.daemon.hook_timeout_ms,
        )
        .await;
        let name = self.cfg.audio.device.clone();
        let req = self.cfg.sink_request();
        let pcfg = self.cfg.playout();
        let opened = tokio::task::spawn_blocking(move || {
            let sink = AlsaSink::open(&name, &req).map_err(|e| e.to_string())?;
            let meter = Arc::new(Meter::new());
            let metered = MeteredSink {
                inner: Box::new(sink),
                meter: meter.clone(),
            };
            let playout = Playout::spawn(Box::new(metered), pcfg).map_err(|e| e.to_string())?;
            Ok::<_, String>((playout, meter))
        })
        .await
        .map_err(|e| format!("opening the audio device panicked: {e}"))
        .and_then(|r| r);
        match opened {
            Ok((playout, meter)) => {
                self.realtime = match playout.realtime() {
                    RealtimeStatus::NotRequested => "not requested".into(),
                    RealtimeStatus::Granted { priority } => {
                        format!("granted (SCHED_FIFO {priority})")
                    }
                    RealtimeStatus::Denied { priority, reason } => {
                        format!("denied (asked SCHED_FIFO {priority}): {reason}")
                    }
                };
                let f = playout.format();
                tracing::info!(
                    device = %self.cfg.audio.device,
                    rate = f.rate,
                    channels = f.channels,
                    period_frames = f.period_frames,
                    "audio device opened"
                );
                self.device = Some(Device {
                    playout,
                    meter,
                    opened_at: Instant::now(),
                });
                self.device_error = None;
                self.device_stale = false;
                self.retry_at = None;
                self.retry_wait = RETRY_FIRST;
                Ok(())
            }
            Err(reason) => {
                self.device_failed(reason.clone(), None).await;
                Err(reason)
            }
        }
    }

    /// Records a device failure, releases the device and schedules a reopen with backoff.
    async fn device_failed(&mut self, reason: String, dev: Option<Device>) {
        tracing::error!(%reason, "audio device error; retrying in {:?}", self.retry_wait);
        self.notifier.status(&format!("device error: {reason}"));
        if let Some(d) = dev {
            self.device = Some(d);
            self.close_device().await;
        }
        self.device_error = Some(reason);
        self.retry_at = Some(Instant::now() + self.retry_wait);
        self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
    }

    /// A background reopen attempt after a failure: success leaves the device open (it is
    /// closed again after `idle_close_s`).
    async fn retry_device(&mut self) {
        self.retry_at = None;
        if self.device.is_some() {
            return;
        }
        if self.open_device().await.is_ok() {
            tracing::info!("audio device is back");
            self.last_activity = Instant::now();
            self.set_status();
        }
    }

    async fn close_device(&mut self) {
        let Some(dev) = self.device.take() else {
            return;
        };
        let closed = tokio::task::spawn_blocking(move || dev.playout.shutdown()).await;
        if let Ok(Err(e)) = closed {
            tracing::warn!("closing the audio device: {e}");
        }
        run_hook(
            "hook_after_close",
            &self.cfg.daemon.hook_after_close,
            self.cfg.daemon.hook_timeout_ms,
        )
        .await;
    }

    fn set_status(&self) {
        match &self.device_error {
            Some(e) => self.notifier.status(&format!("device error: {e}")),
            None => self.notifier.status("idle"),
        }
    }

    fn status(&self) -> StatusReport {
        let format = self.device.as_ref().map(|d| d.playout.format());
        let mut sorted: Vec<u64> = self.ttfa.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: usize| -> Option<u64> {
            (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) * p / 100])
        };
        let mut counters = self.counters.clone();
        counters.ttfa_ms_p50 = pct(50);
        counters.ttfa_ms_p90 = pct(90);
        counters.ttfa_ms_p99 = pct(99);
        let network = {
            let n = self.net.lock();
            let (last_ok, last_error) = match &n {
                Ok(n) => (n.last_ok, n.last_error.clone()),
                Err(_) => (None, None),
            };
            NetworkStatus {
                api_base: crate::tts::openai::redact_userinfo(&self.cfg.api.api_base),
                last_ok_s_ago: last_ok.map(|t| t.elapsed().as_secs()),
                last_error,
                warm: last_ok.is_some_and(|t| t.elapsed() < POOL_IDLE),
            }
        };
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            state: if self.current.is_some() {
                "speaking".into()
            } else if self.device_error.is_some() {
                "device error".into()
            } else {
                "idle".into()
            },
            device: DeviceStatus {
                name: self.cfg.audio.device.clone(),
                open: format.is_some(),
                rate: format.map(|f| f.rate),
                channels: format.map(|f| f.channels),
                period_frames: format.map(|f| f.period_frames),
                error: self.device_error.clone(),
                realtime: self.realtime.clone(),
            },
            queue_length: self.queue.len(),
            queue: self
                .queue
                .iter()
                .take(STATUS_QUEUE_MAX)
                .map(|j| QueuedJob {
                    id: j.id.clone(),
                    priority: j.priority,
                    text: preview(&j.text),
                })
                .collect(),
            now_playing: self.current.as_ref().map(|(id, text, t0)| NowPlaying {
                id: id.clone(),
                text: text.clone(),
                elapsed_ms: ms(t0.elapsed()),
            }),
            counters,
            network,
            presets: self.preset_infos(),
        }
    }
}

/// Every configured preset's request with the `[speech]` defaults applied. The config was
/// validated when loaded, so a preset that still fails here is skipped with an error.
fn preset_requests(cfg: &Config) -> BTreeMap<String, SpeechRequest> {
    let defaults = cfg.default_voice();
    cfg.presets
        .iter()
        .filter_map(|(name, p)| match p.request(name, &defaults) {
            Ok(r) => Some((name.clone(), r)),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        })
        .collect()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first characters of `text`, on one line.
fn preview(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut p: String = one_line.chars().take(PREVIEW_CHARS).collect();
    if one_line.chars().count() > PREVIEW_CHARS {
        p.push('…');
    }
    p
}

/// Runs a hook (argv, no shell) and waits for it, killing it after `timeout_ms`. Failures
/// are logged: an amplifier script must not stop announcements.
async fn run_hook(name: &str, argv: &[String], timeout_ms: u64) {
    let Some((prog, args)) = argv.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = name, program = %prog, "cannot run hook: {e}");
            return;
        }
    };
    let timeout = Duration::from_millis(timeout_ms);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::debug!(hook = name, "hook ran")
        }
        Ok(Ok(out)) => tracing::warn!(hook = name, program = %prog, "hook failed: {}", out.status),
        Ok(Err(e)) => tracing::warn!(hook = name, program = %prog, "hook failed: {e}"),
        Err(_) => tracing::warn!(
            hook = name,
            program = %prog,
            "hook killed after {timeout_ms} ms (hook_timeout_ms)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_is_one_line_and_short() {
        assert_eq!(preview("a\nb  c"), "a b c");
        let p = preview(&"x".repeat(100));
        assert_eq!(p.chars().count(), PREVIEW_CHARS + 1);
    }
}
