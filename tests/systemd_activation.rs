//! `herald serve` started the way systemd starts herald.service from herald.socket:
//! `systemd-socket-activate` holds the listening socket, starts herald on the first
//! connection and hands the socket over (`LISTEN_FDS`), and a datagram socket in the test
//! stands in for systemd's notify socket (`NOTIFY_SOCKET`, `WATCHDOG_USEC`). systemd itself
//! cannot run here (it is not PID 1); these are the same environment variables and file
//! descriptors it passes.
//!
//! What a user of the unit relies on: READY=1 only after the socket is served and the config
//! is valid (never for a bad config), a STATUS= line, WATCHDOG=1 pings at the rate systemd
//! asked for, RELOADING=1/READY=1 around a SIGHUP, STOPPING=1 and a clean exit on SIGTERM,
//! and the connection that woke herald is accepted on the socket systemd passed (herald must
//! not bind a socket of its own).
//!
//! The assertions only use the notify protocol and the socket's byte stream, not the control
//! protocol: any answer to a malformed request, or a close, shows the connection was served.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Hang guard only (a slow, loaded machine must still pass well inside it).
const HANG_GUARD: Duration = Duration::from_secs(60);
/// WATCHDOG_USEC handed to herald: it must ping every 200 ms.
const WATCHDOG_USEC: u32 = 400_000;

/// One `herald serve` under `systemd-socket-activate`, with the notify messages it sent.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    notify: UnixDatagram,
    /// Every notify line received, in order (`READY=1`, `STATUS=…`, …).
    lines: Vec<String>,
    /// The connection that triggered the start.
    first: Option<UnixStream>,
}

impl Daemon {
    /// Starts `herald serve` with `config` (`{dir}` is replaced by the temporary directory)
    /// by connecting to the activation socket; `None` if systemd-socket-activate is missing.
    fn start(config: &str) -> Option<Daemon> {
        let alsa = support::alsa_env();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("herald.toml");
        std::fs::write(
            &config_path,
            config.replace("{dir}", dir.path().to_str().unwrap()),
        )
        .unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let log = File::create(dir.path().join("herald.log")).unwrap();
        let (alsa_key, alsa_value) = alsa.env_var();
        let spawned = Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(dir.path().join("herald.sock"))
            .arg("-E")
            .arg(format!(
                "NOTIFY_SOCKET={}",
                dir.path().join("notify.sock").display()
            ))
            .arg("-E")
            .arg(format!("WATCHDOG_USEC={WATCHDOG_USEC}"))
            .arg("-E")
            .arg("OPENAI_API_KEY=sk-test-not-a-real-key")
            .arg("-E")
            .arg(format!("{alsa_key}={alsa_value}"))
            .arg("-E")
            .arg("HERALD_LOG=info")
            .arg(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "SKIPPED: systemd-socket-activate is not installed (apt-get install systemd)"
                );
                return None;
            }
            Err(e) => panic!("cannot run systemd-socket-activate: {e}"),
        };
        let mut daemon = Daemon {
            dir,
            child,
            notify,
            lines: Vec::new(),
            first: None,
        };
        // systemd-socket-activate listens first and execs herald (in its own process, so
        // LISTEN_PID matches) only when a connection arrives, like a socket unit.
        let socket = daemon.socket_path();
        let connected = daemon.poll_until("the activation socket to listen", |_| {
            UnixStream::connect(&socket).ok()
        });
        daemon.first = Some(connected);
        Some(daemon)
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("herald.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("herald.log")).unwrap_or_default()
    }

    /// Collects notify lines until `check` returns something; fails (with herald's log) if
    /// herald exits first or the hang guard runs out.
    fn poll_until<T>(&mut self, what: &str, mut check: impl FnMut(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            self.receive();
            if let Some(found) = check(&self.lines) {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "herald exited ({status}) while waiting for {what}; notify: {:?}\nlog:\n{}",
                    self.lines,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {HANG_GUARD:?}; notify: {:?}\nlog:\n{}",
                self.lines,
                self.log()
            );
        }
    }

    /// Reads what arrived on the notify socket (waits at most the read timeout).
    fn receive(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.lines.extend(msg.lines().map(String::from));
            self.notify.set_nonblocking(true).unwrap();
        }
        self.notify.set_nonblocking(false).unwrap();
    }

    /// Waits for READY=1, a STATUS= line and two WATCHDOG=1 pings after it.
    fn wait_ready(&mut self) {
        self.poll_until("READY=1, STATUS= and two WATCHDOG=1", |lines| {
            let ready = lines.iter().position(|l| l == "READY=1")?;
            lines.iter().find(|l| l.starts_with("STATUS="))?;
            let pings = lines[ready..].iter().filter(|l| *l == "WATCHDOG=1").count();
            (pings >= 2).then_some(())
        });
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of the child this test spawned and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only the process this test started.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A daemon config: the test null PCM, no real-time request (the test may run as root and
/// must not put a thread at SCHED_FIFO on a shared machine), an API base nothing listens on
/// (nothing is spoken), and a configured socket path different from the activated one.
fn config() -> String {
    "[api]\n\
     api_base = \"http://127.0.0.1:9/v1\"\n\
     \n\
     [audio]\n\
     device = \"herald_null\"\n\
     realtime_priority = 0\n\
     \n\
     [cache]\n\
     dir = \"{dir}/cache\"\n\
     \n\
     [daemon]\n\
     socket_path = \"{dir}/configured.sock\"\n"
        .to_string()
}

/// Waits for the process to exit (the hang guard applies) and returns its status.
fn wait_exit(daemon: &mut Daemon) -> ExitStatus {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        daemon.receive();
        if let Some(status) = daemon.child.try_wait().unwrap() {
            daemon.receive();
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not exit within {HANG_GUARD:?}; notify: {:?}\nlog:\n{}",
            daemon.lines,
            daemon.log()
        );
    }
}

#[test]
fn socket_activated_daemon_reports_ready_status_watchdog_and_serves_the_socket() {
    let Some(mut daemon) = Daemon::start(&config()) else {
        return;
    };
    daemon.wait_ready();
    let status = daemon
        .lines
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .unwrap()
        .clone();
    assert!(
        status.to_lowercase().contains("idle"),
        "nothing is being spoken, so the status should say idle: {status}"
    );

    // The connection that woke herald was waiting in the backlog of the passed socket; herald
    // must accept it and answer a malformed request (or close) once we stop sending.
    let mut first = daemon.first.take().unwrap();
    first.write_all(b"this is not a request\n").unwrap();
    first.shutdown(std::net::Shutdown::Write).unwrap();
    first.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut answer = Vec::new();
    let read = first.read_to_end(&mut answer);
    assert!(
        read.is_ok(),
        "the activated socket did not serve the connection: {read:?}\nlog:\n{}",
        daemon.log()
    );
    assert!(
        !Path::new(&daemon.dir.path().join("configured.sock")).exists(),
        "herald bound its configured socket instead of using the one systemd passed"
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "herald exited after a malformed request:\n{}",
        daemon.log()
    );

    daemon.signal(libc::SIGTERM);
    let exit = wait_exit(&mut daemon);
    assert!(
        daemon.lines.iter().any(|l| l == "STOPPING=1"),
        "no STOPPING=1 before exit: {:?}",
        daemon.lines
    );
    assert!(
        exit.success(),
        "SIGTERM should be a clean stop, got {exit}\n{}",
        daemon.log()
    );
}

#[test]
fn sighup_reload_is_reported_as_reloading_then_ready() {
    let Some(mut daemon) = Daemon::start(&config()) else {
        return;
    };
    daemon.wait_ready();
    let before = daemon.lines.len();
    // What `systemctl reload herald` does (ExecReload=/bin/kill -HUP $MAINPID).
    daemon.signal(libc::SIGHUP);
    daemon.poll_until("RELOADING=1 then READY=1 after SIGHUP", |lines| {
        let reloading = before + lines[before..].iter().position(|l| l == "RELOADING=1")?;
        lines[reloading..]
            .iter()
            .any(|l| l == "READY=1")
            .then_some(())
    });
    // Still alive and still pinging the watchdog after the reload.
    let after = daemon.lines.len();
    daemon.poll_until("WATCHDOG=1 after the reload", |lines| {
        lines[after..]
            .iter()
            .any(|l| l == "WATCHDOG=1")
            .then_some(())
    });
}

#[test]
fn invalid_config_never_reports_ready() {
    // A value out of range: systemd must see a failed start, not a ready service.
    let bad = format!("{}\n[speech]\nspeed = 9.0\n", config());
    let Some(mut daemon) = Daemon::start(&bad) else {
        return;
    };
    let exit = wait_exit(&mut daemon);
    assert!(!exit.success(), "herald accepted speed = 9.0");
    assert!(
        !daemon.lines.iter().any(|l| l == "READY=1"),
        "READY=1 sent for an invalid config: {:?}",
        daemon.lines
    );
    assert!(
        daemon.log().contains("speech.speed"),
        "the error should name the bad key:\n{}",
        daemon.log()
    );
}

/// One request line to the control socket; returns the connection for reading replies.
fn request(socket: &Path, line: &str) -> std::io::BufReader<UnixStream> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    std::io::BufReader::new(s)
}

fn reply(r: &mut std::io::BufReader<UnixStream>) -> serde_json::Value {
    use std::io::BufRead;
    let mut line = String::new();
    r.read_line(&mut line).expect("no reply in time");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
}

fn device_status(socket: &Path) -> serde_json::Value {
    let mut r = request(socket, r#"{"cmd":"status"}"#);
    reply(&mut r)["device"].clone()
}

/// A USB DAC that hangs mid-announcement: the FIFO "DAC" stops reading, so herald's device
/// write blocks. While it is stuck herald must not feed the watchdog (systemd would restart
/// a daemon whose audio is wedged) and `status` must say so; the job then fails with the
/// reason instead of holding the scheduler, and the watchdog is fed again.
/// A daemon playing a long announcement on a FIFO "DAC" (speech from the emulator), and the
/// connection waiting for that job's replies, after its `started`.
fn playing_on_a_fifo(
    id: &str,
) -> Option<(Daemon, support::FifoClock, std::io::BufReader<UnixStream>)> {
    const KEY: &str = "sk-test-not-a-real-key";
    let emu = support::emulator::shared(KEY);
    let fifo = support::claim_fifo();
    let clock = support::FifoClock::start(&fifo.path, 48_000, 1);
    let cfg = format!(
        "[api]\napi_base = \"{}\"\n\n[audio]\ndevice = \"{}\"\nrealtime_priority = 0\nwrite_timeout_ms = 2500\n\n[cache]\ndir = \"{{dir}}/cache\"\n\n[daemon]\nsocket_path = \"{{dir}}/configured.sock\"\nkeepalive_s = 0\n",
        emu.base_url(&format!("fast,tone,id={id}")),
        fifo.pcm
    );
    let mut daemon = Daemon::start(&cfg)?;
    daemon.wait_ready();
    let text = "This announcement is long enough to be playing when the converter hangs. \
                It keeps going for several seconds, sentence after sentence, so that the \
                device is surely in the middle of it.";
    let mut job = request(
        &daemon.socket_path(),
        &serde_json::json!({"cmd": "speak", "id": id, "text": text}).to_string(),
    );
    assert_eq!(reply(&mut job)["event"], "queued");
    assert_eq!(reply(&mut job)["event"], "started", "{}", daemon.log());
    Some((daemon, clock, job))
}

#[test]
fn a_dac_that_hangs_mid_announcement_stops_the_watchdog_until_the_job_fails() {
    let Some((mut daemon, clock, mut job)) = playing_on_a_fifo("hung-dac") else {
        return;
    };
    let socket = daemon.socket_path();
    std::thread::sleep(Duration::from_millis(300));
    clock.pause();

    // The write blocks: status says the device is stuck, and says why.
    let deadline = Instant::now() + HANG_GUARD;
    let stuck = loop {
        let d = device_status(&socket);
        if d["state"] == "stuck" {
            break d;
        }
        assert!(Instant::now() < deadline, "never reported stuck: {d}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let why = stuck["error"].as_str().unwrap_or_default();
    assert!(why.contains("blocked"), "{stuck}");
    // No WATCHDOG=1 while the write stays stuck (a ping already on its way may land).
    std::thread::sleep(Duration::from_millis(100));
    daemon.receive();
    let mark = daemon.lines.len();
    std::thread::sleep(Duration::from_millis(800));
    daemon.receive();
    let pinged = daemon.lines[mark..].iter().any(|l| l == "WATCHDOG=1");
    let still_stuck = device_status(&socket)["state"] == "stuck";
    assert!(still_stuck, "the job gave up sooner than the test expected");
    assert!(
        !pinged,
        "the watchdog was fed while the device write hung: {:?}",
        &daemon.lines[mark..]
    );

    // The job fails with the reason, and the watchdog is fed again.
    let end = reply(&mut job);
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stopped taking audio"), "{reason}");
    let after = daemon.lines.len();
    daemon.poll_until("WATCHDOG=1 after the job failed", |lines| {
        lines[after..]
            .iter()
            .any(|l| l == "WATCHDOG=1")
            .then_some(())
    });
    // The daemon still answers and names the device's state.
    let d = device_status(&socket);
    assert_ne!(d["state"], "stuck", "{d}");
    clock.resume();
    drop(clock);
}

/// SIGTERM while the DAC hangs: the playing job still gets its terminal reply (and the log
/// says so), and herald exits within systemd's stop budget instead of waiting on the device.
#[test]
fn sigterm_with_a_hung_dac_ends_the_job_with_a_reply_and_exits_promptly() {
    let Some((mut daemon, clock, mut job)) = playing_on_a_fifo("hung-term") else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    clock.pause();
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    daemon.signal(libc::SIGTERM);
    let end = reply(&mut job);
    assert_eq!(end["event"], "cancelled", "{end}");
    assert_eq!(end["by"], "shutdown", "{end}");
    let exit = wait_exit(&mut daemon);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?}\n{}",
        daemon.log()
    );
    assert!(exit.success(), "{exit}\n{}", daemon.log());
    assert!(
        daemon.log().contains("job cancelled"),
        "nothing logged about the playing job:\n{}",
        daemon.log()
    );
    clock.resume();
}
