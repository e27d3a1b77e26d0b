//! The scheduler's rules in-process, in milliseconds: queue order and priorities,
//! interrupt, cancel/skip/stop, preset presses, status while speaking, and a device that
//! hangs mid-announcement. A stand-in device clocked by wall time replaces the sound card
//! (there is none here) through the same `SinkOpener`/`Sink` seam ALSA uses, and a scripted
//! speech source replaces OpenAI through the `SpeechSource` seam. tests/daemon.rs keeps the
//! cases that need the real binary, socket and alsa-lib.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::audio::{DeviceFormat, Sink, SinkError, SinkOpener, SinkRequest};
use herald::config::Config;
use herald::protocol::{
    CancelledBy, DeviceState, Envelope, OkCommand, PresetRequest, Priority, Reply, ReplyTo,
    Request, SpeakRequest, StatusReport, WhilePlaying,
};
use herald::scheduler::{Parts, Scheduler, SchedulerHandle};
use herald::systemd::Notifier;
use herald::tts::{OpenFuture, SpeechRequest, SpeechSource, SpeechStream};
use tokio::sync::Notify;

const RATE: u32 = 24_000;
const PERIOD: usize = 240; // 10 ms
const GUARD: Duration = Duration::from_secs(20);

/// What the stand-in device saw, shared with the test.
#[derive(Default)]
struct DeviceLog {
    /// While set, a write blocks (a hung USB DAC) and opening fails as busy.
    hang: AtomicBool,
    opens: AtomicUsize,
    /// Non-zero frames played, in order (the audio the listener heard).
    heard: Mutex<Vec<i16>>,
}

/// Stands in for a sound card: plays `RATE` frames per wall-clock second from a 4-period
/// buffer, blocking in `write` while the buffer is full as ALSA's blocking write does.
struct StandInSink {
    log: Arc<DeviceLog>,
    /// When the device started playing, and frames written since.
    running: Option<(Instant, u64)>,
}

impl StandInSink {
    fn played(&self) -> u64 {
        self.running.map_or(0, |(t, _)| {
            (t.elapsed().as_secs_f64() * f64::from(RATE)) as u64
        })
    }
}

impl Sink for StandInSink {
    fn format(&self) -> DeviceFormat {
        DeviceFormat {
            rate: RATE,
            channels: 1,
            period_frames: PERIOD,
            buffer_frames: 4 * PERIOD,
        }
    }
    fn name(&self) -> &str {
        "stand-in"
    }
    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        while self.log.hang.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (start, written) = *self.running.get_or_insert((Instant::now(), 0));
        // Ran dry: the device restarts with this write.
        if self.played() > written {
            self.running = Some((Instant::now(), 0));
        }
        while self.running.map_or(0, |r| r.1) > self.played() + 3 * PERIOD as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = start;
        if let Some(r) = self.running.as_mut() {
            r.1 += period.len() as u64;
        }
        let mut heard = self.log.heard.lock().unwrap();
        heard.extend(period.iter().filter(|&&s| s != 0));
        Ok(())
    }
    fn drain(&mut self) -> Result<(), SinkError> {
        while self.running.is_some_and(|(_, w)| w > self.played()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.running = None;
        Ok(())
    }
}

struct StandInOpener(Arc<DeviceLog>);

impl SinkOpener for StandInOpener {
    fn open(&self, device: &str, _: &SinkRequest) -> Result<Box<dyn Sink>, SinkError> {
        if self.0.hang.load(Ordering::Acquire) {
            return Err(SinkError::Busy {
                device: device.into(),
            });
        }
        self.0.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(StandInSink {
            log: self.0.clone(),
            running: None,
        }))
    }
}

/// Stands in for OpenAI: answers every request with raw 24 kHz PCM of a tone whose length
/// in milliseconds is the text's last word ("Hello 300"), after 5 ms, in 100 ms chunks
/// 20 ms apart.
struct ScriptedSource;

impl SpeechSource for ScriptedSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let ms: usize = req
                .input
                .split_whitespace()
                .last()
                .and_then(|w| w.trim_end_matches('.').parse().ok())
                .unwrap_or(200);
            let frames = RATE as usize * ms / 1000;
            let mut pcm = Vec::with_capacity(frames * 2);
            for i in 0..frames {
                let s = if (i / 30) % 2 == 0 { 6000i16 } else { -6000 };
                pcm.extend_from_slice(&s.to_le_bytes());
            }
            // 100 ms chunks, 20 ms apart: generated at 5× real time, as OpenAI's pcm arrives.
            let chunks: Vec<Bytes> = pcm
                .chunks(RATE as usize / 10 * 2)
                .map(Bytes::copy_from_slice)
                .collect();
            let body =
                futures_util::stream::unfold(chunks.into_iter().enumerate(), |mut it| async move {
                    let (i, c) = it.next()?;
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some((Ok(c), it))
                });
            Ok(SpeechStream {
                body: Box::pin(body),
                attempts: 1,
                time_to_first_byte: Duration::from_millis(5),
            })
        })
    }
}

/// Collects one client's replies.
#[derive(Debug, Default)]
struct Client {
    replies: Mutex<Vec<Reply>>,
    more: Notify,
}

impl ReplyTo for Client {
    fn send(&self, reply: Reply) {
        self.replies.lock().unwrap().push(reply);
        self.more.notify_waiters();
    }
}

impl Client {
    /// Waits until a reply matches `want`; returns it.
    async fn wait(&self, what: &str, want: impl Fn(&Reply) -> bool) -> Reply {
        let until = Instant::now() + GUARD;
        loop {
            let notified = self.more.notified();
            if let Some(r) = self.replies.lock().unwrap().iter().find(|r| want(r)) {
                return r.clone();
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what}: {:?}",
                self.replies.lock().unwrap()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    async fn terminal(&self, id: &str) -> Reply {
        self.wait(&format!("end of {id}"), |r| {
            r.is_terminal() && r.job_id() == Some(id)
        })
        .await
    }

    /// Ids of the jobs that finished, in the order they finished.
    fn finished(&self) -> Vec<String> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                Reply::Finished { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

struct Rig {
    sched: SchedulerHandle,
    log: Arc<DeviceLog>,
    client: Arc<Client>,
}

impl Rig {
    fn start(extra: &str) -> Rig {
        let src = format!(
            "[speech]\nformat = \"pcm\"\n[audio]\njitter_reserve_ms = 0\nmin_prebuffer_ms = 20\nwrite_timeout_ms = 1100\n[daemon]\nlead_in_ms = 0\nkeepalive_s = 0\nidle_close_s = 0\n{extra}"
        );
        let (cfg, _) = Config::parse(&src, std::path::Path::new("test.toml")).unwrap();
        let log = Arc::new(DeviceLog::default());
        let parts = Parts {
            source: Arc::new(ScriptedSource),
            opener: Arc::new(StandInOpener(log.clone())),
            notifier: Notifier::from_env(),
            presets: Err("no cache in this test".into()),
            // Learned in memory only: a test leaves no state behind.
            model: herald::netmodel::store::ModelStore::default(),
        };
        let (sched, _task) = Scheduler::spawn(cfg, parts);
        Rig {
            sched,
            log,
            client: Arc::new(Client::default()),
        }
    }

    async fn send(&self, req: Request) {
        let env = Envelope {
            req: Ok(req),
            reply: self.client.clone(),
        };
        assert!(self.sched.requests().send(env).await.is_ok());
    }

    async fn speak(&self, id: &str, text: &str, priority: Priority) {
        self.send(Request::Speak(SpeakRequest {
            text: text.into(),
            id: Some(id.into()),
            priority,
            ..SpeakRequest::default()
        }))
        .await;
    }

    async fn started(&self, id: &str) {
        self.client
            .wait(
                &format!("start of {id}"),
                |r| matches!(r, Reply::Started { id: i, .. } if i == id),
            )
            .await;
    }

    async fn status(&self) -> StatusReport {
        let c = Arc::new(Client::default());
        let env = Envelope {
            req: Ok(Request::Status),
            reply: c.clone(),
        };
        assert!(self.sched.requests().send(env).await.is_ok());
        match c.wait("status", |r| matches!(r, Reply::Status(_))).await {
            Reply::Status(s) => *s,
            _ => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_the_queue_and_an_interrupt_cuts_in() {
    let rig = Rig::start("");
    rig.speak("a", "First 600", Priority::Normal).await;
    rig.started("a").await;
    rig.speak("b", "Normal 100", Priority::Normal).await;
    rig.speak("c", "High 100", Priority::High).await;
    rig.speak("d", "Interrupt 100", Priority::Interrupt).await;
    let r = rig.client.terminal("a").await;
    assert_eq!(
        r,
        Reply::Interrupted {
            id: "a".into(),
            by: "d".into()
        }
    );
    rig.client.terminal("b").await;
    assert_eq!(rig.client.finished(), ["d", "c", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_skip_and_stop_end_each_job_once() {
    let rig = Rig::start("");
    rig.speak("a", "Long 2000", Priority::Normal).await;
    rig.started("a").await;
    for id in ["b", "c", "d"] {
        rig.speak(id, "Queued 100", Priority::Normal).await;
    }
    rig.send(Request::Cancel { id: "b".into() }).await;
    assert_eq!(
        rig.client.terminal("b").await,
        Reply::Cancelled {
            id: "b".into(),
            by: CancelledBy::Cancel
        }
    );
    rig.send(Request::Skip).await;
    assert!(matches!(
        rig.client.terminal("a").await,
        Reply::Cancelled {
            by: CancelledBy::Skip,
            ..
        }
    ));
    rig.started("c").await;
    rig.send(Request::Stop).await;
    for id in ["c", "d"] {
        assert!(matches!(
            rig.client.terminal(id).await,
            Reply::Cancelled {
                by: CancelledBy::Stop,
                ..
            }
        ));
    }
    // Each job ended exactly once.
    let replies = rig.client.replies.lock().unwrap().clone();
    for id in ["a", "b", "c", "d"] {
        let ends = replies
            .iter()
            .filter(|r| r.is_terminal() && r.job_id() == Some(id))
            .count();
        assert_eq!(ends, 1, "{id}: {replies:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_press_follows_its_while_playing_rule() {
    let rig = Rig::start(
        "[presets.bell]\ntext = \"Bell 800\"\n[presets.door]\ntext = \"Door 100\"\npriority = \"high\"\n",
    );
    let press = |id: &str, rule: Option<WhilePlaying>| {
        Request::Preset(PresetRequest {
            name: "bell".into(),
            id: Some(id.into()),
            while_playing: rule,
            volume: None,
            expires_in_s: None,
            to: None,
            chime: None,
        })
    };
    rig.send(press("p1", None)).await;
    rig.started("p1").await;
    // Default rule (no button): ignore a press of the preset that plays.
    rig.send(press("p2", None)).await;
    rig.client
        .wait(
            "ignored press",
            |r| matches!(r, Reply::Ok { jobs, .. } if jobs == &["p1".to_string()]),
        )
        .await;
    // Restart: cuts the playing one like an interrupt and plays from the start.
    rig.send(press("p3", Some(WhilePlaying::Restart))).await;
    assert_eq!(
        rig.client.terminal("p1").await,
        Reply::Interrupted {
            id: "p1".into(),
            by: "p3".into()
        }
    );
    rig.started("p3").await;
    // Queue: plays again afterwards.
    rig.send(press("p4", Some(WhilePlaying::Queue))).await;
    // Restart while a copy is queued: that copy plays from the start anyway.
    rig.send(press("p5", Some(WhilePlaying::Restart))).await;
    rig.client
        .wait(
            "press ignored for the queued copy",
            |r| matches!(r, Reply::Ok { jobs, .. } if jobs == &["p4".to_string()]),
        )
        .await;
    rig.client.terminal("p4").await;
    assert_eq!(rig.client.finished(), ["p3", "p4"]);
    // Unknown presets are refused naming the known ones.
    rig.send(Request::Preset(PresetRequest {
        name: "nope".into(),
        id: None,
        while_playing: None,
        volume: None,
        expires_in_s: None,
        to: None,
        chime: None,
    }))
    .await;
    let r = rig
        .client
        .wait("refusal", |r| matches!(r, Reply::Failed { .. }))
        .await;
    let Reply::Failed { reason, .. } = r else {
        unreachable!()
    };
    assert!(
        reason.contains("'nope'") && reason.contains("bell, door"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_while_speaking_shows_the_open_device_and_the_job() {
    let rig = Rig::start("");
    rig.speak("a", "Talking 1500", Priority::Normal).await;
    rig.started("a").await;
    let s = rig.status().await;
    assert_eq!(s.device.state, DeviceState::Open);
    assert!(s.device.open);
    assert_eq!(
        (s.device.rate, s.device.channels, s.device.period_frames),
        (Some(RATE), Some(1), Some(PERIOD))
    );
    assert_eq!(s.now_playing.map(|p| p.id), Some("a".into()));
    assert_eq!(
        rig.sched
            .ping(Duration::from_secs(1))
            .await
            .map(|h| h.audio_ok),
        Some(true)
    );
    // `started` and `finished` report the same span under the same name.
    let Reply::Finished {
        start_to_audio_ms,
        request_to_audio_ms,
        ..
    } = rig.client.terminal("a").await
    else {
        panic!("a did not finish")
    };
    let Reply::Started {
        start_to_audio_ms: started,
        ..
    } = rig
        .client
        .wait("started", |r| matches!(r, Reply::Started { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(start_to_audio_ms, Some(started));
    assert!(
        request_to_audio_ms.is_some_and(|r| r <= started),
        "{request_to_audio_ms:?} vs {started}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_hangs_mid_announcement_fails_the_job_and_frees_the_scheduler() {
    let rig = Rig::start("");
    rig.speak("a", "Stuck 3000", Priority::Normal).await;
    rig.speak("b", "Next 100", Priority::Normal).await;
    rig.started("a").await;
    rig.log.hang.store(true, Ordering::Release);
    // While the write is stuck the watchdog is not fed and status says why, promptly.
    let t = Instant::now();
    loop {
        let s = rig.status().await;
        if s.device.state == DeviceState::Stuck {
            assert!(
                s.device
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("blocked")),
                "{:?}",
                s.device
            );
            let h = rig.sched.ping(Duration::from_secs(1)).await.unwrap();
            assert!(!h.audio_ok, "the watchdog would be fed while the DAC hangs");
            break;
        }
        assert!(t.elapsed() < GUARD, "never reported stuck: {:?}", s.device);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The job fails with the reason instead of holding the scheduler.
    let Reply::Failed { reason, .. } = rig.client.terminal("a").await else {
        panic!("a did not fail")
    };
    assert!(reason.contains("stopped taking audio"), "{reason}");
    // The next job is not held either: the device is busy, so it fails with that reason.
    let Reply::Failed { reason, .. } = rig.client.terminal("b").await else {
        panic!("b did not fail")
    };
    assert!(reason.contains("busy"), "{reason}");
    let s = rig.status().await;
    assert_eq!(s.device.state, DeviceState::Failed);
    assert!(s.device.retry_in_ms.is_some());
    assert_eq!(
        rig.sched
            .ping(Duration::from_secs(1))
            .await
            .map(|h| h.audio_ok),
        Some(true),
        "the watchdog must be fed again once the job failed"
    );
    // The DAC recovers: the device is reopened and plays again.
    rig.log.hang.store(false, Ordering::Release);
    rig.speak("c", "Back 100", Priority::Normal).await;
    assert!(matches!(
        rig.client.terminal("c").await,
        Reply::Finished { .. }
    ));
    assert!(rig.log.opens.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_and_stop_on_a_hung_device_answer_at_once_and_never_wedge_the_scheduler() {
    let rig = Rig::start("");
    rig.speak("a", "Stuck 3000", Priority::Normal).await;
    rig.speak("b", "Queued 100", Priority::Normal).await;
    rig.started("a").await;
    rig.log.hang.store(true, Ordering::Release);
    // Let the write block (well before the job would give up on its own).
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.send(Request::Skip).await;
    assert!(matches!(
        rig.client.terminal("a").await,
        Reply::Cancelled {
            by: CancelledBy::Skip,
            ..
        }
    ));
    // The scheduler is free: status answers promptly, and stop ends the queued job.
    let t = Instant::now();
    let s = rig.status().await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        t.elapsed()
    );
    assert_eq!(s.now_playing, None);
    rig.send(Request::Stop).await;
    // `b` either was cancelled by the stop or failed on the busy device: it ended once.
    let end = rig.client.terminal("b").await;
    assert!(
        matches!(
            end,
            Reply::Cancelled {
                by: CancelledBy::Stop,
                ..
            } | Reply::Failed { .. }
        ),
        "{end:?}"
    );
    rig.log.hang.store(false, Ordering::Release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrived_is_learned_per_endpoint_and_format_and_shown_in_status() {
    let rig = Rig::start("");
    assert!(rig.status().await.network_model.is_empty());
    for id in ["a", "b"] {
        rig.speak(id, "Learn 500", Priority::Normal).await;
        assert!(matches!(
            rig.client.terminal(id).await,
            Reply::Finished { .. }
        ));
    }
    let learned = rig.status().await.network_model;
    assert_eq!(learned.len(), 1, "{learned:?}");
    let n = &learned[0];
    assert_eq!(n.key, "https://api.openai.com/v1 pcm");
    assert_eq!(n.summary.utterances, 2);
    // Every chunk came ahead of its playback moment: nothing to hold back for.
    assert_eq!(n.summary.target_ms, 0, "{n:?}");
    let rate = n.summary.generation_rate.unwrap();
    assert!(rate > 2.0, "generated at 5x, measured {rate}");
    // A reset forgets it, says how much it forgot, and the next job learns afresh.
    rig.send(Request::ResetNetworkModel).await;
    rig.client
        .wait("reset", |r| {
            matches!(
                r,
                Reply::Ok {
                    cmd: OkCommand::ResetNetworkModel,
                    forgotten: Some(1),
                    ..
                }
            )
        })
        .await;
    assert!(rig.status().await.network_model.is_empty());
    rig.speak("c", "Learn 500", Priority::Normal).await;
    rig.client.terminal("c").await;
    assert_eq!(rig.status().await.network_model[0].summary.utterances, 1);
}
