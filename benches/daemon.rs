//! Daemon benchmark (figures, not a timed test): `cargo bench --bench daemon`.
//!
//! Two `herald serve` daemons run side by side on FIFO-clocked alsa-lib devices (real-time
//! pacing, see tests/support) against the in-process emulator at its default pacing
//! (time to first byte 300 ms, 4× real time): one closes its device when idle
//! (`idle_close_s = 10`), one keeps it open (`idle_close_s = 0`). For each it measures the
//! time to first audio of back-to-back requests and of a request after 60 s idle, and the
//! daemon's RSS and CPU while idle. Results and the command are in docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::daemon::{timed_request, OnFifo};

const KEY: &str = "sk-bench-daemon-0123456789";
const TEXT: &str = "The doorbell rang at the front door.";
const IDLE: Duration = Duration::from_secs(60);

struct Daemon {
    served: OnFifo,
    closes_when_idle: bool,
}

fn start(dir: &Path, name: &str, base: &str, idle_close_s: u32) -> Daemon {
    let served = OnFifo::start(dir, name, KEY, |device, socket, cache| {
        format!(
            "[api]\napi_base = \"{base}\"\n[audio]\ndevice = \"{device}\"\n[cache]\ndir = \"{}\"\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = {idle_close_s}\n",
            cache.display(),
            socket.display()
        )
    });
    Daemon {
        served,
        closes_when_idle: idle_close_s > 0,
    }
}

/// Sends one speak request; returns (client-side send → `started` reply, the daemon's own
/// start_to_audio_ms) once the job finished.
fn say(d: &Daemon, id: &str) -> (f64, f64) {
    let line = format!("{{\"text\":\"{TEXT}\",\"id\":\"{id}\"}}");
    let (client, daemon, _) = timed_request(&d.served.socket, &line);
    (client, daemon)
}

/// (RSS KiB, CPU seconds) of a process from /proc.
fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the command name).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss, ticks / hz)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("daemon benchmark: run it with `cargo bench --bench daemon`");
        return;
    }
    // The emulator stands in for OpenAI on 127.0.0.1 for the whole run.
    let emu = support::emulator::shared(KEY);
    herald_emulator::synthesize(TEXT, "alloy", 1.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut daemons = [
        (
            "device closed when idle (idle_close_s = 10)",
            start(dir.path(), "closing", &emu.base_url("id=closing"), 10),
        ),
        (
            "device kept open (idle_close_s = 0)",
            start(dir.path(), "open", &emu.base_url("id=open"), 0),
        ),
    ];
    println!(
        "herald daemon benchmark — emulator default pacing (ttfb 300 ms, 4x), FIFO-clocked devices"
    );
    println!("text: {TEXT:?}\n");
    let mut idle_figures = Vec::new();
    for (label, d) in &daemons {
        let first = say(d, "warmup");
        let mut b2b = Vec::new();
        for i in 0..5 {
            b2b.push(say(d, &format!("b{i}")));
        }
        let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            v.iter().map(f).sum::<f64>() / v.len() as f64
        };
        println!("{label}");
        println!(
            "  first request after start      client {:>6.0} ms   daemon {:>6.0} ms",
            first.0, first.1
        );
        println!(
            "  back to back (mean of 5)       client {:>6.0} ms   daemon {:>6.0} ms",
            mean(&b2b, |x| x.0),
            mean(&b2b, |x| x.1)
        );
    }
    // Both idle at once for 60 s, measuring the daemons' idle cost.
    let before: Vec<_> = daemons
        .iter()
        .map(|(_, d)| proc_usage(d.served.child.id()))
        .collect();
    std::thread::sleep(IDLE);
    for (i, (label, d)) in daemons.iter_mut().enumerate() {
        let (rss, cpu) = proc_usage(d.served.child.id());
        if d.closes_when_idle {
            d.served.restart_clock();
        }
        idle_figures.push((
            *label,
            rss,
            (cpu - before[i].1) / IDLE.as_secs_f64() * 100.0,
        ));
        let after = say(d, "after-idle");
        println!(
            "{label}\n  after {} s idle                 client {:>6.0} ms   daemon {:>6.0} ms",
            IDLE.as_secs(),
            after.0,
            after.1
        );
    }
    println!();
    for (label, rss, cpu_pct) in idle_figures {
        println!(
            "idle daemon, {label}: RSS {:.1} MiB, CPU {:.3} % over {} s",
            rss as f64 / 1024.0,
            cpu_pct,
            IDLE.as_secs()
        );
    }
    for (_, d) in daemons.iter_mut() {
        d.served.terminate();
    }
}
