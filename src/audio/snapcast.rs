//! The Snapcast sink: raw PCM into a snapserver `tcp://HOST:PORT?mode=server` stream source,
//! paced to real time by a monotonic clock, so every room's snapclient plays it in sync.
//!
//! snapserver reads its tcp source at real time but does not push back at real time (the
//! kernel's socket buffers hold seconds), so this sink keeps time like a sound card: a write
//! returns once the audio it holds is at most `ahead` in front of the clock that started
//! with the first write. Draining waits until the last sample has been played in the rooms:
//! the end of the audio on that clock plus snapserver's end-to-end `buffer` (`latency`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use super::clock::WallClock;
use super::{DeviceFormat, Sink, SinkError, SinkOpener, SinkRequest};

/// How long opening waits for snapserver to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write blocked this long means snapserver stopped reading (it reads at real time, and
/// this sink is never more than `ahead` in front).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence sent after each utterance before waiting for it to play: snapserver only reads
/// whole `chunk_ms` chunks (default 20 ms) and its flac encoder holds a block (~24 ms), and
/// snapclient 0.26 plays nothing of a last request it cannot fill (its ALSA buffer, 80 ms by
/// default), so without a tail the end of the speech would wait for the next announcement
/// or be dropped. The drain sends silence while it waits for snapserver's buffer anyway;
/// this is the least it sends when that buffer is shorter.
pub const TAIL: Duration = Duration::from_millis(250);

/// Added to the wait for the rooms, so `finished` is never early: snapserver stamps a
/// stream's first chunk 20 ms (`chunk_ms`) before it read it, so the rooms play up to that
/// much ahead of this sink's clock; with this margin `finished` comes 20–50 ms after the
/// last sample was heard (docs/MULTIROOM.md).
const FINISH_MARGIN: Duration = Duration::from_millis(20);

/// Where and how a snapcast output streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapcastTarget {
    /// The output's name in the config (`[outputs.NAME]`), for messages.
    pub output: String,
    /// snapserver's tcp source, `HOST:PORT`.
    pub server: String,
    /// The stream's sample rate (snapserver's `sampleformat`).
    pub rate: u32,
    /// The stream's channel count.
    pub channels: u16,
    /// snapserver's end-to-end buffer: how long after it is sent a sample plays in the rooms.
    pub latency: Duration,
}

impl SnapcastTarget {
    /// How the sink names itself in errors and `status`.
    fn shown(&self) -> String {
        format!(
            "snapcast output '{}' (snapserver {})",
            self.output, self.server
        )
    }
}

/// Opens snapcast sinks for one configured output (the device name is the output's).
#[derive(Debug, Clone)]
pub struct SnapcastOpener {
    /// The output it opens.
    pub target: SnapcastTarget,
}

impl SinkOpener for SnapcastOpener {
    fn open(&self, _device: &str, req: &SinkRequest) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(SnapcastSink::connect(&self.target, req)?))
    }
}

/// A connection to a snapserver tcp source, writing 16-bit little-endian interleaved PCM.
pub struct SnapcastSink {
    stream: TcpStream,
    target: SnapcastTarget,
    shown: String,
    format: DeviceFormat,
    /// Frames the sink may be ahead of its clock (the "device buffer" on this side).
    ahead: u64,
    /// What has been sent against real time: started by the first write after a drain
    /// (or after running dry), like a DAC starting on its first period.
    clock: WallClock,
    /// One period as bytes; allocated once, so a write never allocates.
    bytes: Vec<u8>,
    /// The last call was a drain: the clock may run past what was sent without an underrun.
    drained: bool,
    xruns: u64,
    connected_at: Instant,
}

impl std::fmt::Debug for SnapcastSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapcastSink")
            .field("target", &self.target)
            .field("format", &self.format)
            .finish()
    }
}

impl SnapcastSink {
    /// Connects to `target.server`; the granted format is the stream's, with `req`'s period
    /// and buffer length (the buffer bounds how far ahead of real time the sink may send).
    pub fn connect(target: &SnapcastTarget, req: &SinkRequest) -> Result<SnapcastSink, SinkError> {
        let shown = target.shown();
        let fail = |detail: String| SinkError::Snapcast {
            device: shown.clone(),
            detail,
        };
        if target.rate == 0 || target.channels == 0 || req.period_ms == 0 {
            return Err(fail(
                "rate, channels and period must all be above zero".into(),
            ));
        }
        let stream = open_stream(&target.server).map_err(fail)?;
        let period_frames = (u64::from(target.rate) * u64::from(req.period_ms) / 1000).max(1);
        let ahead = period_frames * u64::from(req.buffer_periods.max(2));
        let latency_frames = (target.latency.as_secs_f64() * f64::from(target.rate)) as u64;
        let period = usize::try_from(period_frames).unwrap_or(usize::MAX);
        Ok(SnapcastSink {
            stream,
            shown: shown.clone(),
            target: target.clone(),
            format: DeviceFormat {
                rate: target.rate,
                channels: target.channels,
                period_frames: period,
                // What is sent but not yet heard: our lead plus snapserver's buffer. The
                // daemon's hung-device timer and the interrupt's reach both go by this.
                buffer_frames: usize::try_from(ahead + latency_frames).unwrap_or(usize::MAX),
            },
            ahead,
            clock: WallClock::default(),
            bytes: vec![0; period * usize::from(target.channels) * 2],
            drained: false,
            xruns: 0,
            connected_at: Instant::now(),
        })
    }

    fn error(&self, op: &str, e: &std::io::Error) -> SinkError {
        SinkError::Snapcast {
            device: self.shown.clone(),
            detail: format!(
                "{op} failed {:.1} s after connecting: {e} (the connection to snapserver was lost; the rooms heard the announcement cut off)",
                self.connected_at.elapsed().as_secs_f64()
            ),
        }
    }

    /// Waits until `frames` more may be sent without getting more than `ahead` in front
    /// of the clock; a clock that ran past everything sent restarts (an underrun).
    fn pace(&mut self, frames: u64) {
        let rate = self.format.rate;
        let now = Instant::now();
        if self.clock.start_if_dry(now, rate) && !self.drained {
            self.xruns += 1;
        }
        let limit = (self.clock.written() + frames).saturating_sub(self.ahead);
        if let Some(due) = self.clock.at(limit, rate) {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                thread::sleep(wait);
            }
        }
        self.clock.add(frames);
        self.drained = false;
    }

    /// Sends the first `frames` frames of the byte buffer, paced.
    fn send(&mut self, frames: u64) -> Result<(), SinkError> {
        self.pace(frames);
        let len =
            usize::try_from(frames).unwrap_or(usize::MAX) * usize::from(self.format.channels) * 2;
        let len = len.min(self.bytes.len());
        let r = self.stream.write_all(&self.bytes[..len]);
        r.map_err(|e| self.error("sending audio", &e))
    }
}

impl Sink for SnapcastSink {
    fn format(&self) -> DeviceFormat {
        self.format
    }

    fn name(&self) -> &str {
        &self.shown
    }

    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        let channels = usize::from(self.format.channels);
        if period.len() % channels != 0 || period.len() * 2 > self.bytes.len() {
            return Err(SinkError::Snapcast {
                device: self.shown.clone(),
                detail: format!(
                    "{} samples is not a whole number of {channels}-channel frames of at most one period",
                    period.len()
                ),
            });
        }
        for (out, s) in self.bytes.chunks_exact_mut(2).zip(period) {
            out.copy_from_slice(&s.to_le_bytes());
        }
        self.send((period.len() / channels) as u64)
    }

    /// Keeps the stream going with silence until the last audio sample has played in the
    /// rooms (its time on the clock plus snapserver's buffer), and at least [`TAIL`] of it.
    /// Going quiet instead would make snapserver's read come up empty and resync the
    /// stream's timing, and the next utterance of the same job (after a chime, say) would
    /// reach the rooms with a dropout.
    fn drain(&mut self) -> Result<(), SinkError> {
        let rate = self.format.rate;
        let Some(audio_end) = self.clock.at(self.clock.written(), rate) else {
            return Ok(());
        };
        let end = audio_end + self.target.latency + FINISH_MARGIN;
        let silence_end = end.max(audio_end + TAIL);
        self.bytes.fill(0);
        let period = self.format.period_frames as u64;
        while self
            .clock
            .at(self.clock.written(), rate)
            .is_some_and(|t| t < silence_end)
        {
            self.send(period)?;
        }
        let wait = end.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        // The stream stays continuous into a next utterance written at once; one that
        // comes later restarts the clock, which is not an underrun.
        self.drained = true;
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.xruns
    }

    /// What is sent but not yet due on the clock: when this runs short, snapserver's next
    /// read comes up empty.
    fn queued_frames(&mut self) -> Option<u64> {
        Some(self.clock.ahead(Instant::now(), self.format.rate))
    }
}

/// Resolves `server` and connects, with a reason that says what to check.
fn open_stream(server: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{server}': {e}"))?
        .collect();
    let mut last = format!("'{server}' resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                // Small writes go out at once: the clock, not Nagle, decides when.
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) => {
                last = format!(
                    "cannot connect to {addr}: {e} (is snapserver running with a `tcp://{server}?name=…&mode=server` stream source?)"
                )
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn target(server: String, latency_ms: u64) -> SnapcastTarget {
        SnapcastTarget {
            output: "house".into(),
            server,
            rate: 48_000,
            channels: 2,
            latency: Duration::from_millis(latency_ms),
        }
    }

    /// What the stand-in source read: (when, bytes so far) per read, and all the bytes.
    type Received = (Vec<(Instant, usize)>, Vec<u8>);

    /// A stand-in tcp source on loopback: records (when, bytes so far) for every read.
    fn listener() -> (String, thread::JoinHandle<Received>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (mut log, mut all, mut buf) = (Vec::new(), Vec::new(), [0u8; 4096]);
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                log.push((Instant::now(), all.len()));
            }
            (log, all)
        });
        (addr, h)
    }

    #[test]
    fn sends_exactly_what_it_is_given_never_ahead_of_real_time_by_more_than_its_buffer() {
        let (addr, reader) = listener();
        let req = SinkRequest::default();
        let mut sink = SnapcastSink::connect(&target(addr, 0), &req).unwrap();
        let f = sink.format();
        assert_eq!((f.rate, f.channels, f.period_frames), (48_000, 2, 960));
        let period: Vec<i16> = (0..1920).map(|i| i as i16 - 960).collect();
        let t0 = Instant::now();
        for _ in 0..25 {
            sink.write(&period).unwrap();
        }
        drop(sink);
        let (log, all) = reader.join().unwrap();
        let expected: Vec<u8> = period.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(all.len(), expected.len() * 25);
        assert!(all.chunks(expected.len()).all(|c| c == expected));
        // Lateness can only make this easier: a sink that did not pace would fail it.
        let ahead = 4 * 960 + 960;
        for (at, bytes) in log {
            let frames = bytes / 4;
            let due = (at.duration_since(t0).as_secs_f64() * 48_000.0) as usize + ahead;
            assert!(
                frames <= due,
                "{frames} frames sent {:?} in",
                at.duration_since(t0)
            );
        }
    }

    #[test]
    fn drain_returns_only_once_the_rooms_have_played_the_audio() {
        let (addr, reader) = listener();
        let mut sink = SnapcastSink::connect(&target(addr, 300), &SinkRequest::default()).unwrap();
        assert_eq!(sink.format().buffer_frames, 4 * 960 + 300 * 48);
        let t0 = Instant::now();
        for _ in 0..10 {
            sink.write(&[0; 1920]).unwrap();
        }
        sink.drain().unwrap();
        // 200 ms of audio, then snapserver's 300 ms buffer.
        assert!(
            t0.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        drop(sink);
        let (_, all) = reader.join().unwrap();
        // The audio, then silence until the rooms have played it (300 + 20 ms here).
        let frames = all.len() / 4;
        assert!(frames >= 10 * 960 + 320 * 48, "{frames} frames");
        assert!(all[10 * 960 * 4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_the_output_and_server() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = format!("127.0.0.1:{port}");
        let e = SnapcastSink::connect(&target(server.clone(), 0), &SinkRequest::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snapcast output 'house'") && e.contains(&server) && e.contains("refused"),
            "{e}"
        );
    }
}
