//! The announcement queue and its rules, as plain data and functions: admission (unique
//! ids, size limit, placement by priority), cancel, stop, and what a preset press does
//! while the same preset is playing or queued. No I/O, so every rule has a unit test.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::pipeline::Voice;
use crate::protocol::{ExpiresIn, Priority, ReplyTo, WhilePlaying};
use crate::volume::Volume;

/// Where a job's audio comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSource {
    /// Straight from the API.
    Live,
    /// Cache first, storing what is fetched (`pinned` for presets: never evicted).
    Cached {
        /// Kept in the cache while configured.
        pinned: bool,
    },
}

/// One announcement: `Job` once accepted (its id is settled); [`NewJob`] before (the
/// caller's id, if it gave one).
#[derive(Debug)]
pub struct Job<Id = String> {
    /// Its id.
    pub id: Id,
    /// What to say.
    pub text: String,
    /// How to say it.
    pub voice: Voice,
    /// Queue placement.
    pub priority: Priority,
    /// Where its replies go.
    pub reply: Arc<dyn ReplyTo>,
    /// Where its audio comes from.
    pub source: JobSource,
    /// The preset it plays, if any.
    pub preset: Option<String>,
    /// The volume it asked for (`None`: the default); clamped when it starts.
    pub volume: Option<Volume>,
    /// When it was accepted.
    pub queued_at: Instant,
    /// How long it may wait in the queue (`None`: as long as it takes).
    pub expires_in: Option<ExpiresIn>,
    /// The output it plays on (`None`: this box's device); checked against the config.
    pub to: Option<String>,
    /// The chime before its speech (a configured name), if any.
    pub chime: Option<String>,
    /// The chime after its speech, if any.
    pub chime_after: Option<String>,
    /// The local voice may speak it when the API can't (`"fallback": false` says no).
    pub fallback: bool,
}

impl<Id> Job<Id> {
    /// When it expires if still queued.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_in.map(|e| self.queued_at + e.duration())
    }
}

/// A validated request, not yet admitted.
pub type NewJob = Job<Option<String>>;

impl NewJob {
    /// The accepted job, under `id`.
    fn with_id(self, id: String) -> Job {
        Job {
            id,
            text: self.text,
            voice: self.voice,
            priority: self.priority,
            reply: self.reply,
            source: self.source,
            preset: self.preset,
            volume: self.volume,
            queued_at: self.queued_at,
            expires_in: self.expires_in,
            to: self.to,
            chime: self.chime,
            chime_after: self.chime_after,
            fallback: self.fallback,
        }
    }
}

/// A job the queue took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Its id.
    pub id: String,
    /// Jobs ahead of it (0 = plays next).
    pub position: usize,
    /// It must cut the playing job short (an `interrupt` job while something plays).
    pub preempts: bool,
}

/// Why the queue did not take a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another live job has this id.
    #[error("id '{id}' is already in use by a queued or playing job (ids must be unique among live jobs)")]
    IdInUse {
        /// The id asked for.
        id: String,
    },
    /// `limit` jobs are waiting already.
    #[error("the queue is full ({limit} jobs waiting; queue_size = {limit}): try again later")]
    Full {
        /// `daemon.queue_size`.
        limit: usize,
    },
}

/// What a preset press does, by its `while_playing` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Press {
    /// Nothing new: the preset is already playing or about to (this job's id).
    AlreadyThere(String),
    /// Queue it with this priority.
    Queue(Priority),
}

/// The jobs waiting to play, in play order.
#[derive(Debug, Default)]
pub struct Queue {
    jobs: VecDeque<Job>,
    next_id: u64,
}

impl Queue {
    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The waiting jobs, next first.
    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.jobs.iter()
    }

    /// Takes the job that plays next.
    pub fn pop(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// Queues `new` behind the jobs of its priority or above (an `interrupt` job first),
    /// or says why not: an id already in use by a queued or the `playing` job, or a full
    /// queue (`limit` jobs waiting).
    pub fn admit(
        &mut self,
        new: NewJob,
        playing: Option<&Job>,
        limit: usize,
    ) -> Result<Admitted, Refusal> {
        if let Some(id) = &new.id {
            if self.jobs.iter().chain(playing).any(|j| &j.id == id) {
                return Err(Refusal::IdInUse { id: id.clone() });
            }
        }
        if self.jobs.len() >= limit {
            return Err(Refusal::Full { limit });
        }
        let id = new.id.clone().unwrap_or_else(|| {
            self.next_id += 1;
            format!("j{}", self.next_id)
        });
        let position = self.position_for(new.priority);
        let preempts = new.priority == Priority::Interrupt && playing.is_some();
        self.jobs.insert(position, new.with_id(id.clone()));
        Ok(Admitted {
            id,
            position,
            preempts,
        })
    }

    fn position_for(&self, priority: Priority) -> usize {
        match priority {
            Priority::Normal => self.jobs.len(),
            Priority::High => self
                .jobs
                .iter()
                .position(|j| j.priority == Priority::Normal)
                .unwrap_or(self.jobs.len()),
            Priority::Interrupt => 0,
        }
    }

    /// Removes the queued job `id`.
    pub fn remove(&mut self, id: &str) -> Option<Job> {
        let pos = self.jobs.iter().position(|j| j.id == id)?;
        self.jobs.remove(pos)
    }

    /// Removes every queued job (for `stop` and shutdown).
    pub fn clear(&mut self) -> Vec<Job> {
        self.jobs.drain(..).collect()
    }

    /// The earliest moment a queued job expires, if any has an expiry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.jobs.iter().filter_map(Job::expires_at).min()
    }

    /// Removes every queued job that has expired by `now` (the rest keep their order).
    pub fn take_expired(&mut self, now: Instant) -> Vec<Job> {
        let (expired, kept) = self
            .jobs
            .drain(..)
            .partition(|j| j.expires_at().is_some_and(|at| at <= now));
        self.jobs = kept;
        expired.into()
    }

    /// The queued job playing preset `name`, if any.
    pub fn preset_queued(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.preset.as_deref() == Some(name))
    }
}

/// What pressing preset `name` does under `rule`, given the `playing` job and the queue;
/// `priority` is the preset's own.
pub fn press(
    rule: WhilePlaying,
    name: &str,
    priority: Priority,
    playing: Option<&Job>,
    queue: &Queue,
) -> Press {
    let same_playing = playing.filter(|j| j.preset.as_deref() == Some(name));
    let priority = match (rule, same_playing) {
        (WhilePlaying::Ignore, Some(j)) => return Press::AlreadyThere(j.id.clone()),
        // Played again from the start: cut the current one like an interrupt.
        (WhilePlaying::Restart, Some(_)) => Priority::Interrupt,
        _ => priority,
    };
    if rule != WhilePlaying::Queue {
        // A queued copy is about to play from the start anyway.
        if let Some(j) = queue.preset_queued(name) {
            return Press::AlreadyThere(j.id.clone());
        }
    }
    Press::Queue(priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reply;
    use crate::tts::FormatChoice;

    #[derive(Debug)]
    struct Nowhere;
    impl ReplyTo for Nowhere {
        fn send(&self, _: Reply) {}
    }

    fn voice() -> Voice {
        Voice {
            model: "gpt-4o-mini-tts".into(),
            voice: "alloy".into(),
            format: FormatChoice::Opus,
            speed: None,
            instructions: None,
        }
    }

    fn new(id: Option<&str>, priority: Priority, preset: Option<&str>) -> NewJob {
        NewJob {
            id: id.map(str::to_string),
            text: "x".into(),
            voice: voice(),
            priority,
            reply: Arc::new(Nowhere),
            source: JobSource::Live,
            preset: preset.map(str::to_string),
            volume: None,
            queued_at: Instant::now(),
            expires_in: None,
            to: None,
            chime: None,
            chime_after: None,
            fallback: true,
        }
    }

    fn ids(q: &Queue) -> Vec<&str> {
        q.iter().map(|j| j.id.as_str()).collect()
    }

    fn job(id: &str, preset: Option<&str>) -> Job {
        new(None, Priority::Normal, preset).with_id(id.into())
    }

    #[test]
    fn priorities_place_jobs_high_before_normal_interrupt_first() {
        let mut q = Queue::default();
        for (id, p) in [
            ("n1", Priority::Normal),
            ("h1", Priority::High),
            ("n2", Priority::Normal),
            ("h2", Priority::High),
            ("i1", Priority::Interrupt),
        ] {
            q.admit(new(Some(id), p, None), None, 10).unwrap();
        }
        assert_eq!(ids(&q), ["i1", "h1", "h2", "n1", "n2"]);
    }

    #[test]
    fn positions_are_reported_and_ids_assigned() {
        let mut q = Queue::default();
        let a = q
            .admit(new(None, Priority::Normal, None), None, 10)
            .unwrap();
        let b = q
            .admit(new(None, Priority::Normal, None), None, 10)
            .unwrap();
        assert_eq!((a.id.as_str(), a.position), ("j1", 0));
        assert_eq!((b.id.as_str(), b.position), ("j2", 1));
        let h = q.admit(new(None, Priority::High, None), None, 10).unwrap();
        assert_eq!(h.position, 0);
    }

    #[test]
    fn an_interrupt_preempts_only_when_something_plays() {
        let mut q = Queue::default();
        let playing = job("p", None);
        let idle = q
            .admit(new(Some("a"), Priority::Interrupt, None), None, 10)
            .unwrap();
        assert!(!idle.preempts);
        let busy = q
            .admit(
                new(Some("b"), Priority::Interrupt, None),
                Some(&playing),
                10,
            )
            .unwrap();
        assert!(busy.preempts);
        let normal = q
            .admit(new(Some("c"), Priority::High, None), Some(&playing), 10)
            .unwrap();
        assert!(!normal.preempts);
    }

    #[test]
    fn ids_in_use_and_a_full_queue_are_refused_with_the_reason() {
        let mut q = Queue::default();
        let playing = job("p", None);
        q.admit(new(Some("a"), Priority::Normal, None), Some(&playing), 2)
            .unwrap();
        let e = q
            .admit(new(Some("a"), Priority::Normal, None), Some(&playing), 2)
            .unwrap_err();
        assert_eq!(e, Refusal::IdInUse { id: "a".into() });
        let e = q
            .admit(new(Some("p"), Priority::Normal, None), Some(&playing), 2)
            .unwrap_err();
        assert!(e.to_string().contains("'p' is already in use"), "{e}");
        q.admit(new(None, Priority::Normal, None), None, 2).unwrap();
        let e = q
            .admit(new(Some("z"), Priority::Interrupt, None), None, 2)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("queue is full (2 jobs waiting; queue_size = 2)"),
            "{msg}"
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn cancel_and_clear_remove_jobs() {
        let mut q = Queue::default();
        for id in ["a", "b", "c"] {
            q.admit(new(Some(id), Priority::Normal, None), None, 10)
                .unwrap();
        }
        assert_eq!(q.remove("b").map(|j| j.id), Some("b".into()));
        assert!(q.remove("b").is_none());
        let gone: Vec<String> = q.clear().into_iter().map(|j| j.id).collect();
        assert_eq!(gone, ["a", "c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn expired_jobs_leave_the_queue_and_the_others_keep_their_order() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        let secs = |s: f64| Some(ExpiresIn::new(s).unwrap());
        for (id, expiry) in [
            ("a", None),
            ("b", secs(2.0)),
            ("c", secs(1.0)),
            ("d", secs(5.0)),
        ] {
            let mut job = new(Some(id), Priority::Normal, None);
            job.queued_at = t0;
            job.expires_in = expiry;
            q.admit(job, None, 10).unwrap();
        }
        assert_eq!(
            q.next_expiry(),
            Some(t0 + std::time::Duration::from_secs(1))
        );
        assert!(q.take_expired(t0).is_empty());
        let gone: Vec<String> = q
            .take_expired(t0 + std::time::Duration::from_secs(2))
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(gone, ["b", "c"]);
        assert_eq!(ids(&q), ["a", "d"]);
        assert_eq!(
            q.next_expiry(),
            Some(t0 + std::time::Duration::from_secs(5))
        );
        q.remove("d");
        assert_eq!(q.next_expiry(), None, "a waits as long as it takes");
    }

    #[test]
    fn press_rules_while_the_preset_plays_or_waits() {
        let mut q = Queue::default();
        let playing = job("p", Some("dinner"));
        let n = Priority::Normal;
        assert_eq!(
            press(WhilePlaying::Ignore, "dinner", n, Some(&playing), &q),
            Press::AlreadyThere("p".into())
        );
        assert_eq!(
            press(WhilePlaying::Restart, "dinner", n, Some(&playing), &q),
            Press::Queue(Priority::Interrupt)
        );
        assert_eq!(
            press(WhilePlaying::Queue, "dinner", n, Some(&playing), &q),
            Press::Queue(n)
        );
        // Another preset playing: the rule does not apply.
        assert_eq!(
            press(
                WhilePlaying::Ignore,
                "bus",
                Priority::High,
                Some(&playing),
                &q
            ),
            Press::Queue(Priority::High)
        );
        q.admit(new(Some("q"), n, Some("bus")), None, 10).unwrap();
        assert_eq!(
            press(WhilePlaying::Ignore, "bus", n, None, &q),
            Press::AlreadyThere("q".into())
        );
        assert_eq!(
            press(WhilePlaying::Restart, "bus", n, None, &q),
            Press::AlreadyThere("q".into())
        );
        assert_eq!(
            press(WhilePlaying::Queue, "bus", n, None, &q),
            Press::Queue(n)
        );
    }
}
