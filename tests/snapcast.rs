//! House-wide announcements through Snapcast, end to end on loopback: the real `herald
//! serve`, the real Debian `snapserver` (its own config in a temp dir, free ports, HTTP
//! off) and two real `snapclient` processes, each playing through alsa-lib into its own
//! FIFO-clocked PCM (`herald_fifoN`, drained at 48 kHz by a `FifoClock` standing in for a
//! room's DAC). The emulator stands in for OpenAI (its `tone` voice, 60 ms a character).
//!
//! Skipped with a message when snapserver/snapclient are not installed (scripts/setup.sh
//! installs them; CI always has them).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Served;
use support::{Capture, FifoClock};

const KEY: &str = "sk-snapcast-0123456789abcdefSECRET";
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// About 1.3 s of the emulator's tone.
const PHRASE: &str = "Dinner is ready, everyone.";
/// snapserver's end-to-end buffer in these tests (ms): shorter than the 1000 ms default,
/// so the binary stays quick; the mechanism is the same.
const BUFFER_MS: u32 = 400;
/// Where the rooms' first samples may differ (the bar).
const ONSET_SPREAD: Duration = Duration::from_millis(5);
/// How late `finished` may come after the last sample was heard in the rooms (20 ms of
/// snapserver's chunk, 20 ms of margin, scheduling; docs/MULTIROOM.md says 20–50 ms).
const FINISH_TOLERANCE: Duration = Duration::from_millis(150);
/// How far behind snapclient's idea of "now playing" this rig's "DAC" hears a sample: the
/// FIFO PCM's `null` slave reports no delay (`snd_pcm_delay` 0), while the file plugin holds
/// one ALSA buffer (snapclient's default 80 ms) and the pipe 8192 bytes (2048 stereo frames,
/// 42.7 ms), less the clock's 10 ms read-ahead. A real DAC reports its delay; for one that
/// does not, snapclient's `--latency` is the documented fix, and it is used the same way here.
const RIG_LATENCY_MS: u32 = 113;

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether the tests can run here. In CI (`CI` set) they must: a missing package fails.
fn snapcast_installed() -> bool {
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A snapserver with its own config and data dir, on free loopback ports; killed on drop.
struct SnapServer {
    child: Child,
    dir: tempfile::TempDir,
    /// Where snapclients connect.
    stream_port: u16,
    /// JSON-RPC over TCP.
    control_port: u16,
    /// The announcement stream's `tcp://…?mode=server` source (herald's `server`).
    source_port: u16,
}

/// Which streams a test's snapserver has.
enum Streams {
    /// The announcement stream alone.
    Announcements,
    /// A music pipe only: no announcement stream.
    MusicOnly,
    /// Announcements ahead of music through a `meta` stream.
    Meta,
}

impl SnapServer {
    /// `with_source`: false starts it without the announcement stream (only a pipe).
    fn start(with_source: bool) -> SnapServer {
        SnapServer::with(if with_source {
            Streams::Announcements
        } else {
            Streams::MusicOnly
        })
    }

    fn with(streams: Streams) -> SnapServer {
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
             [stream]\nbind_to_address = 127.0.0.1\nport = {stream_port}\n{source}sampleformat = 48000:16:2\ncodec = pcm\nbuffer = {BUFFER_MS}\n\n\
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
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same config and ports.
    fn restart(&mut self) {
        self.kill();
        self.child = spawn_snapserver(self.dir.path());
        self.wait_rpc(|_| true);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("snapserver.log")).unwrap_or_default()
    }

    /// `Server.GetStatus` over the control port (`None` while it does not answer).
    fn status(&self) -> Option<Value> {
        let mut c = TcpStream::connect(("127.0.0.1", self.control_port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let req = json!({"id": 1, "jsonrpc": "2.0", "method": "Server.GetStatus"});
        c.write_all(format!("{req}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Waits until the status satisfies `ok`; panics with the log after 10 s.
    fn wait_rpc(&self, ok: impl Fn(&Value) -> bool) {
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
    fn wait_clients(&self, n: usize) {
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
fn spawn_snapserver(dir: &Path) -> Child {
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
struct Room {
    child: Child,
    clock: Option<FifoClock>,
}

impl Room {
    fn start(server: &SnapServer, n: usize) -> Room {
        let fifo = support::claim_fifo();
        // The reader first: the file PCM opens the FIFO for writing when snapclient opens it.
        let clock = FifoClock::start(&fifo.path, 48_000, 2);
        let (var, value) = support::alsa_env().env_var();
        let log = server.dir.path().join(format!("room{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("snapclient")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(server.stream_port.to_string())
            .args(["--hostID", &format!("room{n}"), "--player", "alsa"])
            .args(["-s", &fifo.pcm, "--logsink", "stderr"])
            .args(["--latency", &RIG_LATENCY_MS.to_string()])
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
    fn played(mut self) -> Capture {
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

fn config(sock: &Path, scenario: &str, server_port: u16, extra: &str) -> String {
    format!(
        "[api]\napi_base = \"{}\"\nmax_attempts = 1\n\n[audio]\ndevice = \"herald_null\"\nrealtime_priority = 0\n\n[cache]\ndir = \"{}\"\n\n\
         [daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n\n\
         [outputs.house]\ntype = \"snapcast\"\nserver = \"127.0.0.1:{server_port}\"\nformat = \"48000:16:2\"\nlatency_ms = {BUFFER_MS}\nlead_in_ms = 100\n{extra}",
        support::emulator::shared(KEY).base_url(scenario),
        sock.with_extension("cache").display(),
        sock.display()
    )
}

/// `herald serve` with output `house` at `server_port`; `scenario` is the emulator's (each
/// test its own, so the request count is its own).
fn serve(scenario: &str, server_port: u16, extra: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let text = config(&sock, scenario, server_port, extra);
    Served::start(dir, sock, &text, KEY, &[], Duration::from_secs(20))
}

/// Sends one request; returns every reply up to its terminal one, each with when it came.
fn request(served: &Served, v: Value) -> Vec<(Instant, Value)> {
    let mut w = UnixStream::connect(&served.sock).unwrap();
    w.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    w.write_all(format!("{v}\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    for line in BufReader::new(w).lines() {
        let line = line.expect("no reply in time");
        let r: Value = serde_json::from_str(&line).unwrap();
        let terminal = matches!(
            r["event"].as_str(),
            Some("finished" | "failed" | "cancelled" | "interrupted" | "expired")
        );
        out.push((Instant::now(), r));
        if terminal {
            return out;
        }
    }
    panic!("the daemon closed the connection: {out:?}")
}

/// When frame `i` of a capture reached the "DAC".
fn at(cap: &Capture, i: usize) -> Instant {
    cap.started_at.unwrap() + Duration::from_secs_f64(i as f64 / f64::from(cap.rate))
}

/// What herald plays for `text`, from its own WAV output (mono, 48 kHz): the reference
/// each room's capture must match sample for sample.
fn reference(served: &Served, text: &str) -> Vec<i16> {
    let wav = served.dir.path().join("reference.wav");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&served.config)
        .args(["speak", "--out"])
        .arg(&wav)
        .arg(text)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (spec, samples) = support::reference::read_wav(&wav);
    assert_eq!((spec.channels, spec.sample_rate), (1, 48_000));
    samples
}

/// Where `reference` starts in a room's capture (frame index), found by aligning its
/// first loud stretch; `None` if it is not there.
fn locate(room: &[i16], reference: &[i16]) -> Option<usize> {
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
fn channels(cap: &Capture) -> (Vec<i16>, Vec<i16>) {
    let left = cap.samples.iter().step_by(2).copied().collect();
    let right = cap.samples.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

fn emulator_requests(scenario: &str) -> u64 {
    support::emulator::shared(KEY)
        .stats()
        .requests_for(scenario)
}

/// The sync test's emulator scenario (the tone, fast).
const SYNC: &str = "fast,tone,id=sync";

#[test]
fn a_house_announcement_is_heard_in_every_room_complete_in_sync_and_finished_after_it() {
    if !snapcast_installed() {
        return;
    }
    let server = SnapServer::start(true);
    let rooms = [Room::start(&server, 0), Room::start(&server, 1)];
    server.wait_clients(2);
    let served = serve(SYNC, server.source_port, "");
    let reference = reference(&served, PHRASE);
    let before = emulator_requests(SYNC);

    let replies = request(
        &served,
        json!({"text": PHRASE, "to": "house", "id": "dinner"}),
    );
    let events: Vec<&str> = replies
        .iter()
        .map(|(_, r)| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["queued", "started", "finished"], "{replies:?}");
    let (finished_at, finished) = &replies[2];
    assert_eq!(finished["output"], "house", "{finished}");
    assert_eq!(finished["stalls"], 0, "{finished}");
    assert_eq!(
        emulator_requests(SYNC) - before,
        1,
        "one announcement for every room is one API request"
    );

    // Give the rooms the tail of silence, then stop them (which flushes the rig).
    std::thread::sleep(Duration::from_millis(300));
    let [a, b] = rooms;
    let caps = [a.played(), b.played()];
    let mut onsets = Vec::new();
    for (n, cap) in caps.iter().enumerate() {
        let (left, right) = channels(cap);
        assert_eq!(left, right, "room {n}: the mono voice is on both channels");
        let start = locate(&left, &reference)
            .unwrap_or_else(|| panic!("room {n} never played the announcement: {cap:?}"));
        let heard = &left[start..(start + reference.len()).min(left.len())];
        assert_eq!(heard.len(), reference.len(), "room {n}: the end is missing");
        let wrong = heard
            .iter()
            .zip(&reference)
            .filter(|(a, b)| (i32::from(**a) - i32::from(**b)).abs() > 2)
            .count();
        assert_eq!(
            wrong, 0,
            "room {n}: {wrong} samples differ from what herald sent"
        );
        let end = start + reference.len();
        let until = Duration::from_secs_f64(end as f64 / 48_000.0);
        assert!(
            cap.gaps.iter().all(|g| g.at >= until),
            "room {n}: a gap inside the announcement (it ends {until:?} in, at frame {end} of {}): {:?}",
            left.len(),
            cap.gaps
        );
        let last = at(cap, end);
        assert!(
            *finished_at >= last,
            "room {n}: finished came {:?} before the last sample was heard",
            last.duration_since(*finished_at)
        );
        assert!(
            finished_at.duration_since(last) <= FINISH_TOLERANCE,
            "room {n}: finished came {:?} after the last sample (allowed {FINISH_TOLERANCE:?})",
            finished_at.duration_since(last)
        );
        onsets.push(at(cap, start));
    }
    let spread = onsets[0].max(onsets[1]) - onsets[0].min(onsets[1]);
    assert!(spread <= ONSET_SPREAD, "the rooms started {spread:?} apart");
    eprintln!("onset spread {spread:?}");
}

/// About 3.5 s of tone: long enough to cut the connection in the middle.
const LONG: &str = "This announcement runs long enough to pull the plug in the middle of it.";

fn terminal(replies: &[(Instant, Value)]) -> &Value {
    &replies.last().unwrap().1
}

#[test]
fn an_unreachable_snapserver_fails_the_job_naming_the_output_and_server_or_plays_here() {
    if !snapcast_installed() {
        return;
    }
    // Nothing listens on the port: snapserver is down.
    let port = free_port();
    let served = serve("fast,tone,id=down", port, "");
    let r = request(&served, json!({"text": PHRASE, "to": "house", "id": "a"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap();
    for part in [
        "'house'",
        &format!("127.0.0.1:{port}"),
        "snapserver",
        "refused",
    ] {
        assert!(reason.contains(part), "{part} missing from: {reason}");
    }
    // An unknown output is refused up front, naming the field and what is configured.
    let r = request(&served, json!({"text": PHRASE, "to": "garage", "id": "b"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("to: unknown output 'garage'") && reason.contains("allowed: local, house"),
        "{reason}"
    );
    // The daemon serves on, and a local job plays on this box's device.
    let r = request(&served, json!({"text": PHRASE, "id": "c"}));
    assert_eq!(terminal(&r)["event"], "finished", "{r:?}");
    assert!(terminal(&r).get("output").is_none(), "{r:?}");
    drop(served);

    // With fallback_to = "local" the same announcement plays here, and says so.
    let served = serve("fast,tone,id=down", port, "fallback_to = \"local\"\n");
    let r = request(&served, json!({"text": PHRASE, "to": "house", "id": "d"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "finished", "{end}");
    assert_eq!(end["output"], "local", "{end}");
    let why = end["fallback"].as_str().unwrap();
    assert!(
        why.contains("output 'house' unavailable") && why.contains(&format!("127.0.0.1:{port}")),
        "{why}"
    );
}

#[test]
fn a_snapserver_without_the_announcement_stream_is_a_clear_failure() {
    if !snapcast_installed() {
        return;
    }
    // snapserver runs (clients could connect) but has no tcp source on that port.
    let server = SnapServer::start(false);
    let served = serve("fast,tone,id=nostream", server.source_port, "");
    let r = request(&served, json!({"text": PHRASE, "to": "house", "id": "a"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("'house'")
            && reason.contains(&format!("127.0.0.1:{}", server.source_port))
            && reason.contains("mode=server"),
        "the reason must say which stream source to check: {reason}"
    );
}

#[test]
fn a_connection_dropped_mid_announcement_fails_the_job_and_the_output_comes_back() {
    if !snapcast_installed() {
        return;
    }
    let mut server = SnapServer::start(true);
    let served = serve("fast,tone,id=drop", server.source_port, "");
    let mut w = UnixStream::connect(&served.sock).unwrap();
    w.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    writeln!(w, "{}", json!({"text": LONG, "to": "house", "id": "long"})).unwrap();
    let mut lines = BufReader::new(w.try_clone().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next()["event"], "queued");
    assert_eq!(next()["event"], "started");
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    let cut = Instant::now();
    let end = next();
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("'house'") && reason.contains("connection to snapserver was lost"),
        "{reason}"
    );
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "the failure took {:?}",
        cut.elapsed()
    );
    // Local announcements carry on meanwhile.
    let r = request(&served, json!({"text": PHRASE, "id": "here"}));
    assert_eq!(terminal(&r)["event"], "finished", "{r:?}");
    // snapserver is back: the next house-wide announcement reconnects and plays.
    server.restart();
    let r = request(
        &served,
        json!({"text": PHRASE, "to": "house", "id": "again"}),
    );
    let end = terminal(&r);
    assert_eq!(end["event"], "finished", "{end}\n{}", served.log());
    assert_eq!(end["output"], "house");
}

/// Feeds snapserver's music pipe with a quiet square wave (±40, under the loudness the
/// announcement is located by) at real time until dropped.
struct Music {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Music {
    fn start(server: &SnapServer) -> Music {
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

#[test]
fn through_a_meta_stream_the_announcement_interrupts_the_music_whole_and_gives_it_back() {
    if !snapcast_installed() {
        return;
    }
    let server = SnapServer::with(Streams::Meta);
    let music = Music::start(&server);
    let room = Room::start(&server, 0);
    server.wait_clients(1);
    // The default lead-in (600 ms): what lets the meta stream switch before the first word.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let text = config(&sock, "fast,tone,id=meta", server.source_port, "")
        .replace("lead_in_ms = 100\n", "");
    let served = Served::start(dir, sock, &text, KEY, &[], Duration::from_secs(20));
    let reference = reference(&served, PHRASE);
    // Music plays for a while first.
    std::thread::sleep(Duration::from_millis(1500));
    let r = request(&served, json!({"text": PHRASE, "to": "house"}));
    assert_eq!(terminal(&r)["event"], "finished", "{r:?}");
    // The music comes back once the announcement stream has gone idle (≤ 520 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let cap = room.played();
    drop(music);
    let (left, _) = channels(&cap);
    let start = locate(&left, &reference).expect("the announcement was not heard");
    let heard = &left[start..(start + reference.len()).min(left.len())];
    assert_eq!(heard.len(), reference.len(), "the end is missing");
    let wrong = heard
        .iter()
        .zip(&reference)
        .filter(|(a, b)| (i32::from(**a) - i32::from(**b)).abs() > 2)
        .count();
    assert_eq!(
        wrong, 0,
        "{wrong} samples of the announcement differ (cut by the music?)"
    );
    let is_music = |s: &[i16]| s.iter().filter(|v| v.unsigned_abs() == 40).count() > s.len() / 2;
    // Half a second of music, before the lead-in (600 ms) and the start of the job.
    let before = start
        .checked_sub(60_000)
        .expect("the room played too little before it");
    assert!(
        is_music(&left[before..before + 24_000]),
        "no music before the announcement"
    );
    let after = start + reference.len() + 48_000;
    assert!(
        left.len() > after + 4800 && is_music(&left[after..after + 4800]),
        "the music did not come back within 1 s of the announcement's end"
    );
}
