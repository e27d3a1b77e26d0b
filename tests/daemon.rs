//! `herald serve` end to end: the real binary, real unix-socket clients, the in-process
//! emulator standing in for OpenAI, and test ALSA PCMs standing in for the sound card —
//! `herald_null` (plays instantly) where only order and replies matter, and FIFO-backed
//! PCMs drained at 48 kHz by a `FifoClock` (a real-time DAC) where a job must still be
//! playing when the next request arrives.

mod support;

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_emulator::EmulatorHandle;
use serde_json::{json, Value};
use support::conn::{is_terminal, Conn, REPLY_TIMEOUT};
use support::daemon::Served;
use support::{FifoClock, FifoPcm};

const KEY: &str = "sk-daemon-0123456789abcdefSECRET";
/// Hang guard for any one reply.
/// About 3 s of audio with the emulator's `tone` (60 ms per character).
const LONG: &str = "This announcement runs for about three seconds.";

fn emu() -> &'static EmulatorHandle {
    support::emulator::shared(KEY)
}

/// A running `herald serve` with its own socket, config and log.
struct Daemon {
    /// First field: dropped (killed) before the clock that drains its FIFO.
    served: Served,
    /// Kept alive while the daemon may write to its FIFO.
    _clock: Option<FifoClock>,
}

impl std::ops::Deref for Daemon {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Served {
        &mut self.served
    }
}

struct Setup<'a> {
    scenario: &'a str,
    device: Device,
    extra: &'a str,
    env: Vec<(&'a str, String)>,
}

enum Device {
    Null,
    Fifo,
    /// Another test PCM, e.g. `herald_busy`.
    Named(&'static str),
}

fn config_text(scenario: &str, device: &str, sock: &Path, extra: &str) -> String {
    // Sections may appear once in TOML: `extra` holds whole `key = value` lines per section
    // marker, so it is appended to the matching section below.
    let (daemon_extra, rest) = split_extra(extra);
    format!(
        "[api]\napi_base = \"{}\"\nmax_attempts = 1\n\n[audio]\ndevice = \"{device}\"\nrealtime_priority = 0\n\n[cache]\ndir = \"{}\"\n\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n{daemon_extra}\n{rest}",
        emu().base_url(scenario),
        // The test's own cache, not /var/cache/herald of the machine running the tests.
        sock.with_extension("cache").display(),
        sock.display()
    )
}

/// `extra` lines before a `[section]` header go to `[daemon]`; the rest is appended as is.
fn split_extra(extra: &str) -> (String, String) {
    match extra.find('[') {
        Some(i) => (extra[..i].to_string(), extra[i..].to_string()),
        None => (extra.to_string(), String::new()),
    }
}

impl Daemon {
    fn start(setup: Setup) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("herald.sock");
        let (device, clock) = match setup.device {
            Device::Null => ("herald_null".to_string(), None),
            Device::Named(name) => (name.to_string(), None),
            Device::Fifo => {
                let fifo: FifoPcm = support::claim_fifo();
                // The reader must exist before the daemon opens the device.
                let clock = FifoClock::start(&fifo.path, 48_000, 1);
                (fifo.pcm, Some(clock))
            }
        };
        let text = config_text(setup.scenario, &device, &sock, setup.extra);
        let served = Served::start(dir, sock, &text, KEY, &setup.env, Duration::from_secs(20));
        Daemon {
            served,
            _clock: clock,
        }
    }

    /// The ALSA device named in the config.
    fn config_device(&self) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        v["audio"]["device"].as_str().unwrap().to_string()
    }

    fn conn(&self) -> Conn {
        Conn::open(&self.sock)
    }
}

/// One client connection, reading JSON replies.
/// (id, event) of the terminal replies, in order.
fn ends(replies: &[Value]) -> Vec<(String, String)> {
    replies
        .iter()
        .filter(|r| is_terminal(r))
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["event"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The largest jump between adjacent samples the device played. The test tone (140 Hz and
/// up, amplitude ~9800) moves at most ~250 per sample at 48 kHz, and every start, stall
/// and interrupt is faded; a cut without a fade (a click) jumps by up to the amplitude.
fn largest_step(cap: &support::Capture) -> i32 {
    cap.samples
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// Stops the daemon and returns what its FIFO "DAC" played.
fn played(mut d: Daemon) -> support::Capture {
    let clock = d._clock.take().unwrap();
    drop(d);
    clock.finish(Duration::from_secs(2))
}

fn null(scenario: &str, extra: &str) -> Daemon {
    Daemon::start(Setup {
        scenario,
        device: Device::Null,
        extra,
        env: Vec::new(),
    })
}

fn fifo(scenario: &str, extra: &str) -> Daemon {
    Daemon::start(Setup {
        scenario,
        device: Device::Fifo,
        extra,
        env: Vec::new(),
    })
}

#[test]
fn jobs_play_in_order_and_plain_text_speaks_with_the_defaults() {
    let d = null("fast,tone,id=order", "");
    let mut c = d.conn();
    c.speak("a", "First.", "normal");
    c.speak("b", "Second.", "normal");
    // A plain line is a speak request with the defaults.
    c.send_raw(b"Third, as plain text.\n");
    let replies = c.terminals(3);
    let e = ends(&replies);
    assert_eq!(e[0], ("a".into(), "finished".into()), "{replies:?}");
    assert_eq!(e[1], ("b".into(), "finished".into()), "{replies:?}");
    assert_eq!(e[2].1, "finished", "{replies:?}");
    assert!(e[2].0.starts_with('j'), "herald assigns ids: {replies:?}");
    // Every job was queued first, then reported its figures.
    let queued: Vec<_> = replies.iter().filter(|r| r["event"] == "queued").collect();
    assert_eq!(queued.len(), 3, "{replies:?}");
    // Each job: queued, started, finished, in that order.
    for id in ["a", "b"] {
        let events: Vec<_> = replies
            .iter()
            .filter(|r| r["id"] == id)
            .map(|r| r["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["queued", "started", "finished"], "{replies:?}");
    }
    let fin = replies.iter().find(|r| r["event"] == "finished").unwrap();
    assert!(fin["duration_ms"].as_u64().unwrap() > 100, "{fin}");
    assert!(fin["bytes"].as_u64().unwrap() > 0, "{fin}");
    // herald_null swallows audio instantly, so on a loaded machine the decoder can fall
    // behind it: the stall count is reported, but its value is not this test's concern.
    assert!(fin["stalls"].is_u64(), "{fin}");
    let seen = emu().stats();
    assert_eq!(seen.requests_for("fast,tone,id=order"), 3);
}

#[test]
fn high_goes_ahead_of_normal_and_interrupt_cuts_in() {
    let d = fifo("fast,tone,id=prio", "");
    let mut c = d.conn();
    c.speak("long", LONG, "normal");
    assert_eq!(c.reply()["event"], "queued");
    c.speak("n1", "Normal.", "normal");
    c.speak("h1", "High.", "high");
    let r = c.terminals(3);
    assert_eq!(
        ends(&r),
        pairs(&[("long", "finished"), ("h1", "finished"), ("n1", "finished")]),
        "{r:?}"
    );
    let h1_queued = r
        .iter()
        .find(|x| x["event"] == "queued" && x["id"] == "h1")
        .unwrap();
    assert_eq!(h1_queued["position"], 0, "high goes to the front: {r:?}");

    // Interrupt: wait until the long job is audible, then cut in.
    c.speak("long2", LONG, "normal");
    c.speak("later", "After.", "normal");
    let r = c.until("started");
    assert_eq!(r.last().unwrap()["id"], "long2");
    let cut_at = Instant::now();
    c.speak("urgent", "Urgent.", "interrupt");
    let r = c.terminals(3);
    let e = ends(&r);
    assert_eq!(
        e,
        pairs(&[
            ("long2", "interrupted"),
            ("urgent", "finished"),
            ("later", "finished")
        ]),
        "{r:?}"
    );
    let int = r.iter().find(|x| x["event"] == "interrupted").unwrap();
    assert_eq!(int["by"], "urgent");
    // It was cut short: a 3 s announcement did not play to its end first.
    assert!(
        cut_at.elapsed() < Duration::from_secs(6),
        "the interrupt waited for the end"
    );
    // ... with a fade, not a click.
    let cap = played(d);
    let step = largest_step(&cap);
    eprintln!("interrupt: largest step between samples {step}");
    assert!(step < 1500, "a click: adjacent samples jump by {step}");
}

#[test]
fn cancel_skip_and_stop_each_end_jobs_with_one_reply() {
    let d = fifo("fast,tone,id=cancel", "");
    let mut c = d.conn();
    c.speak("a", LONG, "normal");
    c.speak("b", "Bee.", "normal");
    c.speak("c", "Sea.", "normal");
    let r = c.until("started");
    assert_eq!(r.last().unwrap()["id"], "a");
    // A duplicate id of a live job is refused.
    c.speak("b", "Again.", "normal");
    let dup = c.reply();
    assert_eq!(dup["event"], "failed");
    assert!(
        dup["reason"].as_str().unwrap().contains("already in use"),
        "{dup}"
    );
    c.send(json!({"cmd": "cancel", "id": "b"}));
    let r = c.until("ok");
    assert_eq!(ends(&r), pairs(&[("b", "cancelled")]), "{r:?}");
    assert_eq!(r.last().unwrap()["jobs"], json!(["b"]));
    c.send(json!({"cmd": "cancel", "id": "nope"}));
    let r = c.reply();
    assert_eq!(r["event"], "failed");
    assert!(r["reason"].as_str().unwrap().contains("'nope'"), "{r}");
    c.send(json!({"cmd": "skip"}));
    let r = c.terminals(2);
    assert_eq!(
        ends(&r),
        pairs(&[("a", "cancelled"), ("c", "finished")]),
        "{r:?}"
    );
    assert!(r.iter().any(|x| x["event"] == "ok" && x["cmd"] == "skip"));

    // stop: the playing job and every queued one end, each with one reply.
    c.speak("d", LONG, "normal");
    c.speak("e", "Ee.", "normal");
    c.speak("f", "Ef.", "high");
    c.until("started");
    c.send(json!({"cmd": "stop"}));
    let r = c.terminals(3);
    let mut e = ends(&r);
    e.sort();
    assert_eq!(
        e,
        pairs(&[("d", "cancelled"), ("e", "cancelled"), ("f", "cancelled")]),
        "{r:?}"
    );
    // Then it carries on serving.
    c.speak("g", "Still here.", "normal");
    let r = c.until("finished");
    assert_eq!(r.last().unwrap()["id"], "g", "{r:?}");
    // Skip and stop faded out rather than cut.
    let step = largest_step(&played(d));
    assert!(step < 1500, "a click: adjacent samples jump by {step}");
}

#[test]
fn a_full_queue_refuses_clearly_and_loses_nothing() {
    let d = fifo("fast,tone,id=full", "queue_size = 2\n");
    let mut c = d.conn();
    c.speak("a", LONG, "normal");
    c.until("started");
    c.speak("b", "Bee.", "normal");
    c.speak("c", "Sea.", "normal");
    c.speak("d", "Dee.", "normal");
    c.send(json!({"cmd": "status"}));
    let mut r = c.until("status");
    let s = r.pop().unwrap();
    assert_eq!(s["queue_length"], 2, "{s}");
    assert_eq!(s["queue"][0]["id"], "b", "{s}");
    assert_eq!(s["now_playing"]["id"], "a", "{s}");
    assert_eq!(s["state"], "speaking", "{s}");
    let seen = r.iter().filter(|x| is_terminal(x)).count();
    r.extend(c.terminals(4 - seen));
    let refused = r.iter().find(|x| x["event"] == "failed").unwrap();
    assert_eq!(refused["id"], "d");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("queue is full") && reason.contains("queue_size = 2"),
        "{reason}"
    );
    let mut e = ends(&r);
    e.sort();
    assert_eq!(
        e,
        pairs(&[
            ("a", "finished"),
            ("b", "finished"),
            ("c", "finished"),
            ("d", "failed")
        ])
    );
}

#[test]
fn every_bad_input_gets_a_failed_reply_and_the_daemon_serves_on() {
    let d = null("fast,tone,id=bad", "[speech]\nmax_text_chars = 50\n");
    let mut c = d.conn();
    let mut long = vec![b'a'; 70 * 1024];
    long.push(b'\n');
    let too_long_text = "x".repeat(51);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // The limit follows max_text_chars: 50 × 12 bytes + 64 KiB for the other fields.
        (long, "at most 66136 bytes"),
        (b"caf\xe9 au lait\n".to_vec(), "not valid UTF-8"),
        (b"{\"cmd\":\"speak\",\"text\":\n".to_vec(), "invalid JSON"),
        (
            b"{\"cmd\":\"speak\",\"text\":\"x\",\"colour\":11}\n".to_vec(),
            "unknown field `colour`",
        ),
        (
            b"{\"text\":\"x\",\"volume\":150}\n".to_vec(),
            "volume 150 is not allowed (allowed: a whole number from 0",
        ),
        (b"{\"cmd\":\"shout\"}\n".to_vec(), "unknown command 'shout'"),
        (
            b"{\"cmd\":\"speak\",\"text\":\"\"}\n".to_vec(),
            "text is empty",
        ),
        (
            format!("{{\"cmd\":\"speak\",\"text\":\"{too_long_text}\"}}\n").into_bytes(),
            "at most 50 are allowed",
        ),
        (
            b"{\"text\":\"x\",\"voice\":\"bob\"}\n".to_vec(),
            "unknown voice 'bob' (allowed: alloy",
        ),
        (
            b"{\"text\":\"x\",\"model\":\"tts-9\"}\n".to_vec(),
            "unknown model 'tts-9'",
        ),
        (
            b"{\"text\":\"x\",\"format\":\"mp3\"}\n".to_vec(),
            "expected one of `opus`, `pcm`, `auto`",
        ),
        (b"{\"text\":\"x\",\"speed\":9}\n".to_vec(), "0.25 to 4.0"),
        (
            b"{\"text\":\"x\",\"priority\":\"urgent\"}\n".to_vec(),
            "expected one of `normal`, `high`, `interrupt`",
        ),
    ];
    for (line, expect) in &cases {
        c.send_raw(line);
        let r = c.reply();
        assert_eq!(r["event"], "failed", "{expect}: {r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains(expect), "expected '{expect}' in: {reason}");
    }
    // The same connection still works, and so does a new one.
    c.speak("ok1", "Fine.", "normal");
    assert_eq!(c.until("finished").last().unwrap()["id"], "ok1");
    let mut c2 = d.conn();
    c2.speak("ok2", "Also fine.", "normal");
    assert_eq!(c2.until("finished").last().unwrap()["id"], "ok2");
    c2.send(json!({"cmd": "status"}));
    let s = c2.reply();
    assert_eq!(s["event"], "status");
    assert_eq!(s["counters"]["finished"], 2, "{s}");
    assert_eq!(s["counters"]["failed"], cases.len() as u64, "{s}");
}

#[test]
fn too_many_connections_are_refused_and_a_client_that_never_reads_blocks_nobody() {
    let d = null("fast,tone,id=conns", "max_connections = 3\n");
    // A client that floods status requests and never reads a reply.
    let mut stuck = UnixStream::connect(&d.sock).unwrap();
    stuck
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let flood = "{\"cmd\":\"status\"}\n".repeat(4000);
    // Its writes may block once the daemon drops it; that is fine.
    let _ = stuck.write_all(flood.as_bytes());

    let mut a = d.conn();
    let _b = d.conn();
    // The stuck client may or may not still count: wait until it has been dropped.
    let mut refused = None;
    for _ in 0..50 {
        let mut extra = d.conn();
        // A refused connection may already be closed for writing: the refusal is still
        // there to read, so a failed write is not the test's concern. (A status would be
        // answered even over the limit; a speak is not.)
        let _ = extra.w.write_all(b"{\"text\":\"Over the limit?\"}\n");
        let r = extra.reply();
        if r["event"] == "error" {
            refused = Some(r);
            break;
        }
        // Served: the stuck client is gone and a slot was free; fill it and try again.
        std::mem::forget(extra);
    }
    let refused = refused.expect("the connection over the limit was served");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{refused}"
    );
    // The connected client is served while the stuck one never read anything.
    a.speak("x", "Not blocked.", "normal");
    assert_eq!(a.until("finished").last().unwrap()["id"], "x");
    // The stuck client was dropped.
    d.wait_log("does not read its replies", REPLY_TIMEOUT);
}

#[test]
fn herald_say_and_status_clients() {
    let d = null("fast,tone,id=cli", "");
    let out = d.herald(&["say", "Hello from the client."]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The job's figures are printed (herald_null swallows audio instantly: on a loaded
    // machine the decoder may fall behind it, so the stall count is not checked here).
    assert!(
        stdout.contains("finished: time to first audio") && stdout.contains(" ms), received "),
        "{stdout}"
    );
    let audio_s = support::summary_audio_s(&stdout)
        .unwrap_or_else(|| panic!("no audio duration in {stdout:?}"));
    assert!(audio_s > 0.5, "{stdout}");
    let out = d.herald(&["say", "--no-wait", "--id", "nw", "Queued only."]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued nw"));
    let out = d.herald(&["status", "--json"]);
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["device"]["name"], "herald_null");
    assert!(s["counters"]["accepted"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["uptime_s"].is_u64());
    let out = d.herald(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("time to first audio p50"));
    let out = d.herald(&["say", "--voice", "bob", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown voice 'bob'"));
    let out = d.herald(&["skip"]);
    assert!(out.status.success());

    // A job the API refuses: non-zero exit and the API's reason (without the local voice,
    // which would speak it instead: tests/fallback.rs).
    let bad = null("fast,tone,fail=401,id=cli401", "");
    let out = bad.herald(&["say", "--no-fallback", "Nobody hears this."]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API key was rejected (HTTP 401)"), "{err}");
    assert!(!err.contains(KEY));
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_keeps_the_old() {
    let sc = "fast,tone,id=hup";
    let d = fifo(sc, "");
    let mut c = d.conn();
    // Jobs playing and queued across the reloads must survive them.
    c.speak("playing", LONG, "normal");
    c.speak("queued", "Waiting.", "normal");
    c.until("started");
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, "[speech]\nvoice = \"bob\"\n").unwrap();
    d.signal(libc::SIGHUP);
    c.speak("after-bad", "Old config.", "normal");
    let r = c.terminals(3);
    assert_eq!(
        ends(&r),
        pairs(&[
            ("playing", "finished"),
            ("queued", "finished"),
            ("after-bad", "finished")
        ]),
        "{r:?}"
    );
    let last = emu().stats();
    let seen = &last.scenarios[sc].seen;
    assert_eq!(seen.last().unwrap().body.voice, "alloy");
    assert!(d.log().contains("reload failed"), "{}", d.log());

    std::fs::write(&d.config, format!("{good}\n[speech]\nvoice = \"nova\"\n")).unwrap();
    d.signal(libc::SIGHUP);
    // The reload is asynchronous: wait for the log line rather than racing it.
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    c.speak("after-good", "New config.", "normal");
    assert_eq!(c.until("finished").last().unwrap()["id"], "after-good");
    let last = emu().stats();
    assert_eq!(last.scenarios[sc].seen.last().unwrap().body.voice, "nova");
}

#[test]
fn sigterm_while_speaking_fades_out_and_exits_0_within_2_s() {
    let mut d = fifo("fast,tone,id=term", "");
    let mut c = d.conn();
    c.speak("a", LONG, "normal");
    c.speak("b", "Queued.", "normal");
    c.until("started");
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "herald did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    assert!(status.success(), "exit status {status}: {}", d.log());
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    let r = c.terminals(2);
    let mut e = ends(&r);
    e.sort();
    assert_eq!(e, pairs(&[("a", "cancelled"), ("b", "cancelled")]), "{r:?}");
    assert!(!d.sock.exists(), "the socket file was left behind");
    let step = largest_step(&played(d));
    assert!(
        step < 1500,
        "SIGTERM cut with a click: samples jump by {step}"
    );
}

#[test]
fn load_50_clients_x_20_requests_each_end_in_exactly_one_terminal_reply() {
    let d = null(
        "fast,tone,id=load",
        "queue_size = 2000\nmax_connections = 64\n",
    );
    let clients = 50;
    let per = 20;
    let t = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|ci| {
            let sock = d.sock.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open(&sock);
                for k in 0..per {
                    c.speak(&format!("c{ci}-{k}"), "Hi.", "normal");
                }
                let replies = c.terminals(per);
                let mut accepted = std::collections::HashSet::new();
                let mut terminal = std::collections::HashMap::new();
                for r in &replies {
                    let id = r["id"].as_str().unwrap_or("").to_string();
                    if r["event"] == "queued" {
                        accepted.insert(id.clone());
                    }
                    if is_terminal(r) {
                        *terminal.entry(id).or_insert(0) += 1;
                    }
                }
                (accepted, terminal, replies)
            })
        })
        .collect();
    let mut finished = 0;
    let mut rejected = 0;
    for h in handles {
        let (accepted, terminal, replies) = h.join().unwrap();
        for id in &accepted {
            assert_eq!(terminal.get(id), Some(&1), "{id}: {replies:?}");
        }
        for (id, n) in &terminal {
            assert_eq!(*n, 1, "{id} ended {n} times");
        }
        finished += replies.iter().filter(|r| r["event"] == "finished").count();
        rejected += replies
            .iter()
            .filter(|r| {
                r["event"] == "failed" && !accepted.contains(r["id"].as_str().unwrap_or(""))
            })
            .count();
    }
    assert_eq!(finished + rejected, clients * per);
    assert_eq!(
        finished,
        clients * per,
        "nothing should be refused with queue_size 2000"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .to_string();
    let kb: u64 = hwm.split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!(
        "load: {} jobs from {clients} clients in {:.1} s; daemon peak RSS {hwm}",
        clients * per,
        t.elapsed().as_secs_f64()
    );
    // Generous bound: a leak of per-job buffers (≥ 20 s of ring each) would blow far past it.
    assert!(kb < 200 * 1024, "daemon peak RSS {kb} kB");
}

/// What the daemon sent to `NOTIFY_SOCKET` (stands in for systemd's notify socket).
fn notifications(sock: &std::os::unix::net::UnixDatagram, until: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(until);
            seen.push(msg);
            if done {
                return;
            }
        }
    }
    panic!("no '{until}' from the daemon; got {seen:?}");
}

#[test]
fn tells_systemd_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = Daemon::start(Setup {
        scenario: "fast,tone,id=notify",
        device: Device::Null,
        extra: "",
        env: vec![
            ("NOTIFY_SOCKET", path.display().to_string()),
            // 400 ms: pings every 200 ms.
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    });
    let mut seen = Vec::new();
    notifications(&sock, "READY=1", &mut seen);
    assert!(seen.iter().any(|m| m.contains("STATUS=idle")), "{seen:?}");
    notifications(&sock, "WATCHDOG=1", &mut seen);
    let mut c = d.conn();
    c.speak("n", "Notify me.", "normal");
    notifications(&sock, "STATUS=speaking: Notify me.", &mut seen);
    c.until("finished");
    notifications(&sock, "STATUS=idle", &mut seen);
    d.signal(libc::SIGHUP);
    notifications(&sock, "RELOADING=1", &mut seen);
    notifications(&sock, "READY=1", &mut seen);
    d.signal(libc::SIGTERM);
    notifications(&sock, "STOPPING=1", &mut seen);
}

#[test]
fn lead_in_plays_silence_before_the_first_voice_on_a_fresh_device() {
    let fifo = support::claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let config = dir.path().join("herald.toml");
    // The lead-in (400 ms) is longer than the fetch takes, so the voice waits for it.
    let text = config_text("fast,tone,id=leadin", &fifo.pcm, &sock, "")
        .replace("lead_in_ms = 0", "lead_in_ms = 400");
    std::fs::write(&config, text).unwrap();
    let (k, v) = support::alsa_env().env_var();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env(k, v)
        .env("OPENAI_API_KEY", KEY)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < until, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Conn::open(&sock);
    c.speak("l", "Wake up.", "normal");
    let r = c.until("finished");
    assert_eq!(r.last().unwrap()["id"], "l", "{r:?}");
    let _ = child.kill();
    let _ = child.wait();
    let cap = clock.finish(Duration::from_secs(2));
    let lead = cap.samples.iter().take_while(|&&s| s == 0).count();
    let voice = cap.samples.len() - lead;
    // At least most of the 400 ms lead-in was silence at the device before the voice
    // (less than a period may be lost to the FIFO's start-up).
    assert!(
        lead >= 48 * 350,
        "only {} ms of silence before the voice",
        lead / 48
    );
    assert!(
        voice > 48 * 200,
        "the voice itself is missing: {voice} samples"
    );
}

#[test]
fn the_device_is_released_when_idle_with_hooks_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let hook = |word: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo {word} >> '{}'\"]",
            log.display()
        )
    };
    let extra = format!(
        "idle_close_s = 1\nhook_before_open = {}\nhook_after_close = {}\n",
        hook("open"),
        hook("close")
    );
    // idle_close_s = 0 in the base config: the later key must win, so replace it.
    let d = null("fast,tone,id=idle", "");
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("idle_close_s = 0\n", &extra);
    std::fs::write(&d.config, text).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    let mut c = d.conn();
    c.speak("a", "One.", "normal");
    c.until("finished");
    c.send(json!({"cmd": "status"}));
    assert_eq!(c.reply()["device"]["open"], true);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        c.send(json!({"cmd": "status"}));
        if c.reply()["device"]["open"] == false {
            break;
        }
        assert!(Instant::now() < until, "the device was never released");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.speak("b", "Two.", "normal");
    c.until("finished");
    let hooks = std::fs::read_to_string(&log).unwrap();
    assert_eq!(hooks, "open\nclose\nopen\n");
}

#[test]
fn a_lost_device_fails_the_job_and_the_daemon_reopens_it_later() {
    let mut d = fifo("fast,tone,id=lost", "");
    let fifo_path = support::alsa_env()
        .fifo_path(
            d.config_device()
                .trim_start_matches("herald_fifo")
                .parse()
                .unwrap(),
        )
        .to_path_buf();
    let mut c = d.conn();
    c.speak("a", LONG, "normal");
    c.until("started");
    // Unplug: the reader of the FIFO (the "DAC") goes away mid-announcement.
    drop(d._clock.take());
    let r = c.terminals(1);
    let end = r.last().unwrap();
    assert_eq!(end["event"], "failed", "{r:?}");
    assert!(
        end["reason"].as_str().unwrap().contains("audio device"),
        "{end}"
    );
    eprintln!("lost device: {}", end["reason"]);
    c.send(json!({"cmd": "status"}));
    let s = c.reply();
    assert_eq!(s["state"], "device error", "{s}");
    // Plug it back in: the next job plays.
    d._clock = Some(FifoClock::start(&fifo_path, 48_000, 1));
    c.speak("b", "Back again.", "normal");
    let r = c.until("finished");
    assert_eq!(r.last().unwrap()["id"], "b", "{r:?}");
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon exited");
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_is_not_and_check_reports() {
    use std::os::unix::fs::PermissionsExt;
    let d = null("fast,tone,id=sock", "socket_mode = \"0640\"\n");
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    // A second daemon on the same socket refuses to start while the first one answers.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&d.config)
        .arg("serve")
        .env(
            support::alsa_env().env_var().0,
            support::alsa_env().env_var().1,
        )
        .env("OPENAI_API_KEY", KEY)
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    let mut c = d.conn();
    c.speak("still", "Still mine.", "normal");
    c.until("finished");

    // herald check: config, key, device and socket.
    let out = d.herald(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "no key in the environment: {text}");
    assert!(text.contains("API key: MISSING"), "{text}");
    assert!(text.contains("'herald_null' opens: 48000 Hz"), "{text}");
    assert!(text.contains("a herald daemon is serving on it"), "{text}");

    // A stale socket file (its owner crashed) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        config_text("fast,tone,id=stale", "herald_null", &stale, ""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env(
            support::alsa_env().env_var().0,
            support::alsa_env().env_var().1,
        )
        .env("OPENAI_API_KEY", KEY)
        .env_remove("LISTEN_FDS")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if let Ok(s) = UnixStream::connect(&stale) {
            break s;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "refused a stale socket"
        );
        assert!(Instant::now() < until, "never served on the stale path");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(served);
    let mut c = Conn::open(&stale);
    c.send(json!({"cmd": "status"}));
    assert_eq!(c.reply()["event"], "status");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_idle_daemon_keeps_its_api_connection_warm() {
    let sc = "fast,tone,id=warm";
    let d = null(sc, "");
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("keepalive_s = 0", "keepalive_s = 1");
    std::fs::write(&d.config, text).unwrap();
    d.signal(libc::SIGHUP);
    // Two keep-alive requests (GET /models) while nothing is spoken.
    let until = Instant::now() + REPLY_TIMEOUT;
    while emu().stats().requests_for(sc) < 2 {
        assert!(
            Instant::now() < until,
            "no keep-alive requests: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        emu().stats().status_count(sc, 200),
        emu().stats().requests_for(sc)
    );
    let mut c = d.conn();
    c.send(json!({"cmd": "status"}));
    let s = c.reply();
    assert_eq!(s["network"]["warm"], true, "{s}");
    assert!(s["network"]["last_ok_s_ago"].as_u64().unwrap() <= 2, "{s}");
    assert_eq!(s["counters"]["accepted"], 0, "{s}");
}

#[test]
fn a_job_whose_client_hung_up_still_plays_and_its_end_is_logged() {
    let d = null("fast,tone,id=hangup", "");
    {
        let mut c = d.conn();
        c.speak("orphan", "Nobody is listening.", "normal");
        // Hang up without reading anything.
    }
    d.wait_log("client disconnected before", REPLY_TIMEOUT);
    assert!(d.log().contains("\"id\":\"orphan\""), "{}", d.log());
    let mut c = d.conn();
    c.send(json!({"cmd": "status"}));
    let s = c.reply();
    assert_eq!(s["counters"]["finished"], 1, "{s}");
}

#[test]
fn a_busy_device_fails_jobs_with_the_reason_and_the_daemon_keeps_serving() {
    let d = Daemon::start(Setup {
        scenario: "fast,tone,id=busy",
        device: Device::Named("herald_busy"),
        extra: "",
        env: Vec::new(),
    });
    let mut c = d.conn();
    c.speak("x", "Can you hear me?", "normal");
    let r = c.terminals(1);
    let end = r.last().unwrap();
    assert_eq!(end["event"], "failed", "{r:?}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("herald_busy") && reason.contains("busy"),
        "{reason}"
    );
    c.send(json!({"cmd": "status"}));
    let s = c.reply();
    assert_eq!(s["state"], "device error", "{s}");
    assert!(
        s["device"]["error"].as_str().unwrap().contains("busy"),
        "{s}"
    );
    assert_eq!(s["device"]["open"], false);
}

#[test]
fn a_request_id_with_a_newline_is_refused_and_forges_no_log_line() {
    let d = null("fast,tone,id=forge", "");
    let mut c = d.conn();
    c.send(json!({"text": "Hello.", "id": "a\nFAKE job finished"}));
    let r = c.reply();
    assert_eq!(r["event"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("control character") && reason.contains("printable"),
        "{reason}"
    );
    c.send(json!({"cmd": "cancel", "id": "b\rFAKE"}));
    assert_eq!(c.reply()["event"], "failed");
    // The daemon serves on; the log has only lines it wrote itself.
    c.speak("fine", "Hello.", "normal");
    assert_eq!(c.until("finished").last().unwrap()["id"], "fine");
    d.wait_log("job finished", REPLY_TIMEOUT);
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.trim_start().starts_with("FAKE")),
        "{log}"
    );
}

#[test]
fn serve_refuses_to_delete_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.sock");
    std::fs::write(&path, "precious notes\n").unwrap();
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        config_text("fast,tone,id=notsock", "herald_null", &path, ""),
    )
    .unwrap();
    let mut child = support::daemon::serve_command(&cfg, KEY)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "herald serve kept running; the file now holds {:?}",
                std::fs::read(&path)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("a regular file")
            && err.contains("daemon.socket_path"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious notes\n");
    // herald check says so too, instead of calling it a stale socket.
    let (k, v) = support::alsa_env().env_var();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .env(k, v)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("is a regular file, not a socket"), "{text}");
}

#[test]
fn check_never_prints_credentials_from_the_api_base() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let cfg = dir.path().join("herald.toml");
    let (k, v) = support::alsa_env().env_var();
    let run = |base: &str| {
        let text = config_text("fast,id=creds", "herald_null", &sock, "")
            .replace(&emu().base_url("fast,id=creds"), base);
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&cfg)
            .arg("check")
            .env(k, v)
            .env("OPENAI_API_KEY", KEY)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("PROXYPASS"),
            "the password was printed: {all}"
        );
        all
    };
    let all = run("http://herald:PROXYPASS@127.0.0.1:9/v1");
    assert!(all.contains("API: http://127.0.0.1:9/v1"), "{all}");
    // An invalid base is refused, still without the password.
    let all = run("ftp://herald:PROXYPASS@proxy.local/v1");
    assert!(all.contains("not an http(s) URL"), "{all}");
}

#[test]
fn idle_connections_are_closed_but_one_waiting_for_its_job_is_not() {
    let d = fifo(
        "fast,tone,id=idle-conns",
        // One slot more than the test uses: the start-up probe may still hold one.
        "max_connections = 4\nidle_timeout_s = 1\n",
    );
    // A client whose announcement plays for ~3 s, three times the idle timeout.
    let mut waiting = d.conn();
    waiting.speak("long", LONG, "normal");
    // A client that connects and says nothing.
    let mut idle = d.conn();
    idle.w
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A client that trickles a request in, a byte every 200 ms, never finishing the line.
    let mut trickle = d.conn();
    trickle
        .w
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = trickle.w.try_clone().unwrap();
    let dripping = std::thread::spawn(move || {
        for b in "{\"cmd\":\"status\"".bytes().cycle().take(50) {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    let t = Instant::now();
    let r = idle.reply();
    assert_eq!(r["event"], "error", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("idle for 1 s") && reason.contains("daemon.idle_timeout_s = 1"),
        "{reason}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut rest = String::new();
    assert_eq!(
        idle.r.read_line(&mut rest).unwrap(),
        0,
        "not closed: {rest}"
    );

    let r = trickle.reply();
    assert_eq!(r["event"], "error", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("not completed within 1 s") && reason.contains("daemon.idle_timeout_s"),
        "{reason}"
    );
    dripping.join().unwrap();

    // The waiting client hears its job to the end, with no error on the way...
    let replies = waiting.until("finished");
    assert!(replies.iter().all(|r| r["event"] != "error"), "{replies:?}");
    // ... and is idle only from then on.
    let ended = Instant::now();
    let r = waiting.reply();
    assert_eq!(r["event"], "error", "{r}");
    assert!(
        ended.elapsed() >= Duration::from_millis(800),
        "closed {:?} after its job ended",
        ended.elapsed()
    );
    // The slots are free again.
    let mut c = d.conn();
    c.send(json!({"cmd": "status"}));
    assert_eq!(c.reply()["event"], "status");
}

#[test]
fn over_the_connection_limit_a_status_is_still_answered_and_a_speak_is_refused() {
    let d = null("fast,tone,id=spare", "max_connections = 2\n");
    // Two clients hold every slot. A served connection answers any number of requests;
    // one over the limit (while the start-up probe still counts) answers only one.
    let mut held = Vec::new();
    for _ in 0..20 {
        if held.len() == 2 {
            break;
        }
        let mut c = d.conn();
        c.send(json!({"cmd": "status"}));
        c.send(json!({"cmd": "status"}));
        let mut line = String::new();
        let _ = c.r.read_line(&mut line);
        line.clear();
        if c.r.read_line(&mut line).is_ok_and(|n| n > 0) {
            held.push(c);
        }
    }
    assert_eq!(held.len(), 2, "could not fill the slots");
    let out = d.herald(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status over the limit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("queue:   0 waiting"), "{stdout}");
    let out = d.herald(&["presets"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A speak over the limit is refused with the reason, and nothing is queued.
    let mut over = d.conn();
    over.send(json!({"text": "Squeezed in.", "id": "over"}));
    let r = over.reply();
    assert_eq!(r["event"], "error", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("too many connections") && reason.contains("max_connections = 2"),
        "{reason}"
    );
    // A connection over the limit that says nothing is closed after a short deadline.
    let mut silent = d.conn();
    let t = Instant::now();
    assert_eq!(silent.reply()["event"], "error");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    held[0].send(json!({"cmd": "status"}));
    let s = held[0].reply();
    assert_eq!(s["counters"]["accepted"], 0, "{s}");
}

/// The request line Python's `json.dumps` writes by default (`ensure_ascii=True`: every
/// non-ASCII character as `\uXXXX`, astral ones as a surrogate pair), from real Python,
/// as docs/PROTOCOL.md's example client sends it.
fn python_json_dumps(text_char: char, count: usize) -> String {
    let script = format!(
        "import json, sys; sys.stdout.write(json.dumps({{'cmd': 'speak', 'text': chr({}) * {count}, 'id': 'big', 'voice': 'coral'}}) + '\\n')",
        u32::from(text_char)
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_long_non_ascii_text_escaped_by_json_dumps_fits_the_line_limit() {
    // The API never answers: the job is accepted, then cancelled; nothing is synthesised.
    let d = null("hang,id=bigline", "");
    let mut c = d.conn();
    // 20000 characters (speech.max_text_chars) of the worst case: astral-plane characters,
    // 12 bytes each as json.dumps escapes them: 240 kB on one line.
    let line = python_json_dumps('\u{1F514}', 20_000);
    assert!(line.len() > 240_000 && line.is_ascii());
    c.send_raw(line.as_bytes());
    let r = c.reply();
    assert_eq!(
        r["event"],
        "queued",
        "{}",
        &r.to_string()[..300.min(r.to_string().len())]
    );
    c.send(json!({"cmd": "cancel", "id": "big"}));
    let r = c.until("cancelled");
    assert_eq!(r.last().unwrap()["id"], "big", "{r:?}");
    // Longer than any accepted text could need: refused, saying the limit and why.
    let mut huge = vec![b'x'; 400_000];
    huge.push(b'\n');
    c.send_raw(&huge);
    let r = c.until("failed");
    let reason = r.last().unwrap()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("at most 305536 bytes") && reason.contains("speech.max_text_chars = 20000"),
        "{reason}"
    );
}

#[test]
fn a_key_file_others_can_read_is_warned_about_at_start_and_by_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let key_file = dir.path().join("openai_api_key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = config_text("fast,tone,id=keymode", "herald_null", &sock, "").replace(
        "[api]\n",
        &format!("[api]\napi_key_file = \"{}\"\n", key_file.display()),
    );
    let d = Served::start(dir, sock, &text, KEY, &[], Duration::from_secs(20));
    let expect = format!(
        "the API key file {} is readable by every user (mode 0644)",
        key_file.display()
    );
    d.wait_log(&expect, REPLY_TIMEOUT);
    let log = d.log();
    assert_eq!(log.matches(&expect).count(), 1, "{log}");
    assert!(log.contains("chmod 600"), "{log}");
    // It is a warning: the daemon serves.
    let mut c = Conn::open(&d.sock);
    c.speak("k", "Still speaking.", "normal");
    assert_eq!(c.until("finished").last().unwrap()["id"], "k");
    // herald check reads the key from the file (no OPENAI_API_KEY) and warns once.
    let out = d.herald(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("API key: found"), "{stdout}");
    assert_eq!(stdout.matches(&expect).count(), 1, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&expect), "said twice: {stderr}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
}

/// `herald --config CONFIG check` as an admin would run it, with the daemon's state
/// directory in `STATE_DIRECTORY`; stdout.
fn check_with_state(config: &Path, state: &Path) -> String {
    let (k, v) = support::alsa_env().env_var();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .env(k, v)
        .env("OPENAI_API_KEY", KEY)
        .env("STATE_DIRECTORY", state)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The models in the daemon's state file, as JSON (an empty object when none).
fn saved_models(state: &Path) -> Value {
    let text = std::fs::read_to_string(state.join("network-model.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&text).map_or(json!({}), |v| v["models"].clone())
}

#[test]
fn reset_network_model_forgets_what_the_daemon_learned_and_check_shows_it() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(Setup {
        scenario: "fast,tone,id=reset-model",
        device: Device::Null,
        extra: "",
        env: vec![("STATE_DIRECTORY", state.path().display().to_string())],
    });
    let key = herald::netmodel::store::key(
        &emu().base_url("fast,tone,id=reset-model"),
        herald::tts::FormatChoice::Opus,
    );
    let mut c = d.conn();
    c.speak("learn", LONG, "normal");
    let replies = c.until("finished");
    assert_eq!(ends(&replies), pairs(&[("learn", "finished")]));
    c.send(json!({"cmd": "status"}));
    let s = c.until("status").pop().unwrap();
    let learned = s["network_model"].as_array().unwrap();
    assert_eq!(learned.len(), 1, "{s}");
    assert_eq!(learned[0]["key"], key.as_str(), "{s}");
    assert!(learned[0]["utterances"].as_u64().unwrap() >= 1, "{s}");
    // The save runs off the scheduler: it lands shortly after the job.
    let until = Instant::now() + Duration::from_secs(10);
    while saved_models(state.path()).get(&key).is_none() {
        assert!(Instant::now() < until, "the model was never saved");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The admin's check reads it from the state directory.
    let text = check_with_state(&d.config, state.path());
    assert!(
        text.contains(&format!("network model: {key}: 1 utterance, start target")),
        "{text}"
    );
    assert!(
        text.contains("lateness p50") && text.contains("generation "),
        "{text}"
    );

    c.send(json!({"cmd": "reset_network_model"}));
    assert_eq!(
        c.reply(),
        json!({"event": "ok", "cmd": "reset_network_model", "jobs": [], "forgotten": 1})
    );
    // The ok comes once the empty model is saved.
    assert_eq!(saved_models(state.path()), json!({}));
    c.send(json!({"cmd": "status"}));
    let s = c.until("status").pop().unwrap();
    assert_eq!(s["network_model"], json!([]), "{s}");
    let text = check_with_state(&d.config, state.path());
    assert!(
        text.contains(&format!(
            "network model: {key}: nothing learned yet (cold start"
        )),
        "{text}"
    );
    // The CLI: nothing is left to forget.
    let out = d.herald(&["reset-network-model"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("reset: nothing had been learned"),
        "{stdout}"
    );
    let out = d.herald(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("learned: nothing yet"), "{stdout}");
}

#[test]
fn check_shows_the_learned_model_without_credentials_and_a_bad_file_is_one_line() {
    use herald::netmodel::store::{self, ModelStore};
    use herald::netmodel::{Burst, DEFAULT_QUANTILE};
    use herald::protocol::LearnedNetwork;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let cfg = dir.path().join("herald.toml");
    let text = config_text("fast,id=check-model", "herald_null", &sock, "").replace(
        &emu().base_url("fast,id=check-model"),
        "http://herald:PROXYPASS@127.0.0.1:9/v1",
    );
    std::fs::write(&cfg, text).unwrap();
    let state = dir.path().join("state");
    // 200 ms chunks generated at 4x; a 900 ms stall before the fourth.
    let bursts: Vec<Burst> = (0..10)
        .map(|i| Burst {
            at_ms: f64::from(i) * 50.0 + if i >= 3 { 900.0 } else { 0.0 },
            audio_before_ms: f64::from(i) * 200.0,
            silence_ms: if i == 3 { 950.0 } else { 50.0 },
            first_request: true,
        })
        .collect();
    let key = store::key(
        "http://herald:PROXYPASS@127.0.0.1:9/v1",
        herald::tts::FormatChoice::Opus,
    );
    let (mut model, _) = ModelStore::open(Some(&state));
    for _ in 0..3 {
        model.learn(&key, &bursts, 2000.0);
    }
    model.learn("http://other.example/v1 pcm", &bursts, 2000.0);
    model.save().unwrap();
    let learned = LearnedNetwork {
        key: key.clone(),
        summary: model.model(&key).summary(DEFAULT_QUANTILE),
    };
    assert!(learned.summary.target_ms > 0, "{learned}");

    let out = check_with_state(&cfg, &state);
    assert!(
        !out.contains("PROXYPASS"),
        "the password was printed: {out}"
    );
    assert!(
        out.contains(&format!("network model: {learned} (")),
        "{out}"
    );
    assert!(
        out.contains("network model: http://127.0.0.1:9/v1 opus: 3 utterances, start target "),
        "{out}"
    );
    assert!(out.contains("also learned for 1 other"), "{out}");
    // A corrupt file is reported on its line; check's verdict does not change.
    std::fs::write(state.join(store::FILE_NAME), b"{ not json").unwrap();
    let out = check_with_state(&cfg, &state);
    assert!(
        out.contains("network model: ignoring") && out.contains("not a network model file"),
        "{out}"
    );
    assert!(out.contains("socket: "), "the other checks ran: {out}");
}
