//! A per-process ALSA configuration for tests: real alsa-lib, test PCMs instead of hardware.
//!
//! [`alsa_env`] writes `herald-test.conf` into a temporary directory, builds the small test
//! plugin in `herald_test_pcm.c` next to it, creates the FIFOs and points `ALSA_CONFIG_PATH` at
//! `/usr/share/alsa/alsa.conf:<conf>` — once per process, before alsa-lib reads its config.
//! Every test that touches ALSA calls it first. The PCMs it defines:
//!
//! | PCM | stands for |
//! | --- | --- |
//! | `herald_null` | any device: accepts every format/rate/size, swallows data instantly |
//! | `herald_stereo` | a stereo-only card (e.g. the Pi's headphone jack, most USB DACs) |
//! | `herald_44k` | a DAC that only runs at 44.1 kHz (1–2 channels, S16) |
//! | `herald_s32` | an I2S DAC that only takes S32_LE |
//! | `herald_s32_file` | `herald_s32` with its input captured to [`AlsaTestEnv::s32_capture`] |
//! | `herald_float` | a device that only takes FLOAT_LE |
//! | `herald_busy` | a device another program holds (every open fails with EBUSY) |
//! | `herald_no_s16` | a device herald cannot feed (µ-law only) |
//! | `herald_fixed_period` | a device with one fixed period size (4096 bytes) |
//! | `herald_reject_period` | a driver that advertises 1920-byte periods but fails `hw_params` with them |
//! | `herald_reject_small_periods` | a driver that fails `hw_params` for any period up to 8192 bytes |
//! | `herald_xrun` | a device that underruns every 4800 frames (recovery must keep going) |
//! | `herald_fifo0..7` | a real-time device: raw frames into a FIFO read by a [`super::FifoClock`]; like many simple drivers it reports no delay (`null` under the `file` plugin) |
//! | `herald_fifo0..7_delay` | the same FIFO through the test plugin, reporting the pipe's fill as its delay, as a sound card reports its buffer |

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many FIFO-backed PCMs each process gets (one per concurrently running test).
pub const FIFO_COUNT: usize = 8;

/// The generated configuration of this test process.
#[derive(Debug)]
pub struct AlsaTestEnv {
    dir: PathBuf,
    config_path: String,
    fifos: Vec<PathBuf>,
    s32_capture: PathBuf,
}

/// A FIFO-backed PCM handed to one test.
#[derive(Debug, Clone)]
pub struct FifoPcm {
    /// ALSA device name, e.g. `herald_fifo3`.
    pub pcm: String,
    /// The FIFO the PCM writes raw frames into.
    pub path: PathBuf,
    /// The same FIFO as a device that reports its delay, e.g. `herald_fifo3_delay`.
    pub delay_pcm: String,
}

static ENV: OnceLock<AlsaTestEnv> = OnceLock::new();
static NEXT_FIFO: AtomicUsize = AtomicUsize::new(0);

/// Sets up (once per process) and returns the test ALSA environment.
pub fn alsa_env() -> &'static AlsaTestEnv {
    ENV.get_or_init(build)
}

/// Hands out a FIFO PCM no other test in this process uses (panics after [`FIFO_COUNT`]).
pub fn claim_fifo() -> FifoPcm {
    let env = alsa_env();
    let index = NEXT_FIFO.fetch_add(1, Ordering::SeqCst);
    assert!(
        index < FIFO_COUNT,
        "more than {FIFO_COUNT} FIFO PCMs claimed in one test binary"
    );
    FifoPcm {
        pcm: format!("herald_fifo{index}"),
        path: env.fifos[index].clone(),
        delay_pcm: format!("herald_fifo{index}_delay"),
    }
}

impl AlsaTestEnv {
    /// `("ALSA_CONFIG_PATH", value)`, to hand the same PCMs to a child process.
    pub fn env_var(&self) -> (&'static str, &str) {
        ("ALSA_CONFIG_PATH", &self.config_path)
    }

    /// The FIFO behind `herald_fifo{i}`.
    pub fn fifo_path(&self, i: usize) -> &Path {
        &self.fifos[i]
    }

    /// The raw file `herald_s32_file` writes what it was given into (S32 native-endian frames).
    pub fn s32_capture(&self) -> &Path {
        &self.s32_capture
    }
}

extern "C" fn remove_dir_at_exit() {
    if let Some(env) = ENV.get() {
        let _ = std::fs::remove_dir_all(&env.dir);
    }
}

fn build() -> AlsaTestEnv {
    let dir = tempfile::Builder::new()
        .prefix("herald-alsa-")
        .tempdir()
        .unwrap()
        .keep();
    // SAFETY: registering a plain extern "C" fn; it only removes our own directory.
    unsafe { libc::atexit(remove_dir_at_exit) };

    let plugin = dir.join("libasound_module_pcm_herald_test.so");
    let source = dir.join("herald_test_pcm.c");
    std::fs::write(&source, include_str!("herald_test_pcm.c")).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-DPIC", "-O1", "-o"])
        .arg(&plugin)
        .arg(&source)
        .arg("-lasound")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler '{cc}' for the test ALSA plugin: {e}")
        });
    assert!(
        out.status.success(),
        "building the test ALSA plugin failed (needs a C compiler and libasound2-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fifos: Vec<PathBuf> = (0..FIFO_COUNT)
        .map(|i| dir.join(format!("fifo{i}")))
        .collect();
    for f in &fifos {
        let c = CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(
            r,
            0,
            "mkfifo {}: {}",
            f.display(),
            std::io::Error::last_os_error()
        );
    }
    let s32_capture = dir.join("s32.raw");

    let conf = dir.join("herald-test.conf");
    std::fs::write(&conf, conf_text(&plugin, &fifos, &s32_capture)).unwrap();
    let config_path = format!("/usr/share/alsa/alsa.conf:{}", conf.display());
    // Set before any test thread reaches alsa-lib: every ALSA test calls alsa_env() first, and
    // OnceLock makes the others wait until this returns.
    std::env::set_var("ALSA_CONFIG_PATH", &config_path);
    AlsaTestEnv {
        dir,
        config_path,
        fifos,
        s32_capture,
    }
}

fn hint(description: &str) -> String {
    format!("hint {{ show on description \"{description}\" }}")
}

fn conf_text(plugin: &Path, fifos: &[PathBuf], s32_capture: &Path) -> String {
    let mut s = String::new();
    s += "# Generated by tests/support/alsa_env.rs; see docs/TESTING-AUDIO.md.\n";
    s += &format!("pcm_type.herald_test {{ lib \"{}\" }}\n", plugin.display());
    s += &format!(
        "pcm.herald_null {{ type null {} }}\n",
        hint("herald test: accepts anything")
    );
    s += &format!(
        "pcm.herald_stereo {{ type multi slaves.a {{ pcm \"null\" channels 2 }} \
         bindings.0 {{ slave a channel 0 }} bindings.1 {{ slave a channel 1 }} {} }}\n",
        hint("herald test: stereo only")
    );
    s += &format!(
        "pcm.herald_44k {{ type herald_test rate 44100 channels_min 1 channels_max 2 {} }}\n",
        hint("herald test: 44.1 kHz only")
    );
    s += &format!(
        "pcm.herald_s32 {{ type herald_test format \"S32_LE\" {} }}\n",
        hint("herald test: S32_LE only")
    );
    s += &format!(
        "pcm.herald_s32_file {{ type file slave.pcm \"herald_s32\" file \"{}\" format \"raw\" }}\n",
        s32_capture.display()
    );
    s += &format!(
        "pcm.herald_no_s16 {{ type mulaw slave {{ pcm \"null\" format S16_LE }} {} }}\n",
        hint("herald test: mu-law only")
    );
    s += &format!(
        "pcm.herald_fixed_period {{ type herald_test channels_min 1 channels_max 2 period_bytes 4096 {} }}\n",
        hint("herald test: fixed 4096-byte periods")
    );
    s += &format!(
        "pcm.herald_reject_period {{ type herald_test reject_period_bytes 1920 {} }}\n",
        hint("herald test: hw_params refuses 1920-byte periods")
    );
    s += &format!(
        "pcm.herald_reject_small_periods {{ type herald_test reject_period_bytes_max 8192 {} }}\n",
        hint("herald test: hw_params refuses periods up to 8192 bytes")
    );
    s += &format!(
        "pcm.herald_float {{ type herald_test format \"FLOAT_LE\" {} }}\n",
        hint("herald test: FLOAT_LE only")
    );
    s += &format!(
        "pcm.herald_busy {{ type herald_test open_errno 16 {} }}\n",
        hint("herald test: always busy")
    );
    s += &format!(
        "pcm.herald_xrun {{ type herald_test xrun_after_frames 4800 {} }}\n",
        hint("herald test: underruns every 4800 frames")
    );
    for (i, f) in fifos.iter().enumerate() {
        s += &format!(
            "pcm.herald_fifo{i} {{ type file slave.pcm \"null\" file \"{}\" format \"raw\" {} }}\n",
            f.display(),
            hint("herald test: real-time FIFO")
        );
        s += &format!(
            "pcm.herald_fifo{i}_delay {{ type herald_test fifo \"{}\" channels_min 1 channels_max 2 {} }}\n",
            f.display(),
            hint("herald test: real-time FIFO that reports its delay")
        );
    }
    s
}
