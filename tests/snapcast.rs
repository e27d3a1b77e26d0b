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
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Served;
use support::snapcast::*;

const KEY: &str = "sk-snapcast-0123456789abcdefSECRET";
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// About 1.3 s of the emulator's tone.
const PHRASE: &str = "Dinner is ready, everyone.";
/// snapserver's end-to-end buffer here (ms), and herald's `latency_ms`.
const BUFFER_MS: u32 = TEST_BUFFER_MS;
/// Where the rooms' first samples may differ (the bar).
const ONSET_SPREAD: Duration = Duration::from_millis(5);
/// How late `finished` may come after the last sample was heard in the rooms (20 ms of
/// snapserver's chunk, 20 ms of margin, scheduling; docs/MULTIROOM.md says 20–50 ms).
const FINISH_TOLERANCE: Duration = Duration::from_millis(150);

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

/// What herald plays for `text`, from its own WAV output (mono, 48 kHz): the reference
/// each room's capture must match sample for sample.
fn reference(served: &Served, text: &str) -> Vec<i16> {
    reference_with(served, text, &[])
}

/// [`reference`] with more `herald speak` options (e.g. `--volume 50`).
fn reference_with(served: &Served, text: &str, options: &[&str]) -> Vec<i16> {
    let options: Vec<&str> = ["--no-chime"].iter().chain(options).copied().collect();
    served.render(KEY, text, &options)
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
    let why = end["output_fallback"].as_str().unwrap();
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
    // `status` shows the output failing (and when it retries), this box's device apart.
    let mut c = UnixStream::connect(&served.sock).unwrap();
    writeln!(c, "{}", json!({"cmd": "status"})).unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    let st: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(st["device"]["name"], "herald_null", "{st}");
    let house = &st["outputs"]["house"];
    assert_eq!(house["state"], "failed", "{st}");
    assert!(house["retry_in_ms"].is_u64(), "{st}");
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

#[test]
fn through_a_meta_stream_the_announcement_interrupts_the_music_whole_and_gives_it_back() {
    if !snapcast_installed() {
        return;
    }
    let server = SnapServer::with(Streams::Meta, "pcm", BUFFER_MS);
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
    // The music comes back once herald has stopped sending (the announcement's silence runs
    // until the rooms have played it: latency_ms + 20 ms) and the announcement stream has
    // gone idle (≤ 520 ms later).
    std::thread::sleep(Duration::from_millis(2000));
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
    let after = start + reference.len() + 62_400;
    assert!(
        left.len() > after + 4800 && is_music(&left[after..after + 4800]),
        "the music did not come back within 1.3 s of the announcement's end"
    );
}

#[test]
fn a_skipped_house_announcement_fades_out_in_the_rooms_without_failing_the_output() {
    if !snapcast_installed() {
        return;
    }
    let server = SnapServer::start(true);
    // snapserver's default buffer on herald's side: a fade-out waits for all of it.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let text = config(&sock, "fast,tone,id=skip", server.source_port, "").replace(
        &format!("latency_ms = {BUFFER_MS}\n"),
        "latency_ms = 1000\n",
    );
    let served = Served::start(dir, sock, &text, KEY, &[], Duration::from_secs(20));
    let mut w = UnixStream::connect(&served.sock).unwrap();
    w.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    writeln!(w, "{}", json!({"text": LONG, "to": "house", "id": "long"})).unwrap();
    let mut lines = BufReader::new(w.try_clone().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next()["event"], "queued");
    assert_eq!(next()["event"], "started");
    std::thread::sleep(Duration::from_millis(500));
    let mut c = UnixStream::connect(&served.sock).unwrap();
    writeln!(c, "{}", json!({"cmd": "skip"})).unwrap();
    let mut ok = String::new();
    BufReader::new(c).read_line(&mut ok).unwrap();
    assert!(ok.contains("\"ok\""), "{ok}");
    let end = next();
    assert_eq!(end["event"], "cancelled", "{end}");
    // The fade-out plays through snapserver's buffer (1 s) before the next job:
    // waiting for it is not a hung device.
    let r = request(
        &served,
        json!({"text": PHRASE, "to": "house", "id": "next"}),
    );
    assert_eq!(terminal(&r)["event"], "finished", "{r:?}");
    let log = served.log();
    assert!(!log.contains("audio device error"), "{log}");
}

#[test]
fn a_house_announcement_keeps_its_volume_and_chime() {
    if !snapcast_installed() {
        return;
    }
    let server = SnapServer::start(true);
    let room = Room::start(&server, 0);
    server.wait_clients(1);
    let chime = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chimes/ding.wav");
    let extra = format!("\n[chimes.ding]\nfile = \"{}\"\n", chime.display());
    let served = serve("fast,tone,id=chime", server.source_port, &extra);
    let quiet = reference_with(&served, PHRASE, &["--volume", "50"]);
    let r = request(
        &served,
        json!({"text": PHRASE, "to": "house", "volume": 50, "chime": "ding"}),
    );
    let end = terminal(&r);
    assert_eq!(end["event"], "finished", "{end}");
    assert_eq!(
        (end["volume"].as_u64(), end["chime"].as_str()),
        (Some(50), Some("ding")),
        "{end}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let cap = room.played();
    let (left, _) = channels(&cap);
    // The speech at volume 50, sample for sample (herald's own output at --volume 50).
    let start = locate_after_chime(&left, &quiet).expect("the announcement was not heard");
    let heard = &left[start..(start + quiet.len()).min(left.len())];
    let wrong = heard
        .iter()
        .zip(&quiet)
        .filter(|(a, b)| (i32::from(**a) - i32::from(**b)).abs() > 2)
        .count();
    let worst = heard
        .iter()
        .zip(&quiet)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max();
    let peaks = (
        heard.iter().map(|v| v.unsigned_abs()).max(),
        quiet.iter().map(|v| v.unsigned_abs()).max(),
    );
    assert_eq!(
        (heard.len(), wrong),
        (quiet.len(), 0),
        "the quiet speech differs (worst {worst:?}, peaks {peaks:?})"
    );
    // The chime (at volume 50 too) in the two seconds before the speech.
    let before = &left[start.saturating_sub(96_000)..start];
    assert!(
        before.iter().filter(|v| v.unsigned_abs() > 200).count() > 4800,
        "no chime before the speech"
    );
}

/// Where `reference` starts after the chime: past the chime's loud stretch and the quiet
/// (≥ 50 ms) that follows it, aligned like [`locate`].
fn locate_after_chime(room: &[i16], reference: &[i16]) -> Option<usize> {
    let loud = |s: &i16| s.unsigned_abs() > 64;
    let chime = room.iter().position(loud)?;
    let mut quiet = 0;
    let mut after = None;
    for (i, s) in room.iter().enumerate().skip(chime) {
        quiet = if loud(s) { 0 } else { quiet + 1 };
        if quiet == 2400 {
            after = Some(i);
            break;
        }
    }
    let from = after?;
    Some(from + locate(&room[from..], reference)?)
}
