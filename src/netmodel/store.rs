//! Keeps the learned network models across restarts: one small JSON file in the state
//! directory (the daemon's `$STATE_DIRECTORY`, the CLI's `$XDG_STATE_HOME/herald` or
//! `~/.local/state/herald`), one model per endpoint and format.
//!
//! Learning is an optimisation, never a reason to fail: a directory that is missing and
//! cannot be made, or is read-only, gives an in-memory store and one warning; a corrupt or
//! foreign file is ignored with a warning (and replaced at the next save). Models are keyed
//! by the endpoint alone — userinfo and query strings are cut off — so no credential ever
//! reaches the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Burst, DelayModel};
use crate::tts::FormatChoice;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "network-model.json";
/// The daemon's state directory under the shipped systemd unit (`StateDirectory=herald`),
/// for `herald check` run by the admin, who has no `$STATE_DIRECTORY`.
pub const SYSTEM_DIR: &str = "/var/lib/herald";
/// The file format's version; a file of another version is ignored.
const VERSION: u32 = 1;
/// Endpoints and formats remembered at most (a box talks to one or two); the one that
/// learned longest ago goes first.
pub const MAX_MODELS: usize = 16;

/// Why the store could not be written (it keeps working in memory).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing or renaming the file failed.
    #[error("cannot save the network model to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why the file in a state directory could not be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It exists but cannot be read (e.g. the state directory is the daemon's alone).
    #[error("cannot read {path} ({source})")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not a model file this herald reads (corrupt, foreign or another version).
    #[error("ignoring {path} ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    herald_network_model: u32,
    models: BTreeMap<String, DelayModel>,
}

/// The learned models, and where they are saved (`None`: memory only). Cloned to save a
/// snapshot off the async runtime: clones share the order of saves, so a snapshot older
/// than one already written is not written (a slow save never brings back what a later
/// one, e.g. after a reset, removed).
#[derive(Debug, Default, Clone)]
pub struct ModelStore {
    path: Option<PathBuf>,
    models: BTreeMap<String, DelayModel>,
    /// Counts the changes (learn, reset): a snapshot's age.
    generation: u64,
    /// The generation last written, shared by clones; held while a save writes.
    written: Arc<Mutex<u64>>,
}

/// The key of an endpoint and format: the base URL without userinfo, query or fragment.
pub fn key(api_base: &str, format: FormatChoice) -> String {
    let base = crate::tts::openai::redact_userinfo(api_base);
    let base = base.split(['?', '#']).next().unwrap_or_default();
    format!("{} {}", base.trim_end_matches('/'), format.as_str())
}

/// The daemon's state directory: systemd's `$STATE_DIRECTORY` (the first if several).
pub fn daemon_dir() -> Option<PathBuf> {
    let d = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty())?;
    let d = d.to_string_lossy().into_owned();
    Some(PathBuf::from(d.split(':').next().unwrap_or(&d)))
}

/// The CLI's state directory: `$XDG_STATE_HOME/herald`, else `~/.local/state/herald`.
pub fn cli_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty());
    match xdg {
        Some(d) => Some(PathBuf::from(d).join("herald")),
        None => {
            let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
            Some(PathBuf::from(home).join(".local/state/herald"))
        }
    }
}

impl ModelStore {
    /// Opens the store in `dir`; the warning, if any, says why it is memory-only or why
    /// an existing file was ignored.
    pub fn open(dir: Option<&Path>) -> (ModelStore, Option<String>) {
        let Some(dir) = dir else {
            let why = "no state directory (STATE_DIRECTORY, XDG_STATE_HOME or HOME): the network model is kept in memory only";
            return (ModelStore::default(), Some(why.into()));
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            let why = format!(
                "state directory {} is unusable ({e}): the network model is kept in memory only",
                dir.display()
            );
            return (ModelStore::default(), Some(why));
        }
        let path = dir.join(FILE_NAME);
        let (models, warning) = match load(&path) {
            Ok(models) => (models, None),
            Err(e @ ReadError::Corrupt { .. }) => (
                BTreeMap::new(),
                Some(format!("{e}; it is replaced by what is learned next")),
            ),
            Err(e) => (BTreeMap::new(), Some(format!("{e}; starting afresh"))),
        };
        let store = ModelStore {
            path: Some(path),
            models,
            ..ModelStore::default()
        };
        (store, warning)
    }

    /// Reads the store in `dir` as it is, creating nothing (for `herald check`, run by an
    /// admin in a directory the daemon owns); a missing file or directory is an empty store.
    pub fn read(dir: &Path) -> Result<ModelStore, ReadError> {
        let path = dir.join(FILE_NAME);
        let models = load(&path)?;
        Ok(ModelStore {
            path: Some(path),
            models,
            ..ModelStore::default()
        })
    }

    /// Where the models are saved (`None`: memory only).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The model for `key` (cold if nothing was learned there).
    pub fn model(&self, key: &str) -> DelayModel {
        self.models.get(key).cloned().unwrap_or_default()
    }

    /// Every learned model by key, for `status` and `check`.
    pub fn models(&self) -> &BTreeMap<String, DelayModel> {
        &self.models
    }

    /// Learns one utterance on `key`.
    pub fn learn(&mut self, key: &str, bursts: &[Burst], audio_ms: f64) {
        let mut model = self.model(key);
        if !model.learn(bursts, audio_ms) {
            return;
        }
        let newest = self
            .models
            .values()
            .map(|m| m.learned_at)
            .max()
            .unwrap_or(0);
        model.learned_at = newest + 1;
        self.models.insert(key.to_string(), model);
        self.generation += 1;
        while self.models.len() > MAX_MODELS {
            let oldest = self
                .models
                .iter()
                .min_by_key(|(_, m)| m.learned_at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.models.remove(&k),
                None => break,
            };
        }
    }

    /// Forgets everything learned (the file too, at the next save).
    pub fn reset(&mut self) {
        self.models.clear();
        self.generation += 1;
    }

    /// Opens the store in `dir`, learns one utterance on `key` and saves it: for a process
    /// that speaks once (the CLI). Returns what went wrong, if anything (never fatal).
    pub fn record(dir: Option<&Path>, key: &str, bursts: &[Burst], audio_ms: f64) -> Vec<String> {
        let (mut store, warning) = ModelStore::open(dir);
        let mut problems: Vec<String> = warning.into_iter().collect();
        store.learn(key, bursts, audio_ms);
        if let Err(e) = store.save() {
            problems.push(e.to_string());
        }
        problems
    }

    /// Writes the models (atomically: a reader never sees half a file), one save at a
    /// time; a snapshot older than the one last written is skipped. On failure the store
    /// keeps working in memory and the error says why.
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // A poisoned lock only means a save panicked; the generation it guards is intact.
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation < *written {
            return Ok(());
        }
        let file = File {
            herald_network_model: VERSION,
            models: self.models.clone(),
        };
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&file).map_err(|e| write_err(std::io::Error::other(e)))?;
        // A name of this save's own: two saves in flight never write one temporary file.
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, json).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)?;
        *written = self.generation;
        Ok(())
    }
}

/// The models in the file at `path` (none when it does not exist).
fn load(path: &Path) -> Result<BTreeMap<String, DelayModel>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes).map_err(|why| ReadError::Corrupt {
            path: path.to_path_buf(),
            why,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(ReadError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The models in a file's bytes, or why they are not usable.
fn parse(bytes: &[u8]) -> Result<BTreeMap<String, DelayModel>, String> {
    let file: File =
        serde_json::from_slice(bytes).map_err(|e| format!("not a network model file: {e}"))?;
    if file.herald_network_model != VERSION {
        return Err(format!(
            "version {} (this herald reads version {VERSION})",
            file.herald_network_model
        ));
    }
    if let Some((k, _)) = file.models.iter().find(|(_, m)| !m.is_valid()) {
        return Err(format!("the model for '{k}' is damaged"));
    }
    Ok(file.models)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled() -> Vec<Burst> {
        (0..10)
            .map(|i| Burst {
                at_ms: f64::from(i) * 50.0 + if i >= 3 { 900.0 } else { 0.0 },
                audio_before_ms: f64::from(i) * 200.0,
                silence_ms: if i == 3 { 950.0 } else { 50.0 },
                first_request: true,
            })
            .collect()
    }

    #[test]
    fn what_is_learned_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("https://api.openai.com/v1/", FormatChoice::Opus);
        let (mut s, w) = ModelStore::open(Some(dir.path()));
        assert_eq!(w, None);
        for _ in 0..5 {
            s.learn(&k, &stalled(), 2000.0);
        }
        s.save().unwrap();
        let (again, w) = ModelStore::open(Some(dir.path()));
        assert_eq!(w, None);
        assert_eq!(again.model(&k), s.model(&k));
        assert_eq!(again.model(&k).utterances(), 5);
        // Other formats and endpoints are separate.
        assert!(again
            .model(&key("https://api.openai.com/v1", FormatChoice::Pcm))
            .is_cold());
        assert!(again
            .model(&key("http://127.0.0.1:8000/v1", FormatChoice::Opus))
            .is_cold());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_ignored_with_a_warning() {
        for (content, says) in [
            (&b"{ not json"[..], "not a network model file"),
            (br#"{"herald_network_model": 7, "models": {}}"#, "version 7"),
            (br#"{"something": "else"}"#, "not a network model file"),
            (
                br#"{"herald_network_model": 1, "models": {"x opus": {"weights": [1.0], "utterances": 1, "rate": null}}}"#,
                "damaged",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE_NAME), content).unwrap();
            let (mut s, w) = ModelStore::open(Some(dir.path()));
            let w = w.expect("a warning");
            assert!(w.contains(says) && w.contains(FILE_NAME), "{w}");
            assert!(s.models().is_empty());
            // It still learns, and the next save replaces the bad file.
            s.learn("k opus", &stalled(), 2000.0);
            s.save().unwrap();
            let (again, w) = ModelStore::open(Some(dir.path()));
            assert_eq!((w, again.models().len()), (None, 1));
        }
    }

    #[test]
    fn an_unusable_directory_means_memory_only_with_one_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A directory below a regular file can never be made (even by root).
        let (mut s, w) = ModelStore::open(Some(&file.join("state")));
        assert!(w.unwrap().contains("memory only"));
        assert_eq!(s.path(), None);
        s.learn("k opus", &stalled(), 2000.0);
        assert!(s.save().is_ok());
        assert_eq!(s.model("k opus").utterances(), 1);
        let (_, w) = ModelStore::open(None);
        assert!(w.unwrap().contains("memory only"));
    }

    #[test]
    fn the_key_never_holds_credentials() {
        let k = key(
            "https://user:sk-secret-123@proxy.example/v1?key=sk-other#x",
            FormatChoice::Opus,
        );
        assert_eq!(k, "https://proxy.example/v1 opus");
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = ModelStore::open(Some(dir.path()));
        s.learn(&k, &stalled(), 2000.0);
        s.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(
            !text.contains("sk-secret") && !text.contains("sk-other"),
            "{text}"
        );
    }

    #[test]
    fn only_the_most_recently_used_endpoints_are_kept() {
        let mut s = ModelStore::default();
        for i in 0..MAX_MODELS + 5 {
            s.learn(&format!("http://host{i}/v1 opus"), &stalled(), 2000.0);
        }
        // The first endpoint learns again: it is recent now and stays.
        s.learn("http://host0/v1 opus", &stalled(), 2000.0);
        s.learn("http://another/v1 opus", &stalled(), 2000.0);
        assert_eq!(s.models().len(), MAX_MODELS);
        assert_eq!(s.model("http://host0/v1 opus").utterances(), 1);
        assert!(
            s.model("http://host1/v1 opus").is_cold(),
            "the oldest went first"
        );
        assert!(!s.model("http://another/v1 opus").is_cold());
    }

    #[test]
    fn reset_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = ModelStore::open(Some(dir.path()));
        s.learn("k opus", &stalled(), 2000.0);
        s.save().unwrap();
        s.reset();
        s.save().unwrap();
        let (again, _) = ModelStore::open(Some(dir.path()));
        assert!(again.models().is_empty());
    }

    #[test]
    fn a_snapshot_older_than_the_last_save_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = ModelStore::open(Some(dir.path()));
        s.learn("k opus", &stalled(), 2000.0);
        // The save of this job is slow; meanwhile the store is reset and saved.
        let slow = s.clone();
        s.reset();
        s.save().unwrap();
        slow.save().unwrap();
        let (again, _) = ModelStore::open(Some(dir.path()));
        assert!(again.models().is_empty(), "the reset was undone");
        // A newer snapshot is written as usual.
        s.learn("k opus", &stalled(), 2000.0);
        s.clone().save().unwrap();
        let (again, _) = ModelStore::open(Some(dir.path()));
        assert_eq!(again.model("k opus").utterances(), 1);
    }

    #[test]
    fn read_creates_nothing_and_says_what_is_wrong_with_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("state");
        let s = ModelStore::read(&missing).unwrap();
        assert!(s.models().is_empty());
        assert!(!missing.exists(), "read made the directory");
        std::fs::create_dir(&missing).unwrap();
        std::fs::write(missing.join(FILE_NAME), b"{ not json").unwrap();
        let e = ModelStore::read(&missing).unwrap_err();
        assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(FILE_NAME), "{e}");
        // A directory where the file should be cannot be read.
        std::fs::remove_file(missing.join(FILE_NAME)).unwrap();
        std::fs::create_dir(missing.join(FILE_NAME)).unwrap();
        let e = ModelStore::read(&missing).unwrap_err();
        assert!(matches!(e, ReadError::Unreadable { .. }), "{e}");
        let (mut w, _) = ModelStore::open(Some(dir.path()));
        w.learn("k opus", &stalled(), 2000.0);
        w.save().unwrap();
        let r = ModelStore::read(dir.path()).unwrap();
        assert_eq!(r.model("k opus").utterances(), 1);
    }
}
