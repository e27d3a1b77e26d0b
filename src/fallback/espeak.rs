//! The espeak-ng backend: one `espeak-ng --stdout --stdin` process per segment, text on its
//! stdin, a WAV stream (22050 Hz mono s16 for its own voices) on its stdout read as it is
//! synthesized. A process of its own keeps espeak-ng's GPL-3.0 code out of herald's binary,
//! a crash in it out of the daemon, and its global, non-reentrant state out of our threads;
//! dropping the stream kills it (skip, stop, interrupt). docs/FALLBACK.md has the reasons
//! and the figures.

use std::io::ErrorKind;
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{FallbackError, LocalFuture, LocalSpeech, LocalVoice, PcmStream, STALL_TIMEOUT};
use crate::codec::PcmFormat;

/// The program run, looked up on PATH.
pub const PROGRAM: &str = "espeak-ng";
/// The WAV header is read this far at most (espeak-ng's is 44 bytes).
const MAX_HEADER: usize = 4096;
/// Bytes read from its stdout at a time: ~190 ms of 22050 Hz mono.
const READ_CHUNK: usize = 8192;
/// What is kept of its stderr for an error message.
const MAX_STDERR: u64 = 2048;
/// Environment passed on to it; nothing else (no API key, no systemd sockets).
const PASSED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "ESPEAK_DATA_PATH"];

/// espeak-ng with one voice and rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspeakNg {
    voice: String,
    rate: u32,
}

impl EspeakNg {
    /// An engine speaking with `voice` (checked by [`super::check_voice`]) at `rate` words
    /// per minute (within [`super::RATES`]).
    pub fn new(voice: &str, rate: u32) -> Self {
        EspeakNg {
            voice: voice.to_string(),
            rate,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(PROGRAM);
        // -b 1: the input is UTF-8. No -m: markup in the text is read out, not obeyed.
        cmd.args(["--stdout", "--stdin", "-b", "1", "-v", &self.voice, "-s"])
            .arg(self.rate.to_string())
            .env_clear()
            .envs(
                PASSED_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn start(&self, text: &str) -> Result<LocalSpeech, FallbackError> {
        let mut child = self.command().spawn().map_err(|e| match e.kind() {
            ErrorKind::NotFound => FallbackError::NotInstalled {
                program: PROGRAM.into(),
            },
            _ => FallbackError::Spawn {
                program: PROGRAM.into(),
                source: e,
            },
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io_err("opening its pipes", ErrorKind::BrokenPipe.into()));
        };
        // The text goes in from a task of its own: a long one fills the pipe while espeak-ng
        // waits for its audio to be read. A write error shows as its exit status instead.
        // The newline is for espeak-ng before Debian's 1.51+dfsg-10+deb12u2, which drops the
        // last byte of stdin: a newline lost is nothing lost.
        let input = format!("{text}\n").into_bytes();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let stderr = tokio::spawn(read_stderr(stderr));
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let (format, offset) = loop {
            if let Some(found) = parse_header(&buf)? {
                break found;
            }
            if buf.len() >= MAX_HEADER {
                return Err(bad_audio(format!(
                    "no WAV header in its first {MAX_HEADER} bytes"
                )));
            }
            if read_some(&mut stdout, &mut buf).await? == 0 {
                return Err(exit_error(&mut child, stderr).await.unwrap_or_else(|| {
                    bad_audio(format!(
                        "its output ended after {} bytes, before any audio",
                        buf.len()
                    ))
                }));
            }
        };
        let first = Bytes::copy_from_slice(&buf[offset..]);
        Ok(LocalSpeech {
            format,
            body: body(
                first,
                Running {
                    child,
                    stdout,
                    stderr: Some(stderr),
                },
            ),
        })
    }
}

impl LocalVoice for EspeakNg {
    fn engine(&self) -> super::Engine {
        super::Engine::EspeakNg
    }

    fn open<'a>(&'a self, text: &'a str) -> LocalFuture<'a> {
        Box::pin(self.start(text))
    }
}

/// The process while its audio is read.
struct Running {
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
}

/// Its samples: what came with the header, then each read; after the last, its exit status.
fn body(first: Bytes, running: Running) -> PcmStream {
    let start = (Some(first).filter(|b| !b.is_empty()), Some(running));
    Box::pin(futures_util::stream::unfold(
        start,
        |(first, running)| async move {
            if let Some(b) = first {
                return Some((Ok(b), (None, running)));
            }
            let mut r = running?;
            let mut buf = Vec::with_capacity(READ_CHUNK);
            match read_some(&mut r.stdout, &mut buf).await {
                Ok(0) => {
                    let stderr = r.stderr.take()?;
                    exit_error(&mut r.child, stderr)
                        .await
                        .map(|e| (Err(e), (None, None)))
                }
                Ok(_) => Some((Ok(Bytes::from(buf)), (None, Some(r)))),
                Err(e) => Some((Err(e), (None, None))),
            }
        },
    ))
}

/// Appends one read to `buf`; 0 at the end of the stream. A process that sends nothing for
/// [`STALL_TIMEOUT`] is hung: the job must not wait for it forever (dropping it kills it).
async fn read_some(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Result<usize, FallbackError> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = tokio::time::timeout(STALL_TIMEOUT, r.read(&mut chunk))
        .await
        .map_err(|_| FallbackError::Stalled {
            program: PROGRAM.into(),
            after: STALL_TIMEOUT,
        })?
        .map_err(|e| io_err("reading its audio", e))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The format and where the samples start, once `buf` holds the whole header; `None` while
/// it is still short.
fn parse_header(buf: &[u8]) -> Result<Option<(PcmFormat, usize)>, FallbackError> {
    let mut cursor = std::io::Cursor::new(buf);
    // espeak-ng cannot seek back on a pipe: its header's lengths say "as long as it gets",
    // which hound accepts; the samples are read from the stream itself.
    let spec = match hound::WavReader::new(&mut cursor) {
        Ok(r) => r.spec(),
        // hound reports a short header as an I/O error (of kind Other): read on.
        Err(hound::Error::IoError(_)) => return Ok(None),
        Err(e) => return Err(bad_audio(format!("its WAV header: {e}"))),
    };
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(bad_audio(format!(
            "{}-bit {:?} samples (herald plays 16-bit integer PCM)",
            spec.bits_per_sample, spec.sample_format
        )));
    }
    if spec.channels == 0 || !(8_000..=192_000).contains(&spec.sample_rate) {
        return Err(bad_audio(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    let format = PcmFormat {
        rate: spec.sample_rate,
        channels: spec.channels,
    };
    Ok(Some((format, cursor.position() as usize)))
}

/// Why the process failed, if it did (waits for it to exit).
async fn exit_error(child: &mut Child, stderr: JoinHandle<String>) -> Option<FallbackError> {
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => return Some(io_err("waiting for it to exit", e)),
    };
    let stderr = stderr.await.unwrap_or_default();
    (!status.success()).then(|| FallbackError::Failed {
        program: PROGRAM.into(),
        status: status.to_string(),
        stderr,
    })
}

/// The start of its stderr, trimmed to one line of text.
async fn read_stderr(stderr: tokio::process::ChildStderr) -> String {
    let mut text = Vec::new();
    let _ = stderr.take(MAX_STDERR).read_to_end(&mut text).await;
    String::from_utf8_lossy(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn io_err(what: &'static str, source: std::io::Error) -> FallbackError {
    FallbackError::Io {
        program: PROGRAM.into(),
        what,
        source,
    }
}

fn bad_audio(detail: String) -> FallbackError {
    FallbackError::BadAudio {
        program: PROGRAM.into(),
        detail,
    }
}

/// Whether the program can be found on PATH (for warnings at start and `herald check`).
pub fn installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(PROGRAM)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// espeak-ng's header on a pipe: RIFF and data lengths of 0x7ffff000 ("unknown").
    fn streaming_header() -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&0x7fff_f024u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes()); // PCM
        h.extend_from_slice(&1u16.to_le_bytes()); // mono
        h.extend_from_slice(&22_050u32.to_le_bytes());
        h.extend_from_slice(&44_100u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&0x7fff_f000u32.to_le_bytes());
        h
    }

    #[test]
    fn a_streaming_header_gives_the_format_and_where_samples_start() {
        let mut h = streaming_header();
        for short in 0..h.len() {
            assert!(
                parse_header(&h[..short]).unwrap().is_none(),
                "{short} bytes"
            );
        }
        h.extend_from_slice(&[1, 0, 2, 0]);
        let (format, offset) = parse_header(&h).unwrap().unwrap();
        assert_eq!(
            format,
            PcmFormat {
                rate: 22_050,
                channels: 1
            }
        );
        assert_eq!(offset, 44);
    }

    #[test]
    fn output_that_is_not_16_bit_wav_is_refused_with_what_it_was() {
        let e = parse_header(b"<html><body>not audio</body></html>").unwrap_err();
        assert!(e.to_string().contains("WAV header"), "{e}");
        let mut h = streaming_header();
        h[34] = 8; // bits per sample
        h.extend_from_slice(&[0; 8]);
        let e = parse_header(&h).unwrap_err();
        assert!(e.to_string().contains("8-bit"), "{e}");
    }
}
