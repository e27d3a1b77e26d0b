//! The disk cache of rendered speech: presets and `"cache": true` requests.
//!
//! Files are the bytes the API returned (`<sha256>.opus`; raw PCM as `<sha256>.pcm` with a
//! SHA-256 trailer, since PCM has no framing to verify), named by a hash of everything that
//! shapes the audio. Writes are atomic (temp file, fsync, rename, fsync of the directory);
//! every read is verified before it is trusted (Ogg: complete pages, CRCs, OpusHead first,
//! EOS), and a file that fails is deleted, logged and reported as a miss, so the caller
//! re-fetches. The total size is capped; eviction is least-recently-used, with pinned
//! (preset) entries evicted last and never to make room for an unpinned one.
//!
//! Every failure is a [`CacheError`] the caller logs and ignores: a cache that is unreadable
//! or full must never stop live speech ([`CachingSource`] falls through to the network).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::{
    AudioFormat, ByteStream, OpenFuture, SpeechRequest, SpeechSource, SpeechStream, TtsError,
};
use crate::codec::ogg::Demuxer;

/// Suffix of temporary files; any found at open are leftovers of an interrupted write.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Length of the SHA-256 trailer on cached PCM files.
const PCM_TRAILER: usize = 32;

/// The identity of one rendering: a SHA-256 over everything that shapes the audio.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    hex: String,
    format: AudioFormat,
}

impl CacheKey {
    /// The hash as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.hex
    }
    /// The audio format of the entry.
    pub fn format(&self) -> AudioFormat {
        self.format
    }
    /// The entry's file name inside the cache directory.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.hex, self.format.as_str())
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.hex[..12.min(self.hex.len())])
    }
}

/// The key of `req` sent to `api_base`: api base, model, voice, speed, instructions, format
/// and text. Never the API key. Equivalent spellings (trailing `/`, no speed vs 1.0, blank
/// instructions vs none) give the same key, since the API renders them the same.
pub fn key(api_base: &str, req: &SpeechRequest) -> CacheKey {
    #[derive(serde::Serialize)]
    struct Canonical<'a> {
        v: u32,
        api_base: &'a str,
        model: &'a str,
        voice: &'a str,
        format: &'a str,
        speed: String,
        instructions: &'a str,
        input: &'a str,
    }
    let canonical = Canonical {
        v: 1,
        api_base: api_base.trim().trim_end_matches('/'),
        model: &req.model,
        voice: &req.voice,
        format: req.format.as_str(),
        speed: format!("{}", req.speed.unwrap_or(1.0)),
        instructions: req
            .instructions
            .as_deref()
            .map(str::trim)
            .unwrap_or_default(),
        input: &req.input,
    };
    // JSON quoting makes the serialization unambiguous (no field can bleed into the next).
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    CacheKey {
        hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
        format: req.format,
    }
}

/// Cache failures; none of them should stop speech.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("audio cache: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create", "rename".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not complete, intact audio, so they were not stored.
    #[error("audio cache: refusing to store {key}: {reason}")]
    Invalid {
        /// The entry's key (abbreviated).
        key: String,
        /// What is wrong with the bytes.
        reason: String,
    },
    /// The entry alone is bigger than the cache.
    #[error("audio cache: {key} is {bytes} bytes, more than the whole cache ({max} bytes; raise cache_max_bytes)")]
    TooLarge {
        /// The entry's key (abbreviated).
        key: String,
        /// Its size.
        bytes: u64,
        /// The cache's size cap.
        max: u64,
    },
    /// No room without evicting pinned (preset) entries.
    #[error(
        "audio cache full: {key} needs {bytes} bytes but presets hold {pinned} of {max} bytes \
         (raise cache_max_bytes)"
    )]
    Full {
        /// The entry's key (abbreviated).
        key: String,
        /// Its size.
        bytes: u64,
        /// Bytes held by pinned entries.
        pinned: u64,
        /// The cache's size cap.
        max: u64,
    },
}

/// Checks that `bytes` are complete, intact audio of `format`. For PCM, `bytes` include the
/// SHA-256 trailer.
pub fn verify(format: AudioFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        AudioFormat::Opus => verify_ogg_opus(bytes),
        AudioFormat::Pcm => {
            let Some(split) = bytes.len().checked_sub(PCM_TRAILER) else {
                return Err(format!(
                    "{} bytes is shorter than the checksum",
                    bytes.len()
                ));
            };
            let (payload, trailer) = bytes.split_at(split);
            if payload.is_empty() || payload.len() % 2 != 0 {
                return Err(format!(
                    "{} bytes of PCM is not a whole number of 16-bit samples",
                    payload.len()
                ));
            }
            if Sha256::digest(payload).as_slice() != trailer {
                return Err("the PCM checksum does not match (file corrupted or truncated)".into());
            }
            Ok(())
        }
    }
}

fn verify_ogg_opus(bytes: &[u8]) -> Result<(), String> {
    let mut demux = Demuxer::new();
    let mut packets = 0u64;
    let mut head_first = false;
    let mut after_eos = false;
    let mut eos_pages = 0u64;
    demux
        .push(bytes, &mut |p| {
            if packets == 0 {
                // The decoder's own header check: a head it would refuse is not worth keeping.
                head_first = crate::codec::opus::OpusHead::parse(&p.data).is_ok();
            }
            // Packets of the EOS page itself carry the flag too; anything else after it is
            // a second stream or junk that OpenAI never sends.
            if after_eos && !p.eos {
                eos_pages += 1;
            }
            after_eos |= p.eos;
            packets += 1;
        })
        .map_err(|e| e.to_string())?;
    demux.finish().map_err(|e| e.to_string())?;
    let stats = demux.stats();
    if !head_first {
        return Err("the first packet is not an OpusHead herald can play".into());
    }
    if stats.crc_errors > 0 || stats.skipped_bytes > 0 || stats.sequence_gaps > 0 {
        return Err(format!(
            "damaged Ogg: {} CRC error(s), {} skipped byte(s), {} missing page(s)",
            stats.crc_errors, stats.skipped_bytes, stats.sequence_gaps
        ));
    }
    if !stats.eos_seen {
        return Err("the Ogg stream has no end-of-stream page (truncated)".into());
    }
    if packets < 3 {
        return Err(format!(
            "only {packets} packet(s): no audio after the headers"
        ));
    }
    if eos_pages > 0 {
        return Err("data after the end-of-stream page".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    last_use: SystemTime,
    /// Tie-breaker for equal times: order of use.
    seq: u64,
    pinned: bool,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    seq: u64,
}

impl Index {
    fn remove(&mut self, name: &str) -> Option<Entry> {
        let e = self.entries.remove(name)?;
        self.total = self.total.saturating_sub(e.size);
        Some(e)
    }

    /// Records `name` (replacing any entry of that name) as the most recently used.
    fn insert(&mut self, name: String, size: u64, last_use: SystemTime, pinned: bool) {
        self.remove(&name);
        self.seq += 1;
        self.total += size;
        let seq = self.seq;
        self.entries.insert(
            name,
            Entry {
                size,
                last_use,
                seq,
                pinned,
            },
        );
    }
}

/// A size-capped, verified, atomic disk cache of speech audio. Methods do blocking file
/// I/O: call them from `spawn_blocking` in async code ([`CachingSource`] does).
#[derive(Debug)]
pub struct AudioCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    temp_counter: AtomicU64,
}

impl AudioCache {
    /// Opens (creating it if needed) the cache in `dir`, indexes the entries there by last
    /// use (file mtime), deletes leftover temp files and evicts down to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<AudioCache, CacheError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut index = Index::default();
        let mut found = Vec::new();
        for item in fs::read_dir(dir).map_err(io("read", dir))? {
            let item = item.map_err(io("read", dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if name.ends_with(TEMP_SUFFIX) {
                // An interrupted write: never trusted, never renamed into place.
                tracing::warn!(file = %path.display(), "audio cache: deleting an unfinished write");
                let _ = fs::remove_file(&path);
                continue;
            }
            if parse_name(&name).is_none() {
                continue; // Not ours; leave it alone.
            }
            let Ok(meta) = item.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, name, meta.len()));
        }
        found.sort();
        for (mtime, name, size) in found {
            index.insert(name, size, mtime, false);
        }
        let cache = AudioCache {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(index),
            temp_counter: AtomicU64::new(0),
        };
        {
            let mut idx = cache.lock();
            // Over the cap (e.g. the cap was lowered): evict least recently used.
            while idx.total > max_bytes {
                let Some(victim) = lru(&idx, None, true) else {
                    break;
                };
                cache.evict(&mut idx, &victim);
            }
        }
        Ok(cache)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path an entry lives at (whether or not it exists).
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Total bytes of indexed entries.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// True if an entry for `key` is indexed (not yet verified).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.lock().entries.contains_key(&key.file_name())
    }

    /// Marks an entry as pinned (a preset: evicted last) or not; false if it is absent.
    pub fn pin(&self, key: &CacheKey, pinned: bool) -> bool {
        match self.lock().entries.get_mut(&key.file_name()) {
            Some(e) => {
                e.pinned = pinned;
                true
            }
            None => false,
        }
    }

    /// The verified audio for `key` (PCM without its trailer), or `None` if absent. A file
    /// that fails verification is deleted and logged, and `None` returned so the caller
    /// re-fetches. Marks the entry as just used.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let name = key.file_name();
        let path = self.dir.join(&name);
        // Read and verify without the index lock: both are slow on an SD card, and the
        // index is only touched once the outcome is known (as `put` does).
        let mut bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(&name);
                return Ok(None);
            }
            Err(source) => {
                return Err(CacheError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        if let Err(reason) = verify(key.format, &bytes) {
            tracing::warn!(file = %path.display(), %reason, "audio cache: deleting a damaged entry; it will be fetched again");
            let _ = fs::remove_file(&path);
            self.lock().remove(&name);
            return Ok(None);
        }
        let now = SystemTime::now();
        let mut idx = self.lock();
        // A file that appeared behind the index's back is adopted.
        let pinned = idx.entries.get(&name).is_some_and(|e| e.pinned);
        idx.insert(name, bytes.len() as u64, now, pinned);
        drop(idx);
        // Persist the use for the next start's LRU order; failure only costs ordering.
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(now);
        }
        if key.format == AudioFormat::Pcm {
            bytes.truncate(bytes.len() - PCM_TRAILER);
        }
        Ok(Some(bytes))
    }

    /// Stores `audio` for `key` atomically after verifying it, evicting least recently used
    /// entries (unpinned first) to stay within the cap. `pinned` marks a preset.
    pub fn put(&self, key: &CacheKey, audio: &[u8], pinned: bool) -> Result<(), CacheError> {
        let mut stored = audio.to_vec();
        if key.format == AudioFormat::Pcm {
            stored.extend_from_slice(Sha256::digest(audio).as_slice());
        }
        verify(key.format, &stored).map_err(|reason| CacheError::Invalid {
            key: key.to_string(),
            reason,
        })?;
        let size = stored.len() as u64;
        if size > self.max_bytes {
            return Err(CacheError::TooLarge {
                key: key.to_string(),
                bytes: size,
                max: self.max_bytes,
            });
        }
        let name = key.file_name();
        let now = SystemTime::now();
        // The slow part (write + fsync, tens of ms on an SD card) runs without the lock, so
        // a press reading another entry never waits behind it.
        let tmp = self.write_temp(&name, &stored, now)?;
        let dest = self.dir.join(&name);
        let mut idx = self.lock();
        let replaced = idx.entries.get(&name).map_or(0, |e| e.size);
        while idx.total - replaced + size > self.max_bytes {
            match lru(&idx, Some(&name), pinned) {
                Some(victim) => self.evict(&mut idx, &victim),
                None => {
                    let _ = fs::remove_file(&tmp);
                    let pinned_bytes = idx
                        .entries
                        .values()
                        .filter(|e| e.pinned)
                        .map(|e| e.size)
                        .sum();
                    return Err(CacheError::Full {
                        key: key.to_string(),
                        bytes: size,
                        pinned: pinned_bytes,
                        max: self.max_bytes,
                    });
                }
            }
        }
        if let Err(source) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Io {
                op: "rename",
                path: dest,
                source,
            });
        }
        idx.insert(name, size, now, pinned);
        drop(idx);
        // Makes the rename survive a power cut. The file is complete and in place either
        // way, so a failure here only costs durability: log it, do not fail the store.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), "audio cache: cannot fsync the directory: {e}");
        }
        Ok(())
    }

    /// Deletes an entry (e.g. a preset that no longer exists); true if there was one.
    pub fn remove(&self, key: &CacheKey) -> bool {
        let name = key.file_name();
        let mut idx = self.lock();
        let existed = idx.remove(&name).is_some();
        let _ = fs::remove_file(self.dir.join(&name));
        existed
    }

    /// Writes and fsyncs a temp file in the cache directory (same filesystem, so the rename
    /// into place is atomic). A crash before the rename leaves only a temp file, which is
    /// never read and is deleted at the next open.
    fn write_temp(&self, name: &str, bytes: &[u8], now: SystemTime) -> Result<PathBuf, CacheError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}.{n}{TEMP_SUFFIX}", std::process::id()));
        let io = |op: &'static str| {
            let path = tmp.clone();
            move |source| CacheError::Io { op, path, source }
        };
        let create = || File::options().write(true).create_new(true).open(&tmp);
        let result = (|| {
            let mut f = match create() {
                // The directory was removed under us (someone cleaning up): make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(&self.dir).map_err(io("create"))?;
                    create()
                }
                other => other,
            }
            .map_err(io("create"))?;
            f.write_all(bytes).map_err(io("write"))?;
            // Last use = now, kept in the mtime for the next start's LRU order.
            let _ = f.set_modified(now);
            f.sync_all().map_err(io("fsync"))
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn evict(&self, idx: &mut Index, name: &str) {
        if let Some(e) = idx.remove(name) {
            tracing::info!(
                file = name,
                bytes = e.size,
                pinned = e.pinned,
                "audio cache: evicting"
            );
        }
        let _ = fs::remove_file(self.dir.join(name));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index inconsistent with anything
        // but the disk, which every read re-checks; keep going.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The next eviction victim: least recently used unpinned entry, then (if `may_take_pinned`)
/// the least recently used pinned one; never `except`.
fn lru(idx: &Index, except: Option<&str>, may_take_pinned: bool) -> Option<String> {
    idx.entries
        .iter()
        .filter(|(n, e)| Some(n.as_str()) != except && (may_take_pinned || !e.pinned))
        .min_by_key(|(_, e)| (e.pinned, e.last_use, e.seq))
        .map(|(n, _)| n.clone())
}

/// `<64 hex>.opus` / `<64 hex>.pcm` → the format.
fn parse_name(name: &str) -> Option<AudioFormat> {
    let (hex, ext) = name.split_once('.')?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ext.parse().ok()
}

/// A [`SpeechSource`] that serves from an [`AudioCache`] when it can and otherwise streams
/// from `inner`, storing the stream once it completed and verified. Cache failures are
/// logged and never fail the request. Everything opened through it is stored: route only
/// presets and `"cache": true` requests through it, everything else straight to `inner`.
#[derive(Clone)]
pub struct CachingSource {
    inner: Arc<dyn SpeechSource>,
    cache: Arc<AudioCache>,
    api_base: String,
    writes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for CachingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingSource")
            .field("cache", &self.cache.dir())
            .field("api_base", &self.api_base)
            .finish()
    }
}

impl CachingSource {
    /// Wraps `inner`, whose requests go to `api_base` (part of every key).
    pub fn new(inner: Arc<dyn SpeechSource>, cache: Arc<AudioCache>, api_base: &str) -> Self {
        CachingSource {
            inner,
            cache,
            api_base: api_base.to_string(),
            writes: Arc::default(),
        }
    }

    /// The cache behind this source.
    pub fn cache(&self) -> &Arc<AudioCache> {
        &self.cache
    }

    /// The key `req` is stored under.
    pub fn key(&self, req: &SpeechRequest) -> CacheKey {
        key(&self.api_base, req)
    }

    /// The verified cached audio under `key`, if any (errors are logged and count as a
    /// miss).
    pub async fn lookup(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let cache = self.cache.clone();
        let k = key.clone();
        match tokio::task::spawn_blocking(move || cache.get(&k)).await {
            Ok(Ok(hit)) => hit,
            Ok(Err(e)) => {
                tracing::warn!("{e}; using the network");
                None
            }
            Err(e) => {
                tracing::warn!("audio cache lookup failed: {e}; using the network");
                None
            }
        }
    }

    /// Opens `req`: from the cache if present (`attempts` is 0), else live, storing the
    /// audio when the stream completes intact. `pinned` marks preset audio.
    pub async fn open_cached(
        &self,
        req: &SpeechRequest,
        pinned: bool,
    ) -> Result<SpeechStream, TtsError> {
        let started = Instant::now();
        let key = self.key(req);
        if let Some(audio) = self.lookup(&key).await {
            if pinned {
                self.cache.pin(&key, true);
            }
            let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from(audio))]));
            return Ok(SpeechStream {
                body,
                attempts: 0,
                time_to_first_byte: started.elapsed(),
            });
        }
        let live = self.inner.open(req).await?;
        let tee = Tee {
            inner: live.body,
            buf: Some(Vec::new()),
            cache: self.cache.clone(),
            key,
            pinned,
            writes: self.writes.clone(),
        };
        Ok(SpeechStream {
            body: Box::pin(tee),
            attempts: live.attempts,
            time_to_first_byte: live.time_to_first_byte,
        })
    }

    /// Makes sure `req` is cached (fetching the whole stream if not), pinned as requested.
    /// Returns true if it was fetched, false if it was already cached.
    pub async fn ensure_cached(
        &self,
        req: &SpeechRequest,
        pinned: bool,
    ) -> Result<bool, RenderError> {
        let k = self.key(req);
        if self.lookup(&k).await.is_some() {
            self.cache.pin(&k, pinned);
            return Ok(false);
        }
        let mut live = self.inner.open(req).await.map_err(RenderError::Tts)?;
        let mut audio = Vec::new();
        while let Some(chunk) = live.body.next().await {
            audio.extend_from_slice(&chunk.map_err(RenderError::Tts)?);
        }
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.put(&k, &audio, pinned))
            .await
            .map_err(|e| RenderError::Join(e.to_string()))?
            .map_err(RenderError::Cache)?;
        Ok(true)
    }

    /// Waits until every store started by a finished stream is done (tests, shutdown).
    pub async fn settle(&self) {
        let pending: Vec<_> = {
            let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            w.drain(..).collect()
        };
        for h in pending {
            let _ = h.await;
        }
    }
}

impl SpeechSource for CachingSource {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(self.open_cached(req, false))
    }
}

/// Why a preset could not be put into the cache.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Synthesis failed.
    #[error(transparent)]
    Tts(TtsError),
    /// The audio could not be stored.
    #[error(transparent)]
    Cache(CacheError),
    /// The storing task died.
    #[error("audio cache write task failed: {0}")]
    Join(String),
}

/// Passes a live stream through, keeping a copy that is stored when the stream ends
/// without error (`put` verifies it again).
struct Tee {
    inner: ByteStream,
    /// `None` once the copy was abandoned (error, too big, or already stored).
    buf: Option<Vec<u8>>,
    cache: Arc<AudioCache>,
    key: CacheKey,
    pinned: bool,
    writes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Stream for Tee {
    type Item = Result<Bytes, TtsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = this.inner.as_mut().poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(chunk))) => {
                let limit = this.cache.max_bytes;
                if let Some(buf) = &mut this.buf {
                    if (buf.len() + chunk.len()) as u64 > limit {
                        this.buf = None;
                    } else {
                        buf.extend_from_slice(chunk);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.buf = None,
            Poll::Ready(None) => {
                if let Some(audio) = this.buf.take() {
                    let cache = this.cache.clone();
                    let k = this.key.clone();
                    let pinned = this.pinned;
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        let h = rt.spawn_blocking(move || {
                            if let Err(e) = cache.put(&k, &audio, pinned) {
                                tracing::warn!("{e}");
                            }
                        });
                        let mut w = this.writes.lock().unwrap_or_else(|p| p.into_inner());
                        w.retain(|h| !h.is_finished());
                        w.push(h);
                    }
                }
            }
            Poll::Pending => {}
        }
        item
    }
}
