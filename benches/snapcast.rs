//! House-wide announcement benchmark (figures, not a timed test): `cargo bench --bench snapcast`
//! (`-- N` for N announcements, default 20).
//!
//! The rig of tests/snapcast.rs with the production defaults: real `snapserver` (flac,
//! `buffer = 1000`) and two real `snapclient` rooms on FIFO-clocked alsa-lib devices, `herald
//! serve` with `[outputs.house]` at its defaults (`latency_ms = 1000`, `lead_in_ms = 600`), the
//! emulator at its default pacing (first byte after 300 ms, 4× real time; the tone voice so
//! each announcement can be found in what the rooms played). For N announcements in a row
//! it prints request → first sample in each room, the onset spread between the rooms, and
//! herald's CPU while streaming. `VERBOSE=1` prints every announcement's spread and each
//! room's gaps; `PAUSE_MS=N` waits N ms between announcements (default: back to back);
//! `DAC=nodelay` plays into FIFO devices that report no delay (default: ones that do).
//! Results and the command are in docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::daemon::Served;
use support::snapcast::{at, channels, frame_at, locate, Dac, Room, SnapServer, Streams};

const KEY: &str = "sk-bench-snapcast-0123456789";
const TEXT: &str = "The bus is here, the bus is here.";
const SCENARIO: &str = "tone,id=bench";

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Sends one house-wide announcement; returns when it was sent and the `finished` reply.
fn announce(served: &Served, id: &str) -> (Instant, serde_json::Value) {
    let mut s = UnixStream::connect(&served.sock).unwrap();
    let t0 = Instant::now();
    writeln!(s, r#"{{"text":"{TEXT}","to":"house","id":"{id}"}}"#).unwrap();
    for line in BufReader::new(s).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        match v["event"].as_str() {
            Some("queued" | "started") => {}
            Some("finished") => return (t0, v),
            _ => panic!("{id}: {v}"),
        }
    }
    panic!("{id}: the daemon closed the connection")
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo test --all-targets` builds and runs benches too: figures come from `cargo bench`
    // (release build, nothing else running), and CI's Snapcast checks are tests/snapcast.rs.
    if !std::env::args().any(|a| a == "--bench") {
        println!("snapcast benchmark: run it with `cargo bench --bench snapcast`");
        return;
    }
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    if Command::new("snapserver")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("snapserver/snapclient are not installed (scripts/setup.sh installs them)");
        return;
    }
    let server = SnapServer::with(Streams::Announcements, "flac", 1000);
    let dac = if std::env::var("DAC").is_ok_and(|v| v == "nodelay") {
        Dac::NoDelay
    } else {
        Dac::ReportsDelay
    };
    let rooms = [
        Room::start_on(&server, 0, dac),
        Room::start_on(&server, 1, dac),
    ];
    server.wait_clients(2);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let config = format!(
        "[api]\napi_base = \"{}\"\n\n[audio]\ndevice = \"herald_null\"\n\n[cache]\ndir = \"{}\"\n\n\
         [daemon]\nsocket_path = \"{}\"\nlead_in_ms = 0\n\n\
         [outputs.house]\ntype = \"snapcast\"\nserver = \"127.0.0.1:{}\"\n",
        support::emulator::shared(KEY).base_url(SCENARIO),
        dir.path().join("cache").display(),
        sock.display(),
        server.source_port
    );
    let served = Served::start(dir, sock, &config, KEY, &[], Duration::from_secs(20));
    let reference = served.render(KEY, TEXT, &[]);

    let pid = served.child.id();
    let cpu0 = cpu_seconds(pid);
    let wall0 = Instant::now();
    let mut sent = Vec::new();
    let mut audio_s = 0.0;
    for i in 0..n {
        let (t, fin) = announce(&served, &format!("a{i}"));
        audio_s += fin["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        sent.push(t);
        if let Some(ms) = std::env::var("PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let [a, b] = rooms;
    let caps = [a.played(), b.played()];
    if std::env::var_os("VERBOSE").is_some() {
        for c in &caps {
            eprintln!(
                "gaps {} late ticks {} {:?}",
                c.gaps.len(),
                c.late_ticks,
                c.gaps
            );
        }
    }

    let mut first = [Vec::new(), Vec::new()];
    let mut spread = Vec::new();
    for t in &sent {
        let mut onsets = Vec::new();
        for (r, cap) in caps.iter().enumerate() {
            let (left, _) = channels(cap);
            let from = frame_at(cap, *t);
            let start = from
                + locate(&left[from.min(left.len())..], &reference)
                    .expect("an announcement was not heard");
            let onset = at(cap, start);
            first[r].push(onset.duration_since(*t).as_secs_f64() * 1000.0);
            onsets.push(onset);
        }
        let d = onsets[0].max(onsets[1]) - onsets[0].min(onsets[1]);
        spread.push(d.as_secs_f64() * 1e6);
        if std::env::var_os("VERBOSE").is_some() {
            eprintln!("spread {:.0} µs", d.as_secs_f64() * 1e6);
        }
    }
    println!("house-wide announcements: {n}, snapserver buffer 1000 ms (flac), lead-in 600 ms, emulator TTFB 300 ms, rooms' DAC {dac:?}");
    for (r, v) in first.iter().enumerate() {
        println!(
            "  room {r}: request → first sample  p50 {:.0} ms  p90 {:.0} ms  max {:.0} ms",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 1.0)
        );
    }
    println!(
        "  onset spread between the rooms: p50 {:.0} µs  p90 {:.0} µs  max {:.0} µs",
        percentile(&spread, 0.5),
        percentile(&spread, 0.9),
        percentile(&spread, 1.0)
    );
    println!(
        "  herald CPU while streaming: {:.2} s over {wall:.1} s wall ({:.1} % of one core; {audio_s:.1} s of audio, {:.1} ms CPU per audio second)",
        cpu,
        cpu / wall * 100.0,
        cpu / audio_s * 1000.0
    );
}
