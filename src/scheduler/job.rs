//! Playing one job: take the device, run the pipeline while still serving requests and
//! commands (its events come up as they happen), then settle the job and the device by how
//! it ended: finished, failed, cut short, or stopped by a hung device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;

use super::device::Lease;
use super::queue::{Job, JobSource};
use super::stats::{ms, preview, Current};
use super::{Outcome, PinnedSource, Preempt, Scheduler, FADE_WAIT};
use crate::audio::playout::{Playout, PlayoutError, PlayoutEvent};
use crate::pipeline::{self, ChimePlan, Limits, PipelineError, SpeakReport};
use crate::protocol::{CancelledBy, Reply, SpokenBy};
use crate::tts::SpeechSource;
use crate::volume::Volume;

/// What a job was given as it started: its volume and chime.
pub(super) struct Applied {
    volume: Volume,
    chime: Option<String>,
    chime_error: Option<String>,
}

impl Scheduler {
    /// Plays one job: takes the device, plays while serving commands, then settles the job
    /// and the device by how it ended.
    pub(super) async fn run_job(&mut self, job: Job) {
        // `started` counts from here, so opening the device (and its hook) is included.
        let t0 = Instant::now();
        self.notifier
            .status(&format!("speaking: {}", preview(&job.text)));
        self.stats.current = Some(Current {
            id: job.id.clone(),
            preview: preview(&job.text),
            since: t0,
        });
        let mut lease = match self.acquire_for(&job).await {
            Ok(l) => l,
            Err(reason) => {
                self.stats.current = None;
                self.end_failed(&job, format!("audio device unavailable: {reason}"));
                return;
            }
        };
        // Decided as it starts, so a job queued before quiet hours that plays in them is
        // quiet too. Set before the pipeline's `begin`: its first sample is at this gain.
        let volume = self
            .cfg
            .volume_policy()
            .applied(job.volume, crate::volume::local_time_of_day());
        lease.playout.set_gain(volume.gain());
        let (mut plan, chime_error) = self.chime_plan(&job);
        let source = if plan.before.is_some() {
            plan.not_before = self.device.lead_in_until(&mut lease);
            self.source_for(&job)
        } else {
            self.device.lead_in(&mut lease, self.source_for(&job))
        };
        self.net.used();
        let (outcome, started) = self.play(&job, &mut lease.playout, source, t0, &plan).await;
        self.stats.current = None;
        let applied = Applied {
            volume,
            chime: plan.before.as_ref().map(|c| c.name.clone()),
            chime_error,
        };
        self.settle(&job, lease, outcome, started, t0, applied)
            .await;
        self.release_route().await;
    }

    /// The job's chimes from memory, and why one it asked for cannot play (its file is
    /// unusable, or a reload removed it): then it plays without it.
    fn chime_plan(&self, job: &Job) -> (ChimePlan, Option<String>) {
        let mut errors = Vec::new();
        let mut get = |name: &Option<String>| {
            let chime = self.chimes.playable(name.as_deref()?);
            chime.map_err(|e| errors.push(e)).ok()
        };
        let plan = ChimePlan {
            before: get(&job.chime),
            after: get(&job.chime_after),
            gap: Duration::from_millis(u64::from(self.cfg.daemon.chime_gap_ms)),
            not_before: None,
        };
        if !errors.is_empty() {
            tracing::warn!(id = %job.id, "playing without its chime: {}", errors.join("; "));
        }
        (plan, (!errors.is_empty()).then(|| errors.join("; ")))
    }

    /// Where `job`'s audio comes from.
    fn source_for(&self, job: &Job) -> Arc<dyn SpeechSource> {
        match (job.source, &self.presets) {
            (JobSource::Cached { pinned: true }, Some(p)) => {
                Arc::new(PinnedSource(p.renderer.source()))
            }
            (JobSource::Cached { pinned: false }, Some(p)) => Arc::new(p.renderer.source()),
            _ => self.source.clone(),
        }
    }

    /// Runs the pipeline for `job` while serving requests and commands; returns how it
    /// ended and, if it was heard, when its first audio reached the device (ms after `t0`).
    async fn play(
        &mut self,
        job: &Job,
        playout: &mut Playout,
        source: Arc<dyn SpeechSource>,
        t0: Instant,
        chimes: &ChimePlan,
    ) -> (Outcome, Option<u64>) {
        let mut events = playout.subscribe();
        let limits = Limits {
            max_text_chars: self.cfg.speech.max_text_chars,
            lookahead: self.cfg.speech.lookahead,
        };
        let write_timeout = Duration::from_millis(self.cfg.audio.write_timeout_ms);
        let mut started = None;
        playout.plan_next(self.plan_for(job));
        // The job keeps the voice it started with, even if a reload replaces it meanwhile.
        let fallback = self.fallback.clone().filter(|_| job.fallback);
        let fut = pipeline::announce(
            source,
            fallback.as_deref(),
            playout,
            &job.text,
            &job.voice,
            limits,
            chimes,
        );
        tokio::pin!(fut);
        let outcome = loop {
            // A hung device says nothing: look again when a device call in progress would
            // pass the write timeout.
            let hung_at = self
                .device
                .hung_at()
                .unwrap_or_else(|| Instant::now() + write_timeout);
            let expiry_at = self.queue.next_expiry();
            tokio::select! {
                r = &mut fut => break Outcome::Done(r),
                Some(ev) = events.recv() => self.on_event(job, ev, t0, &mut started),
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => if let Some(p) = self.handle(cmd, Some(job)) {
                        break Outcome::Preempted(p);
                    },
                    // Every sender is gone: the daemon is exiting.
                    None => break Outcome::Preempted(Preempt::Cancelled(CancelledBy::Shutdown)),
                },
                Some(env) = self.requests.recv() => if let Some(p) = self.handle_request(env, Some(job)) {
                    break Outcome::Preempted(p);
                },
                _ = sleep_until(hung_at.into()) => if let Some(blocked) = self.device.hung_for() {
                    break Outcome::Hung(self.device.stuck_reason(blocked));
                },
                // Jobs waiting behind this one expire on time, not when it ends.
                _ = sleep_until(expiry_at.unwrap_or(t0).into()), if expiry_at.is_some() => {
                    self.expire_due();
                }
            }
        };
        // A short job can end before its `started` was read: it still comes first.
        while let Ok(ev) = events.try_recv() {
            self.on_event(job, ev, t0, &mut started);
        }
        (outcome, started)
    }

    /// Passes the playout's progress on: `started` to the client, stalls to the log.
    fn on_event(&mut self, job: &Job, ev: PlayoutEvent, t0: Instant, started: &mut Option<u64>) {
        match ev {
            PlayoutEvent::Started { at } if started.is_none() => {
                let t = ms(at.saturating_duration_since(t0));
                *started = Some(t);
                job.reply.send(Reply::Started {
                    id: job.id.clone(),
                    start_to_audio_ms: t,
                    time_to_first_audio_ms: t,
                });
            }
            PlayoutEvent::Started { .. } => {}
            PlayoutEvent::StallBegan { .. } => {
                tracing::info!(id = %job.id, "playback stalled: waiting for the network")
            }
            PlayoutEvent::StallEnded { ms } => {
                tracing::info!(id = %job.id, silence_ms = ms, "playback resumed")
            }
        }
    }

    /// Ends `job` by how it played and puts the device back (or fails it).
    async fn settle(
        &mut self,
        job: &Job,
        lease: Lease,
        outcome: Outcome,
        started: Option<u64>,
        t0: Instant,
        applied: Applied,
    ) {
        match outcome {
            Outcome::Done(Ok(report)) => {
                self.device.give_back(lease);
                self.end_finished(job, &report, started, t0, applied);
            }
            Outcome::Done(Err(e)) => {
                match &e {
                    PipelineError::Tts { source, .. } => self.net.failed(source.to_string()),
                    PipelineError::Fallback { api, .. } => self.net.failed(api.to_string()),
                    _ => {}
                }
                if device_lost(&e) {
                    let reason = format!("audio device failed: {e}");
                    self.end_failed(job, reason.clone());
                    self.device.fail(reason, Some(lease)).await;
                } else {
                    self.device.give_back(lease);
                    let reason = self.failure_reason(job, e);
                    self.end_failed(job, reason);
                }
            }
            Outcome::Preempted(p) => {
                // The client hears first; the fade-out then plays before the next job.
                self.end_preempted(job, p);
                self.fade_out(lease).await;
            }
            Outcome::Hung(reason) => {
                self.end_failed(job, reason.clone());
                self.device.fail(reason, Some(lease)).await;
            }
        }
    }

    fn end_finished(
        &mut self,
        job: &Job,
        report: &SpeakReport,
        started: Option<u64>,
        t0: Instant,
        applied: Applied,
    ) {
        let start_to_audio = started.or_else(|| {
            report
                .started_at
                .map(|at| ms(at.saturating_duration_since(t0)))
        });
        if started.is_none() {
            if let Some(t) = start_to_audio {
                job.reply.send(Reply::Started {
                    id: job.id.clone(),
                    start_to_audio_ms: t,
                    time_to_first_audio_ms: t,
                });
            }
        }
        match &report.fallback {
            Some(fb) => self.net.failed(fb.api_error.clone()),
            None => self.net.ok(),
        }
        self.stats.finished(report);
        self.learn(job, report);
        let request_to_audio = report.time_to_first_audio.map(ms);
        tracing::info!(
            id = %job.id,
            start_to_audio_ms = start_to_audio,
            request_to_audio_ms = request_to_audio,
            duration_ms = ms(report.audio),
            stalls = report.stalls,
            stall_ms = report.stall_ms,
            bytes = report.bytes,
            segments = report.segments,
            attempts = report.attempts,
            volume = applied.volume.get(),
            "job finished: {report}"
        );
        job.reply.send(Reply::Finished {
            id: job.id.clone(),
            start_to_audio_ms: start_to_audio,
            request_to_audio_ms: request_to_audio,
            time_to_first_audio_ms: request_to_audio,
            duration_ms: ms(report.audio),
            stalls: report.stalls,
            stall_ms: report.stall_ms,
            bytes: report.bytes,
            segments: report.segments,
            attempts: report.attempts,
            stretched_ms: report.stretched_ms,
            warm: report.warm,
            volume: applied.volume.get(),
            chime: applied.chime,
            chime_error: applied.chime_error,
            voice: report.fallback.as_ref().map(|_| SpokenBy::Fallback),
            engine: report.fallback.as_ref().map(|f| f.engine),
            api_error: report.fallback.as_ref().map(|f| f.api_error.clone()),
            fallback_to_audio_ms: report
                .fallback
                .as_ref()
                .and_then(|f| fallback_to_audio(f, report)),
            routed: self.outputs.routed(),
        });
    }

    /// Why a job failed, with what its preset's rendering said if that failed too.
    fn failure_reason(&self, job: &Job, e: PipelineError) -> String {
        match job.preset.as_deref().map(|n| (n, self.render_failure(n))) {
            Some((name, Some(why))) => format!(
                "preset '{name}' is not cached (rendering failed: {why}) and live synthesis failed too: {e}"
            ),
            Some((name, None)) => format!("preset '{name}': {e}"),
            None => e.to_string(),
        }
    }

    fn end_preempted(&mut self, job: &Job, p: Preempt) {
        match p {
            Preempt::Cancelled(by) => self.end_cancelled(job, by),
            Preempt::Interrupted(by) => {
                self.stats.cancelled();
                tracing::info!(id = %job.id, by = %by, "job interrupted");
                job.reply.send(Reply::Interrupted {
                    id: job.id.clone(),
                    by,
                });
            }
        }
    }

    /// Fades out what a cut-short job left playing; a device that cannot fade is failed.
    async fn fade_out(&mut self, mut lease: Lease) {
        if let Some(blocked) = self.device.stuck_for() {
            let reason = self.device.stuck_reason(blocked);
            return self.device.fail(reason, Some(lease)).await;
        }
        let limit = self.device.fade_wait(FADE_WAIT);
        let faded = {
            let fade = lease.playout.interrupt();
            tokio::pin!(fade);
            let give_up = Instant::now() + limit;
            loop {
                // A fade cannot finish while a device call hangs: stop once one counts as
                // stuck. A call that ends in time is the device taking audio at its rate
                // (on a loaded machine, later than usual): keep waiting for the next one.
                let until = self.device.stuck_at().map_or(give_up, |at| at.min(give_up));
                let until = tokio::time::Instant::from_std(until);
                match tokio::time::timeout_at(until, &mut fade).await {
                    Ok(result) => break Some(result),
                    Err(_) if self.device.stuck_for().is_none() && Instant::now() < give_up => {}
                    Err(_) => break None,
                }
            }
        };
        match faded {
            Some(Ok(_)) | Some(Err(PlayoutError::NoUtterance { .. })) => {
                self.device.give_back(lease)
            }
            Some(Err(e)) => {
                let reason = format!("audio device failed: {e}");
                self.device.fail(reason, Some(lease)).await
            }
            None => {
                let reason = match self.device.stuck_for() {
                    Some(blocked) => self.device.stuck_reason(blocked),
                    None => format!(
                        "audio device did not finish a fade-out within {:.1} s",
                        limit.as_secs_f64()
                    ),
                };
                self.device.fail(reason, Some(lease)).await
            }
        }
    }
}

/// From the API's failure to the fallback's first audio at the device, when that was the
/// job's first audio (`None` if the API's had been heard before it failed).
fn fallback_to_audio(fb: &pipeline::FallbackUse, report: &SpeakReport) -> Option<u64> {
    let started = report.started_at?;
    (started >= fb.api_failed_at).then(|| ms(started - fb.api_failed_at))
}

/// Whether a pipeline error means the device (or its thread) is gone.
fn device_lost(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::Playout(
            PlayoutError::Device(_) | PlayoutError::Stopped | PlayoutError::Panicked
        )
    )
}
