//! Presets (named announcements): the config type the daemon's config embeds
//! (`[presets.NAME]`), its validation, and the [`Renderer`] that keeps every preset
//! rendered in the audio cache. The buttons that trigger them are in `crate::buttons`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::pipeline::Voice;
use crate::protocol::Priority;
use crate::tts::cache::{CacheKey, CachingSource};
use crate::tts::{FormatChoice, SpeechRequest, MAX_INPUT_CHARS};

/// One named announcement: its text and any speak option (unset ones use `[speech]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetConfig {
    /// What to say (one request: at most 4096 characters).
    pub text: String,
    /// Voice name.
    #[serde(default)]
    pub voice: Option<String>,
    /// Model name.
    #[serde(default)]
    pub model: Option<String>,
    /// Voice instructions (gpt-4o-mini-tts only).
    #[serde(default)]
    pub instructions: Option<String>,
    /// Speed 0.25–4.0.
    #[serde(default)]
    pub speed: Option<f32>,
    /// `opus` (default), `pcm`, or `auto` (played from the cache, so rendered as opus).
    #[serde(default)]
    pub format: Option<FormatChoice>,
    /// Queue priority: normal, high or interrupt.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Volume 0–100 (default `audio.volume`); a press or button that gives one wins.
    #[serde(default)]
    pub volume: Option<crate::volume::Volume>,
    /// The output it plays on (`[outputs.NAME]`; default this box's device).
    #[serde(default)]
    pub to: Option<String>,
    /// Chime before it: a `[chimes.NAME]`, `false` for none (default `daemon.chime`).
    #[serde(default)]
    pub chime: Option<crate::chimes::ChimeChoice>,
    /// Chime after it (default `daemon.chime_after`).
    #[serde(default)]
    pub chime_after: Option<crate::chimes::ChimeChoice>,
}

impl PresetConfig {
    /// The speech request for this preset, unset fields taken from `defaults`, checked
    /// against the endpoint's limits.
    pub fn request(&self, name: &str, defaults: &Voice) -> Result<SpeechRequest, PresetError> {
        // The same merge as a socket request, so equal settings give equal cache keys.
        let v = defaults.clone().with(
            self.model.clone(),
            self.voice.clone(),
            self.format,
            self.speed,
            self.instructions.clone(),
        );
        let req = v.request(self.text.trim().to_string());
        req.validate().map_err(|e| PresetError::Request {
            preset: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(req)
    }
}

/// A preset configuration error; the message names the preset and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PresetError {
    /// A preset name that cannot be typed on the command line.
    #[error("preset name '{name}' is not allowed (use letters, digits, '-' and '_')")]
    BadName {
        /// The name.
        name: String,
    },
    /// A preset with empty text.
    #[error("preset '{preset}': text is empty (allowed: 1 to 4096 characters)")]
    EmptyText {
        /// Preset name.
        preset: String,
    },
    /// A preset longer than one request.
    #[error("preset '{preset}': text has {chars} characters (allowed: at most 4096, one request, so it can be cached)")]
    TextTooLong {
        /// Preset name.
        preset: String,
        /// Its length.
        chars: usize,
    },
    /// A preset whose speech options the API would refuse.
    #[error("preset '{preset}': {reason}")]
    Request {
        /// Preset name.
        preset: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks presets' names and texts; their speech options are checked with the `[speech]`
/// defaults applied, by [`requests`].
pub fn validate(presets: &BTreeMap<String, PresetConfig>) -> Result<(), PresetError> {
    for (name, p) in presets {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(PresetError::BadName { name: name.clone() });
        }
        let text = p.text.trim();
        if text.is_empty() {
            return Err(PresetError::EmptyText {
                preset: name.clone(),
            });
        }
        let chars = text.chars().count();
        if chars > MAX_INPUT_CHARS {
            return Err(PresetError::TextTooLong {
                preset: name.clone(),
                chars,
            });
        }
    }
    Ok(())
}

/// The speech requests of all presets with `defaults` applied (after [`validate`]).
pub fn requests(
    presets: &BTreeMap<String, PresetConfig>,
    defaults: &Voice,
) -> Result<BTreeMap<String, SpeechRequest>, PresetError> {
    presets
        .iter()
        .map(|(n, p)| Ok((n.clone(), p.request(n, defaults)?)))
        .collect()
}

/// Where a preset's rendering stands.
#[derive(Debug, Clone, PartialEq)]
pub enum PresetState {
    /// Waiting for its turn (renders run one at a time).
    Pending,
    /// Being fetched now.
    Rendering,
    /// On disk and verified when it was stored; a press plays without the network.
    Cached,
    /// The last attempt failed; retried at `next_retry`.
    Failed {
        /// Why (the TTS or cache error).
        reason: String,
        /// When the next attempt starts.
        next_retry: Instant,
        /// Failed attempts so far.
        attempts: u32,
    },
}

impl std::fmt::Display for PresetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PresetState::Pending => f.write_str("pending"),
            PresetState::Rendering => f.write_str("rendering"),
            PresetState::Cached => f.write_str("cached"),
            PresetState::Failed {
                reason,
                next_retry,
                attempts,
            } => {
                let wait = next_retry.saturating_duration_since(Instant::now());
                write!(
                    f,
                    "not cached: {reason} (failed {attempts}×, retry in {}s)",
                    wait.as_secs()
                )
            }
        }
    }
}

/// One preset's status, for `herald presets`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetStatus {
    /// Preset name.
    pub name: String,
    /// Where its rendering stands.
    pub state: PresetState,
}

/// Retry timing for failed renders.
#[derive(Debug, Clone, Copy)]
pub struct RenderBackoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait (the wait doubles up to this).
    pub max: Duration,
}

impl Default for RenderBackoff {
    fn default() -> Self {
        RenderBackoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(600),
        }
    }
}

struct Slot {
    key: CacheKey,
    state: PresetState,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Keeps every preset rendered in the cache, in the background, one at a time, retrying
/// failures with backoff. [`update`](Self::update) after a config (re)load re-renders only
/// presets whose cache key changed (or whose file is gone).
pub struct Renderer {
    /// Replaced on reload (new key or API base); renders started later use the new one.
    source: Mutex<CachingSource>,
    backoff: RenderBackoff,
    slots: Arc<Mutex<BTreeMap<String, Slot>>>,
    /// One render at a time, so presets never compete with each other (or much with live
    /// speech) for the link.
    gate: Arc<tokio::sync::Semaphore>,
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("presets", &self.status())
            .finish()
    }
}

/// What [`Renderer::update`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Presets (re)rendering because they are new, changed or missing from the cache.
    pub rendering: Vec<String>,
    /// Presets left as they were.
    pub unchanged: Vec<String>,
    /// Presets no longer configured (their audio is unpinned and ages out).
    pub removed: Vec<String>,
}

impl Renderer {
    /// A renderer storing through `source` (whose cache holds the presets).
    pub fn new(source: CachingSource, backoff: RenderBackoff) -> Self {
        Renderer {
            source: Mutex::new(source),
            backoff,
            slots: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
            changed: Arc::default(),
        }
    }

    /// The source presets play through (cache first, then live synthesis).
    pub fn source(&self) -> CachingSource {
        lock(&self.source).clone()
    }

    /// Uses `source` from now on (after a reload changed the key or API base); call
    /// [`update`](Self::update) next so failed presets retry with it.
    pub fn replace_source(&self, source: CachingSource) {
        *lock(&self.source) = source;
    }

    /// Applies a new preset set: starts background renders for new or changed presets (and
    /// ones whose audio left the cache, and failed ones), cancels renders of removed ones. Must be called
    /// inside a tokio runtime; returns at once.
    pub fn update(&self, presets: &BTreeMap<String, SpeechRequest>) -> UpdateSummary {
        let mut summary = UpdateSummary::default();
        let source = self.source();
        let cache = source.cache().clone();
        let mut slots = lock(&self.slots);
        let gone: Vec<String> = slots
            .keys()
            .filter(|n| !presets.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = slots.remove(&name) {
                if let Some(t) = slot.task {
                    t.abort();
                }
                cache.pin(&slot.key, false);
                summary.removed.push(name);
            }
        }
        for (name, req) in presets {
            let key = source.key(req);
            if let Some(slot) = slots.get_mut(name) {
                // A failed preset waiting for its retry is retried now: the reload may have
                // fixed the cause (a new key).
                let failed = matches!(slot.state, PresetState::Failed { .. });
                let running = !failed && slot.task.as_ref().is_some_and(|t| !t.is_finished());
                let stored = slot.state == PresetState::Cached && cache.contains(&key);
                if slot.key == key && (running || stored) {
                    summary.unchanged.push(name.clone());
                    continue;
                }
                if let Some(t) = slot.task.take() {
                    t.abort();
                }
                if slot.key != key {
                    cache.pin(&slot.key, false);
                }
            }
            let task = self.spawn(name.clone(), req.clone());
            slots.insert(
                name.clone(),
                Slot {
                    key,
                    state: PresetState::Pending,
                    task: Some(task),
                },
            );
            summary.rendering.push(name.clone());
        }
        drop(slots);
        self.changed.notify_waiters();
        summary
    }

    /// Every preset's state, by name. A preset recorded as cached whose file has since
    /// left the cache shows as pending (the next `update` re-renders it).
    pub fn status(&self) -> Vec<PresetStatus> {
        let source = self.source();
        let cache = source.cache();
        lock(&self.slots)
            .iter()
            .map(|(name, s)| PresetStatus {
                name: name.clone(),
                state: match &s.state {
                    PresetState::Cached if !cache.contains(&s.key) => PresetState::Pending,
                    other => other.clone(),
                },
            })
            .collect()
    }

    /// Waits until no preset is pending or rendering (each is cached or has failed once).
    pub async fn settled(&self) {
        loop {
            let notified = self.changed.notified();
            let busy = lock(&self.slots)
                .values()
                .any(|s| matches!(s.state, PresetState::Pending | PresetState::Rendering));
            if !busy {
                return;
            }
            notified.await;
        }
    }

    fn spawn(&self, name: String, req: SpeechRequest) -> tokio::task::JoinHandle<()> {
        let source = self.source();
        let slots = self.slots.clone();
        let gate = self.gate.clone();
        let changed = self.changed.clone();
        let backoff = self.backoff;
        let preset = name.clone();
        let set = move |state: PresetState| {
            if let Some(s) = lock(&slots).get_mut(&name) {
                s.state = state;
            }
            changed.notify_waiters();
        };
        tokio::spawn(async move {
            let mut attempts = 0u32;
            loop {
                let permit = gate.clone().acquire_owned().await;
                set(PresetState::Rendering);
                match source.ensure_cached(&req, true).await {
                    Ok(fetched) => {
                        tracing::info!(%preset, fetched, "preset cached");
                        set(PresetState::Cached);
                        return;
                    }
                    Err(e) => {
                        attempts += 1;
                        let wait = backoff
                            .initial
                            .saturating_mul(1u32 << (attempts - 1).min(16))
                            .min(backoff.max);
                        tracing::warn!(
                            %preset,
                            "cannot render the preset: {e}; retrying in {}s (a press meanwhile tries live synthesis)",
                            wait.as_secs()
                        );
                        set(PresetState::Failed {
                            reason: e.to_string(),
                            next_retry: Instant::now() + wait,
                            attempts,
                        });
                        drop(permit);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        for s in lock(&self.slots).values_mut() {
            if let Some(t) = s.task.take() {
                t.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Voice {
        Voice {
            model: "tts-1".into(),
            voice: "alloy".into(),
            format: FormatChoice::Opus,
            speed: Some(1.1),
            instructions: None,
        }
    }

    fn preset(src: &str) -> PresetConfig {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn unset_options_come_from_the_speech_defaults() {
        let r = preset("text = \"  Dinner is ready. \"\nvoice = \"coral\"")
            .request("dinner", &defaults())
            .unwrap();
        assert_eq!(
            (r.input.as_str(), r.voice.as_str(), r.model.as_str()),
            ("Dinner is ready.", "coral", "tts-1")
        );
        assert_eq!(r.speed, Some(1.1));
    }

    #[test]
    fn combinations_with_the_defaults_are_checked_when_resolved() {
        // Valid on its own, refused with the default tts-1 model: named by preset.
        let p = preset("text = \"Hi.\"\ninstructions = \"Cheerful.\"");
        let mut presets = BTreeMap::new();
        presets.insert("hi".to_string(), p.clone());
        assert!(validate(&presets).is_ok());
        let msg = p.request("hi", &defaults()).unwrap_err().to_string();
        assert!(
            msg.contains("'hi'") && msg.contains("instructions"),
            "{msg}"
        );
        assert!(requests(&presets, &defaults()).is_err());
    }

    #[test]
    fn unknown_fields_and_priorities_are_refused() {
        assert!(toml::from_str::<PresetConfig>("text = \"Hi.\"\nloudness = 3").is_err());
        // volume is a preset option, with the one volume rule.
        let p: PresetConfig = toml::from_str("text = \"Hi.\"\nvolume = 30").unwrap();
        assert_eq!(p.volume.map(crate::volume::Volume::get), Some(30));
        let msg = toml::from_str::<PresetConfig>("text = \"Hi.\"\nvolume = 130")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("volume 130") && msg.contains("0 = silent"),
            "{msg}"
        );
        let msg = toml::from_str::<PresetConfig>("text = \"Hi.\"\npriority = \"urgent\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("urgent") && msg.contains("interrupt"), "{msg}");
    }
}
