//! Running the real `herald serve` in tests and benchmarks: the command with the test
//! environment (ALSA test PCMs, the emulator's key, nothing inherited from a systemd
//! session), and waiting until its control socket answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{alsa_env, claim_fifo, FifoClock, FifoPcm};

/// `herald --config CONFIG serve` with the test ALSA config and `key`; stdin and stdout
/// closed, stderr left to the caller.
pub fn serve_command(config: &Path, key: &str) -> Command {
    let (var, value) = alsa_env().env_var();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .env(var, value)
        .env("OPENAI_API_KEY", key)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CACHE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Waits until something accepts connections on `socket`; false after `timeout`.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while UnixStream::connect(socket).is_err() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A running `herald serve` with its config, socket and log (its stderr, at debug level) in
/// a temp dir. Killed on drop, after which its log must not contain the API key.
pub struct Served {
    /// The daemon process.
    pub child: Child,
    /// Holds the config, the log and usually the socket.
    pub dir: tempfile::TempDir,
    /// The config file (tests rewrite it before a SIGHUP).
    pub config: PathBuf,
    /// The control socket.
    pub sock: PathBuf,
    key: String,
}

impl Served {
    /// Writes `config_text` to `dir`/herald.toml, starts the daemon with `key` and `env`,
    /// and waits (at most `timeout`) until `sock` accepts; panics with the log otherwise.
    pub fn start(
        dir: tempfile::TempDir,
        sock: PathBuf,
        config_text: &str,
        key: &str,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Served {
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = std::fs::File::create(dir.path().join("herald.log")).unwrap();
        let mut cmd = serve_command(&config, key);
        cmd.env("HERALD_LOG", "herald=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stderr(log).spawn().unwrap();
        let mut served = Served {
            child,
            dir,
            config,
            sock,
            key: key.to_string(),
        };
        let until = Instant::now() + timeout;
        while UnixStream::connect(&served.sock).is_err() {
            if let Ok(Some(st)) = served.child.try_wait() {
                panic!("herald serve exited with {st}: {}", served.log());
            }
            assert!(
                Instant::now() < until,
                "herald serve did not open its socket: {}",
                served.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("herald.log")).unwrap_or_default()
    }

    /// Runs `herald --config CONFIG ARGS` (a client command) without the key in its
    /// environment.
    pub fn herald(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap()
    }

    /// What `herald speak --out` (with `key`, this daemon's config and `options`) makes of
    /// `text`, 48 kHz mono: the reference a device's capture must match sample for sample.
    pub fn render(&self, key: &str, text: &str, options: &[&str]) -> Vec<i16> {
        let wav = self.dir.path().join("reference.wav");
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(&self.config)
            .args(["speak", "--out"])
            .arg(&wav)
            .args(options)
            .arg(text)
            .env("OPENAI_API_KEY", key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (spec, samples) = super::reference::read_wav(&wav);
        assert_eq!((spec.channels, spec.sample_rate), (1, 48_000));
        samples
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < until,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(
            !self.log().contains(&self.key),
            "the API key leaked into the log"
        );
    }
}

/// A `herald serve` (stderr discarded) on a FIFO-clocked device, for benchmarks: the
/// [`FifoClock`] stands in for the DAC.
pub struct OnFifo {
    /// The daemon process.
    pub child: Child,
    /// The control socket.
    pub socket: PathBuf,
    fifo: FifoPcm,
    clock: Option<FifoClock>,
}

impl OnFifo {
    /// Starts `herald serve` with the config that `config(device, socket, cache_dir)`
    /// returns, written to `dir`/`name`.toml; waits for its socket.
    pub fn start(
        dir: &Path,
        name: &str,
        key: &str,
        config: impl FnOnce(&str, &Path, &Path) -> String,
    ) -> OnFifo {
        let fifo = claim_fifo();
        let clock = FifoClock::start(&fifo.path, 48_000, 1);
        let socket = dir.join(format!("{name}.sock"));
        let cfg = dir.join(format!("{name}.toml"));
        let cache = dir.join(format!("{name}-cache"));
        std::fs::write(&cfg, config(&fifo.pcm, &socket, &cache)).unwrap();
        let child = serve_command(&cfg, key)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn herald serve");
        assert!(
            wait_for_socket(&socket, Duration::from_secs(10)),
            "daemon did not come up"
        );
        OnFifo {
            child,
            socket,
            fifo,
            clock: Some(clock),
        }
    }

    /// A device closed while idle closes the FIFO too, which ends the "DAC" reader: a fresh
    /// reader stands in for the DAC waking up (opening the FIFO blocks without one).
    pub fn restart_clock(&mut self) {
        drop(self.clock.take());
        self.clock = Some(FifoClock::start(&self.fifo.path, 48_000, 1));
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Sends one request `line` on a new connection and reads replies until `finished`:
/// (send → `started` reply in ms, the daemon's `start_to_audio_ms`, the `finished`
/// reply). Panics on any other outcome.
pub fn timed_request(socket: &Path, line: &str) -> (f64, f64, serde_json::Value) {
    let mut s = UnixStream::connect(socket).unwrap();
    let t0 = Instant::now();
    writeln!(s, "{line}").unwrap();
    let mut started = None;
    for reply in BufReader::new(s.try_clone().unwrap()).lines() {
        let reply = reply.unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        match v["event"].as_str() {
            Some("started") => {
                started = Some((
                    t0.elapsed().as_secs_f64() * 1000.0,
                    v["start_to_audio_ms"].as_f64().unwrap_or(f64::NAN),
                ))
            }
            Some("finished") => {
                let (client, daemon) = started.expect("finished without a started reply");
                return (client, daemon, v);
            }
            Some("queued") => {}
            other => panic!("unexpected reply {other:?}: {reply}"),
        }
    }
    panic!("the daemon closed the connection before `finished`")
}
