//! Real Snapcast on loopback for tests and benches: a `snapserver` with its own config in a
//! temp dir on free ports (HTTP off), `snapclient` "rooms" each playing through alsa-lib into
//! a FIFO-clocked PCM (docs/TESTING-AUDIO.md), a music feeder, and helpers to find an
//! announcement in what a room played.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Capture, FifoClock};

/// snapserver's end-to-end buffer in tests (ms): shorter than the 1000 ms default, so the
/// test binary stays quick; the mechanism is the same.
pub const TEST_BUFFER_MS: u32 = 400;

/// How far behind snapclient's idea of "now playing" the [`Dac::NoDelay`] rig's "DAC" hears
/// a sample: the `null` slave under the `file` plugin reports no delay (`snd_pcm_delay` 0),
/// while the file plugin holds one ALSA buffer (snapclient's default 80 ms) and the pipe
/// 8192 bytes (2048 stereo frames, 42.7 ms), less the clock's 10 ms read-ahead. For a DAC
/// that does not report its delay, snapclient's `--latency` is the documented fix, and it is
/// used the same way here. How much the file plugin holds varies by up to a period, so this
/// rig cannot keep rooms within a few ms.
pub const RIG_LATENCY_MS: u32 = 113;

/// How often a room's clock reads its FIFO when the device reports its delay: the pipe's
/// fill is up to one tick short of what is still to be heard (a sound card's pointer moves
/// in steps of about a millisecond).
pub const DELAY_TICK: Duration = Duration::from_millis(1);

/// The kind of "DAC" a room plays into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dac {
    /// Reports what it holds as its delay, as a sound card does: the test plugin writing
    /// into the FIFO, its pipe's fill reported by `snd_pcm_delay`.
    ReportsDelay,
    /// The `file` PCM over `null`: reports no delay, made up for with `--latency`.
    NoDelay,
}

pub fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether the tests can run here. In CI (`CI` set) they must: a missing package fails.
pub fn snapcast_installed() -> bool {
    let ok = have("snapserver") && have("snapclient");
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "snapserver/snapclient are not installed: scripts/setup.sh installs them"
    );
    if !ok {
        eprintln!("skipped: snapserver/snapclient not installed (scripts/setup.sh installs them)");
    }
    ok
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A snapserver with its own config and data dir, on free loopback ports; killed on drop.
pub struct SnapServer {
    child: Child,
    /// Its config, data, log and the rooms' logs.
    pub dir: tempfile::TempDir,
    /// Where snapclients connect.
    pub stream_port: u16,
    /// JSON-RPC over TCP.
    pub control_port: u16,
    /// The announcement stream's `tcp://…?mode=server` source (herald's `server`).
    pub source_port: u16,
}

/// Which streams a test's snapserver has.
pub enum Streams {
    /// The announcement stream alone.
    Announcements,
    /// A music pipe only: no announcement stream.
    MusicOnly,
    /// Announcements ahead of music through a `meta` stream.
    Meta,
}

impl SnapServer {
    /// `with_source`: false starts it without the announcement stream (only a pipe).
    /// The announcement stream alone (`with_source`), or only a music pipe; PCM transport
    /// and the tests' buffer.
    pub fn start(with_source: bool) -> SnapServer {
        let streams = if with_source {
            Streams::Announcements
        } else {
            Streams::MusicOnly
        };
        SnapServer::with(streams, "pcm", TEST_BUFFER_MS)
    }

    /// With `streams`, the transport `codec` and snapserver's `buffer` (ms).
    pub fn with(streams: Streams, codec: &str, buffer_ms: u32) -> SnapServer {
        let dir = tempfile::tempdir().unwrap();
        let (stream_port, control_port, source_port) = (free_port(), free_port(), free_port());
        let music = dir.path().join("music.fifo");
        let source = match streams {
            Streams::Announcements => {
                format!("source = tcp://127.0.0.1:{source_port}?name=Announcements&mode=server\n")
            }
            Streams::MusicOnly => {
                format!(
                    "source = pipe://{}?name=Music&mode=create\n",
                    music.display()
                )
            }
            // docs/MULTIROOM.md's setup: both inputs codec=null, clients on the meta stream.
            Streams::Meta => format!(
                "source = tcp://127.0.0.1:{source_port}?name=Announcements&mode=server&codec=null\n\
                 source = pipe://{}?name=Music&mode=create&codec=null\n\
                 source = meta:///Announcements/Music?name=House\n",
                music.display()
            ),
        };
        let conf = format!(
            "[server]\ndatadir = {data}\n\n[http]\nenabled = false\n\n[tcp]\nenabled = true\nbind_to_address = 127.0.0.1\nport = {control_port}\n\n\
             [stream]\nbind_to_address = 127.0.0.1\nport = {stream_port}\n{source}sampleformat = 48000:16:2\ncodec = {codec}\nbuffer = {buffer_ms}\n\n\
             [logging]\nsink = stderr\nfilter = *:info\n",
            data = dir.path().display()
        );
        std::fs::write(dir.path().join("snapserver.conf"), conf).unwrap();
        let child = spawn_snapserver(dir.path());
        let s = SnapServer {
            child,
            dir,
            stream_port,
            control_port,
            source_port,
        };
        s.wait_rpc(|_| true);
        s
    }

    /// Kills it (a crash, a power cut of the server host).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same config and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_snapserver(self.dir.path());
        self.wait_rpc(|_| true);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("snapserver.log")).unwrap_or_default()
    }

    /// `Server.GetStatus` over the control port (`None` while it does not answer).
    pub fn status(&self) -> Option<Value> {
        let mut c = TcpStream::connect(("127.0.0.1", self.control_port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let req = json!({"id": 1, "jsonrpc": "2.0", "method": "Server.GetStatus"});
        c.write_all(format!("{req}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Waits until the status satisfies `ok`; panics with the log after 10 s.
    pub fn wait_rpc(&self, ok: impl Fn(&Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.status() {
                if ok(&st) {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "snapserver not ready: {:?}\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` clients are connected.
    pub fn wait_clients(&self, n: usize) {
        self.wait_rpc(|st| {
            let groups = st["result"]["server"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let connected = groups
                .iter()
                .flat_map(|g| g["clients"].as_array().cloned().unwrap_or_default())
                .filter(|c| c["connected"] == true)
                .count();
            connected >= n
        });
    }
}

/// snapserver with `dir`/snapserver.conf, logging to `dir`/snapserver.log (appended).
pub fn spawn_snapserver(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("snapserver.log"))
        .unwrap();
    Command::new("snapserver")
        .arg("-c")
        .arg(dir.join("snapserver.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn snapserver")
}

impl Drop for SnapServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One room: a snapclient playing into a FIFO PCM, and the clock that drains it.
pub struct Room {
    child: Child,
    clock: Option<FifoClock>,
}

impl Room {
    /// A room on a device that reports its delay ([`Dac::ReportsDelay`]).
    pub fn start(server: &SnapServer, n: usize) -> Room {
        Room::start_on(server, n, Dac::ReportsDelay)
    }

    /// A room playing into `dac`.
    pub fn start_on(server: &SnapServer, n: usize, dac: Dac) -> Room {
        let fifo = super::claim_fifo();
        // The reader first: the PCM opens the FIFO for writing when snapclient opens it.
        let (clock, pcm, latency_ms) = match dac {
            Dac::ReportsDelay => (
                FifoClock::start_with_tick(&fifo.path, 48_000, 2, DELAY_TICK),
                fifo.delay_pcm,
                0,
            ),
            Dac::NoDelay => (
                FifoClock::start(&fifo.path, 48_000, 2),
                fifo.pcm,
                RIG_LATENCY_MS,
            ),
        };
        let (var, value) = super::alsa_env().env_var();
        let log = server.dir.path().join(format!("room{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("snapclient")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(server.stream_port.to_string())
            .args(["--hostID", &format!("room{n}"), "--player", "alsa"])
            .args(["-s", &pcm, "--logsink", "stderr"])
            .args(["--latency", &latency_ms.to_string()])
            .env(var, value)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn snapclient");
        Room {
            child,
            clock: Some(clock),
        }
    }

    /// Stops the client and returns what the room's "DAC" played.
    pub fn played(mut self) -> Capture {
        // SIGTERM: snapclient closes the PCM, so the file plugin writes out what it holds.
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        self.clock
            .take()
            .unwrap()
            .finish(Duration::from_millis(500))
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When frame `i` of a capture reached the "DAC": the clock counts a gap (snapclient not
/// writing, e.g. between announcements) as played, while the samples do not hold it.
pub fn at(cap: &Capture, i: usize) -> Instant {
    let rate = f64::from(cap.rate);
    let frames = i as f64 + gap_frames_before(cap, i) as f64;
    cap.started_at.unwrap() + Duration::from_secs_f64(frames / rate)
}

/// The frame of a capture that reached the "DAC" at `t` (the first after it, in a gap).
pub fn frame_at(cap: &Capture, t: Instant) -> usize {
    let rate = f64::from(cap.rate);
    let played = (t
        .saturating_duration_since(cap.started_at.unwrap())
        .as_secs_f64()
        * rate) as u64;
    let mut gaps = 0u64;
    for g in &cap.gaps {
        let start = (g.at.as_secs_f64() * rate) as u64;
        if start >= played {
            break;
        }
        gaps += g.frames.min(played - start);
    }
    (played - gaps) as usize
}

/// Gap frames the clock counted before sample frame `i`.
fn gap_frames_before(cap: &Capture, i: usize) -> u64 {
    let rate = f64::from(cap.rate);
    let mut gaps = 0u64;
    for g in &cap.gaps {
        // Where the gap falls among the samples: its clock position less earlier gaps.
        let index = ((g.at.as_secs_f64() * rate) as u64).saturating_sub(gaps);
        if index > i as u64 {
            break;
        }
        gaps += g.frames;
    }
    gaps
}

/// Where `reference` starts in a room's capture (frame index), found by aligning its
/// first loud stretch; `None` if it is not there.
pub fn locate(room: &[i16], reference: &[i16]) -> Option<usize> {
    let loud = |s: &i16| s.unsigned_abs() > 64;
    let first_ref = reference.iter().position(loud)?;
    let first_room = room.iter().position(loud)?;
    let guess = first_room.checked_sub(first_ref)?;
    let window = &reference[first_ref..(first_ref + 2400).min(reference.len())];
    (guess.saturating_sub(480)..guess + 480)
        .filter(|&off| off + first_ref + window.len() <= room.len())
        .min_by_key(|&off| {
            let at = &room[off + first_ref..off + first_ref + window.len()];
            at.iter()
                .zip(window)
                .map(|(a, b)| (i64::from(*a) - i64::from(*b)).abs())
                .sum::<i64>()
        })
}

/// A room's left and right channels.
pub fn channels(cap: &Capture) -> (Vec<i16>, Vec<i16>) {
    let left = cap.samples.iter().step_by(2).copied().collect();
    let right = cap.samples.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

/// Feeds snapserver's music pipe with a quiet square wave (±40, under the loudness the
/// announcement is located by) at real time until dropped.
pub struct Music {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Music {
    pub fn start(server: &SnapServer) -> Music {
        use std::sync::atomic::{AtomicBool, Ordering};
        let path = server.dir.path().join("music.fifo");
        let until = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            assert!(Instant::now() < until, "snapserver made no music pipe");
            std::thread::sleep(Duration::from_millis(20));
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let period: Vec<u8> = (0..960)
                .flat_map(|i| {
                    let v: i16 = if i % 48 < 24 { 40 } else { -40 };
                    [v.to_le_bytes(), v.to_le_bytes()].concat()
                })
                .collect();
            let t0 = Instant::now();
            let mut sent = 0u32;
            while !flag.load(Ordering::Relaxed) {
                if pipe.write_all(&period).is_err() {
                    return;
                }
                sent += 1;
                let due = t0 + Duration::from_millis(20) * sent;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        });
        Music {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Music {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
