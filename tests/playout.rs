//! Playout buffer, start policy and audio thread, driven through the public API against a
//! sink clocked by wall time. Assertions are on what the "device" received, never on timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::f64::consts::PI;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use herald::audio::playout::{
    Playout, PlayoutConfig, PlayoutError, PlayoutEvent, RealtimeStatus, UtteranceReport,
};
use herald::audio::{DeviceFormat, Sink, SinkError};
use herald::netmodel::{Silences, StartPlan};
use tokio::sync::mpsc::UnboundedReceiver;

const RATE: u32 = 8000;
const PERIOD: usize = 80; // 10 ms
const BUFFER: usize = 4 * PERIOD;
/// Largest sample-to-sample step allowed anywhere: the test tone's own steepest step is
/// ~471, a fade adds at most ~9000/64 ≈ 141; a cut without a fade would step by ≥ 3000.
const MAX_STEP: i32 = 800;
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Counts heap allocations per thread, so the sink can tell whether the audio thread's loop
/// allocated between two of its calls (the loop must never allocate).
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocs() -> u64 {
    ALLOCS.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: delegates every operation to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

/// What the stand-in device received.
#[derive(Debug, Default)]
struct Recording {
    samples: Vec<i16>,
    write_lens: Vec<usize>,
    /// Frames queued in the device when each write was issued.
    queued_at_write: Vec<u64>,
    drains: usize,
    /// `samples.len()` when each drain completed.
    drained_at: Vec<usize>,
    xruns: u64,
    /// Allocations the audio thread made between sink calls (in its loop): must stay 0.
    loop_allocs: u64,
}

/// Stands in for a sound card, which this machine does not have: it plays `RATE` frames per
/// wall-clock second from a `BUFFER`-frame device buffer. `write` blocks while the buffer is
/// full, as ALSA's blocking write does, so the audio thread is clocked as by real hardware;
/// `drain` blocks until everything written has "played"; `queued_frames` reports what is
/// still queued, as ALSA's `snd_pcm_delay` does. It records every sample and write.
struct ClockedSink {
    format: DeviceFormat,
    rec: Arc<Mutex<Recording>>,
    /// When the device started consuming, and frames written since then.
    running: Option<(Instant, u64)>,
    writes: usize,
    /// Fail (as an unplugged USB DAC does) on this write.
    fail_on_write: Option<usize>,
    /// The audio thread's allocation count when the previous sink call returned.
    allocs_after_last_call: Option<u64>,
    /// Report the queue as ALSA's delay does (false: always 0, as the `null` slave under
    /// alsa-lib's file plugin and some USB/Bluetooth bridges report).
    reports_delay: bool,
}

impl ClockedSink {
    fn new(channels: u16) -> (Self, Arc<Mutex<Recording>>) {
        Self::with_buffer(channels, BUFFER)
    }

    /// A device with a `buffer`-frame buffer.
    fn with_buffer(channels: u16, buffer: usize) -> (Self, Arc<Mutex<Recording>>) {
        let rec = Arc::new(Mutex::new(Recording::default()));
        let sink = ClockedSink {
            format: DeviceFormat {
                rate: RATE,
                channels,
                period_frames: PERIOD,
                buffer_frames: buffer,
            },
            rec: rec.clone(),
            running: None,
            writes: 0,
            fail_on_write: None,
            allocs_after_last_call: None,
            reports_delay: true,
        };
        (sink, rec)
    }

    /// Charges allocations since the previous sink call to the audio thread's loop.
    fn enter(&mut self) {
        if let Some(before) = self.allocs_after_last_call {
            let n = allocs() - before;
            self.rec.lock().unwrap().loop_allocs += n;
        }
    }

    fn leave(&mut self) {
        self.allocs_after_last_call = Some(allocs());
    }

    fn played(start: Instant, now: Instant) -> u64 {
        (now.duration_since(start).as_secs_f64() * f64::from(RATE)) as u64
    }
}

impl Sink for ClockedSink {
    fn format(&self) -> DeviceFormat {
        self.format
    }

    fn name(&self) -> &str {
        "clocked-test-sink"
    }

    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        self.enter();
        self.writes += 1;
        if self.fail_on_write == Some(self.writes) {
            return Err(SinkError::Gone {
                device: "clocked-test-sink".into(),
                detail: "unplugged".into(),
            });
        }
        let now = Instant::now();
        if let Some((start, written)) = self.running {
            if Self::played(start, now) >= written {
                // The buffer ran empty: a real device would have underrun here.
                self.rec.lock().unwrap().xruns += 1;
                self.running = None;
            }
        }
        let (start, written) = *self.running.get_or_insert((now, 0));
        let frames = (period.len() / usize::from(self.format.channels)) as u64;
        let queued = written.saturating_sub(Self::played(start, now));
        // Block until this period fits into the device buffer.
        loop {
            let played = Self::played(start, Instant::now());
            let buffer = self.format.buffer_frames as u64;
            let free = buffer - written.saturating_sub(played).min(buffer);
            if free >= frames {
                break;
            }
            thread::sleep(Duration::from_secs_f64(
                (frames - free) as f64 / f64::from(RATE),
            ));
        }
        self.running = Some((start, written + frames));
        let mut rec = self.rec.lock().unwrap();
        rec.samples.extend_from_slice(period);
        rec.write_lens.push(period.len());
        rec.queued_at_write.push(queued);
        drop(rec);
        self.leave();
        Ok(())
    }

    fn drain(&mut self) -> Result<(), SinkError> {
        self.enter();
        if let Some((start, written)) = self.running.take() {
            let played = Self::played(start, Instant::now());
            if played < written {
                thread::sleep(Duration::from_secs_f64(
                    (written - played) as f64 / f64::from(RATE) + 0.001,
                ));
            }
        }
        let mut rec = self.rec.lock().unwrap();
        rec.drains += 1;
        let n = rec.samples.len();
        rec.drained_at.push(n);
        drop(rec);
        self.leave();
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.rec.lock().map(|r| r.xruns).unwrap_or(0)
    }

    fn queued_frames(&mut self) -> Option<u64> {
        if !self.reports_delay {
            return Some(0);
        }
        let (start, written) = self.running?;
        Some(written.saturating_sub(Self::played(start, Instant::now())))
    }
}

fn config() -> PlayoutConfig {
    PlayoutConfig {
        min_prebuffer_ms: 200,
        jitter_reserve_ms: 100,
        max_buffer_ms: 5000,
        stall_fade_ms: 8,
        interrupt_fade_ms: 15,
        realtime_priority: None,
        // These tests check that the input comes out sample for sample; the slowed
        // playback has its own tests below.
        max_slowdown: 1.0,
    }
}

/// A 200 Hz tone riding on a DC offset: never zero, so zeros in the output are inserted
/// silence or the end of a fade.
fn tone(frames: usize) -> Vec<i16> {
    (0..frames)
        .map(|n| (6000.0 + 3000.0 * (2.0 * PI * 200.0 * n as f64 / f64::from(RATE)).sin()) as i16)
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn frames_of(ms: usize) -> usize {
    ms * RATE as usize / 1000
}

/// Pushes `audio` in `chunk`-frame pieces, sleeping `every` between them.
async fn feed(p: &mut Playout, audio: &[i16], chunk: usize, every: Duration) {
    for piece in audio.chunks(chunk) {
        p.push(piece).await.unwrap();
        tokio::time::sleep(every).await;
    }
}

/// Also checks the loop's no-allocation rule: every test that plays audio calls this.
fn assert_whole_periods(rec: &Recording, channels: usize) {
    assert_eq!(rec.loop_allocs, 0, "the audio thread allocated in its loop");
    assert!(!rec.write_lens.is_empty());
    assert!(
        rec.write_lens.iter().all(|&n| n == PERIOD * channels),
        "short or long write: {:?}",
        rec.write_lens
            .iter()
            .filter(|&&n| n != PERIOD * channels)
            .collect::<Vec<_>>()
    );
}

fn max_step(s: &[i16]) -> i32 {
    s.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// Asserts `out` is exactly `input` followed by nothing but silence (the last period's pad).
fn assert_played_exactly(out: &[i16], input: &[i16]) {
    assert!(
        out.len() >= input.len(),
        "only {} of {} samples written",
        out.len(),
        input.len()
    );
    let first_diff = out.iter().zip(input).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "output differs from the input (something inserted, lost or reordered)"
    );
    assert!(
        out[input.len()..].iter().all(|&s| s == 0),
        "audio after the end"
    );
    assert!(
        out.len() - input.len() < PERIOD,
        "more than one period of padding"
    );
}

async fn guarded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .expect("hang guard: playout did not complete")
}

#[tokio::test]
async fn fast_source_starts_near_the_floor_and_plays_everything_in_order() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut cfg = config();
        cfg.realtime_priority = Some(10);
        let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
        // Real-time priority is asked for; granted or not, playout must work.
        assert_ne!(*p.realtime(), RealtimeStatus::NotRequested);
        let input = tone(frames_of(1500));
        let mut events = p.subscribe();
        p.begin(ms(1500));
        // 40 ms of audio every 12 ms: about 3.3× real time.
        feed(&mut p, &input, frames_of(40), ms(12)).await;
        p.end();
        let report = p.finished().await.unwrap();

        let rec = rec.lock().unwrap();
        // "finished" only after the device drained everything written.
        assert_eq!(rec.drains, 1);
        assert_eq!(rec.drained_at, vec![rec.samples.len()]);
        assert_played_exactly(&rec.samples, &input);
        assert_whole_periods(&rec, 1);
        assert_eq!(report.frames_played, input.len() as u64);
        assert_eq!(
            (report.stalls, report.stall_ms, report.interrupted),
            (0, 0, false)
        );
        assert!(report.started_at.is_some());
        // Started at about the floor (200 ms), far below the 1.5 s utterance.
        assert!(
            (200..=400).contains(&report.prebuffer_ms),
            "prebuffer {} ms",
            report.prebuffer_ms
        );
        let started: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| matches!(e, PlayoutEvent::Started { .. }))
            .collect();
        assert_eq!(
            started,
            vec![PlayoutEvent::Started {
                at: report.started_at.unwrap()
            }]
        );
        p.shutdown().unwrap();
    })
    .await
}

#[tokio::test]
async fn slow_source_waits_for_its_deficit_and_never_stalls() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut cfg = config();
        cfg.jitter_reserve_ms = 300;
        let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
        let input = tone(frames_of(2000));
        p.begin(ms(2000));
        // 40 ms of audio every 80 ms: half real time. Playing 2 s needs ≥ 1 s buffered.
        feed(&mut p, &input, frames_of(40), ms(80)).await;
        p.end();
        let report = p.finished().await.unwrap();
        let rec = rec.lock().unwrap();
        assert!(
            report.prebuffer_ms >= 1000,
            "started with only {} ms",
            report.prebuffer_ms
        );
        assert_eq!(report.stalls, 0);
        assert_played_exactly(&rec.samples, &input);
        assert_whole_periods(&rec, 1);
    })
    .await
}

#[tokio::test]
async fn stream_pause_gives_one_faded_stall_with_silence_between() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let input = tone(frames_of(1200));
        let half = frames_of(600);
        let mut rx = p.subscribe();
        p.begin(ms(1200));
        feed(&mut p, &input[..half], frames_of(40), ms(12)).await;
        // The network stalls for a second: the 0.6 s already here runs out first.
        tokio::time::sleep(ms(1000)).await;
        feed(&mut p, &input[half..], frames_of(40), ms(12)).await;
        p.end();
        let report = p.finished().await.unwrap();
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();

        let rec = rec.lock().unwrap();
        let out = &rec.samples;
        assert_whole_periods(&rec, 1);
        // The fade-out ends in the first zero; everything before its last 10 ms is untouched.
        let z = out.iter().position(|&s| s == 0).unwrap();
        let k = z + 1; // input frames played before the gap
        let fade_max = frames_of(10);
        assert_eq!(
            &out[..k - fade_max],
            &input[..k - fade_max],
            "audio before the fade changed"
        );
        for i in k - fade_max..k {
            assert!(
                out[i].abs() <= input[i].abs(),
                "fade-out louder than the input at {i}"
            );
        }
        // Silence, then the rest of the input, faded in over ≤ 10 ms, then only padding.
        let resume = z + out[z..].iter().position(|&s| s != 0).unwrap();
        assert!(resume - k >= PERIOD, "gap shorter than a period");
        let rest = &input[k..];
        for (j, (&o, &i)) in out[resume..].iter().zip(rest).enumerate() {
            if j < fade_max {
                assert!(o.abs() <= i.abs(), "fade-in louder than the input at {j}");
            } else {
                assert_eq!(o, i, "audio after the fade-in changed at {j}");
            }
        }
        assert!(
            out.len() - resume >= rest.len(),
            "audio lost after the stall"
        );
        assert!(out[resume + rest.len()..].iter().all(|&s| s == 0));
        assert!(
            max_step(out) <= MAX_STEP,
            "click: step of {}",
            max_step(out)
        );

        assert_eq!(report.stalls, 1);
        assert_eq!(
            report.stall_ms,
            ((resume - k) * 1000 / RATE as usize) as u64
        );
        assert_eq!(report.frames_played, input.len() as u64);
        let stall_events: Vec<_> = events
            .iter()
            .filter(|e| !matches!(e, PlayoutEvent::Started { .. }))
            .collect();
        assert_eq!(stall_events.len(), 2, "{events:?}");
        assert!(matches!(stall_events[0], PlayoutEvent::StallBegan { .. }));
        assert_eq!(
            *stall_events[1],
            PlayoutEvent::StallEnded {
                ms: report.stall_ms as u32
            }
        );
    })
    .await
}

/// The ring runs short while the device still holds most of its 400 ms buffer; the next
/// burst comes long before the device would run out, so nothing may be inserted.
#[tokio::test]
async fn ring_running_short_while_the_device_still_plays_is_not_a_stall() {
    ring_short_while_the_device_plays(true).await
}

/// The same with a device that reports no delay at all: the wall clock still shows what it
/// cannot have played yet, so nothing may be inserted either.
#[tokio::test]
async fn a_device_that_reports_no_delay_is_not_taken_for_empty() {
    ring_short_while_the_device_plays(false).await
}

async fn ring_short_while_the_device_plays(reports_delay: bool) {
    guarded(async {
        let (mut sink, rec) = ClockedSink::with_buffer(1, 40 * PERIOD);
        sink.reports_delay = reports_delay;
        let cfg = PlayoutConfig {
            min_prebuffer_ms: 50,
            jitter_reserve_ms: 0,
            ..config()
        };
        let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
        let input = tone(frames_of(1000));
        let half = frames_of(500);
        p.begin(ms(1000));
        // One burst: playback starts, the device takes 400 ms of it at once and the ring
        // is down to its last period ~75 ms later.
        p.push(&input[..half]).await.unwrap();
        tokio::time::sleep(ms(250)).await;
        // About 225 ms are still queued in the device when the rest arrives.
        p.push(&input[half..]).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();
        let rec = rec.lock().unwrap();
        assert_whole_periods(&rec, 1);
        assert_eq!(report.stalls, 0, "silence was inserted: {report:?}");
        assert_eq!(rec.xruns, 0, "the device ran empty");
        assert_played_exactly(&rec.samples, &input);
    })
    .await
}

/// Waits for the playout's `Started` event (the caller subscribed before `begin`).
async fn wait_started(p: &mut Playout, events: &mut UnboundedReceiver<PlayoutEvent>) {
    loop {
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, PlayoutEvent::Started { .. }) {
                return;
            }
        }
        p.wait_event().await.unwrap();
    }
}

#[tokio::test]
async fn interrupt_fades_out_within_20_ms_and_drops_the_rest() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let input = tone(frames_of(3000));
        let mut events = p.subscribe();
        p.begin(ms(3000));
        feed(&mut p, &input, frames_of(40), ms(12)).await;
        wait_started(&mut p, &mut events).await;
        tokio::time::sleep(ms(100)).await;
        let report = p.interrupt().await.unwrap();

        {
            let rec = rec.lock().unwrap();
            let out = &rec.samples;
            assert!(report.interrupted);
            assert!(report.frames_played < input.len() as u64);
            assert_eq!(rec.drains, 1, "interrupt waits until the fade has played");
            assert_whole_periods(&rec, 1);
            let z = out.iter().position(|&s| s == 0).unwrap();
            let fade_max = frames_of(20);
            assert_eq!(&out[..z + 1 - fade_max], &input[..z + 1 - fade_max]);
            assert!(
                out[z..].iter().all(|&s| s == 0),
                "audio after the interrupt fade"
            );
            assert_eq!(report.frames_played, (z + 1) as u64);
            assert!(
                max_step(out) <= MAX_STEP,
                "click: step of {}",
                max_step(out)
            );
        }
        // The utterance is over: more audio for it is refused, a new one plays.
        assert!(matches!(
            p.push(&input[..8]).await,
            Err(PlayoutError::NoUtterance { .. })
        ));
        p.begin(ms(200));
        p.push(&input[..frames_of(200)]).await.unwrap();
        p.end();
        let second = p.finished().await.unwrap();
        assert_eq!(second.frames_played, frames_of(200) as u64);
        assert!(!second.interrupted);
    })
    .await
}

#[tokio::test]
async fn sink_error_fails_the_utterance_instead_of_hanging() {
    guarded(async {
        let (mut sink, _rec) = ClockedSink::new(1);
        sink.fail_on_write = Some(10);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let input = tone(frames_of(1000));
        p.begin(ms(1000));
        let pushed = p.push(&input).await;
        p.end();
        let err = match pushed {
            Err(e) => e,
            Ok(()) => p.finished().await.unwrap_err(),
        };
        match &err {
            PlayoutError::Device(SinkError::Gone { device, .. }) => {
                assert_eq!(device, "clocked-test-sink")
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("unplugged"));
        // Later calls keep failing clearly rather than hanging.
        p.begin(ms(100));
        assert!(matches!(
            p.push(&input[..80]).await,
            Err(PlayoutError::Stopped)
        ));
        p.shutdown().unwrap();
    })
    .await
}

#[tokio::test]
async fn lead_in_feeds_silence_with_a_shallow_device_queue() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(2);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        assert_eq!(p.format().channels, 2);
        p.lead_in();
        tokio::time::sleep(ms(150)).await;
        let mono = tone(frames_of(300));
        let mut stereo = Vec::new();
        herald::audio::channels::map_channels(&mono, 1, 2, &mut stereo);
        p.begin(ms(300));
        p.push(&stereo).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();

        let rec = rec.lock().unwrap();
        assert_whole_periods(&rec, 2);
        let first_audio = rec.samples.iter().position(|&s| s != 0).unwrap();
        assert!(first_audio >= 2 * PERIOD, "no lead-in silence was written");
        assert_eq!(
            first_audio % (2 * PERIOD),
            0,
            "audio must start on a period boundary"
        );
        // Silence queued ahead of the first real sample: about one period, never the whole buffer.
        let write_index = first_audio / (2 * PERIOD);
        let queued = rec.queued_at_write[write_index];
        assert!(
            queued <= 2 * PERIOD as u64,
            "{queued} frames of silence queued before the audio"
        );
        assert_played_exactly(&rec.samples[first_audio..], &stereo);
        assert_eq!(report.frames_played, mono.len() as u64);
    })
    .await
}

#[tokio::test]
async fn utterances_follow_each_other_on_one_thread() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let a = tone(frames_of(250));
        let b: Vec<i16> = tone(frames_of(330)).iter().map(|s| -s).collect();
        let mut reports: Vec<UtteranceReport> = Vec::new();
        for input in [&a, &b] {
            p.begin(ms(300));
            feed(&mut p, input, frames_of(40), ms(12)).await;
            p.end();
            reports.push(p.finished().await.unwrap());
        }
        let rec = rec.lock().unwrap();
        assert_eq!(rec.drains, 2);
        let split = rec.drained_at[0];
        assert_played_exactly(&rec.samples[..split], &a);
        assert_played_exactly(&rec.samples[split..], &b);
        assert_eq!(reports[1].frames_played, b.len() as u64);
    })
    .await
}

#[tokio::test]
async fn misuse_is_an_error_not_a_hang() {
    let (sink, _rec) = ClockedSink::new(2);
    let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
    assert!(matches!(
        p.push(&[1, 2]).await,
        Err(PlayoutError::NoUtterance { op: "push" })
    ));
    assert!(matches!(
        p.finished().await,
        Err(PlayoutError::NoUtterance { .. })
    ));
    p.begin(ms(100));
    assert!(matches!(
        p.push(&[1, 2, 3]).await,
        Err(PlayoutError::Misaligned {
            len: 3,
            channels: 2
        })
    ));
    assert!(matches!(p.finished().await, Err(PlayoutError::NotEnded)));
    p.end();
    // Nothing pushed: finishes at once without playing.
    let r = p.finished().await.unwrap();
    assert_eq!((r.frames_played, r.started_at), (0, None));

    let (sink, _rec) = ClockedSink::new(1);
    let bad = PlayoutConfig {
        stall_fade_ms: 11,
        ..config()
    };
    let err = Playout::spawn(Box::new(sink), bad).err().unwrap();
    assert!(err.to_string().contains("stall_fade_ms = 11"), "{err}");
}

#[tokio::test]
async fn push_beyond_the_ring_waits_for_space_and_loses_nothing() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let cfg = PlayoutConfig {
            max_buffer_ms: 500,
            ..config()
        };
        let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
        let input = tone(frames_of(2000));
        p.begin(ms(2000));
        // Four times what the ring holds, in one call: it must wait for the device.
        p.push(&input).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();
        let rec = rec.lock().unwrap();
        assert_played_exactly(&rec.samples, &input);
        assert_whole_periods(&rec, 1);
        assert_eq!(report.stalls, 0);
    })
    .await
}

#[tokio::test]
async fn interrupt_before_playback_starts_plays_nothing() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        p.begin(ms(5000));
        // One burst of a long utterance is not enough to start.
        p.push(&tone(frames_of(100))).await.unwrap();
        let report = p.interrupt().await.unwrap();
        assert!(report.interrupted);
        assert_eq!((report.frames_played, report.started_at), (0, None));
        assert!(rec.lock().unwrap().samples.is_empty());
    })
    .await
}

#[tokio::test]
async fn begin_during_playback_fades_the_old_utterance_out_and_plays_the_new_one() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let a = tone(frames_of(3000));
        let b: Vec<i16> = tone(frames_of(400)).iter().map(|s| -s).collect();
        let mut events = p.subscribe();
        p.begin(ms(3000));
        feed(&mut p, &a[..frames_of(1000)], frames_of(40), ms(12)).await;
        wait_started(&mut p, &mut events).await;
        p.begin(ms(400));
        p.push(&b).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();
        assert_eq!(report.frames_played, b.len() as u64);
        assert!(!report.interrupted);

        let rec = rec.lock().unwrap();
        let out = &rec.samples;
        // A's prefix, a fade to zero (≤ 20 ms), then B exactly: no click at the switch.
        let z = out.iter().position(|&s| s == 0).unwrap();
        assert_eq!(&out[..z + 1 - frames_of(20)], &a[..z + 1 - frames_of(20)]);
        let b_start = z + out[z..].iter().position(|&s| s != 0).unwrap();
        assert_played_exactly(&out[b_start..], &b);
        // (B itself starts at full level: only the switch-over is checked.)
        let step = max_step(&out[..b_start]);
        assert!(step <= MAX_STEP, "click: step of {step}");
    })
    .await
}

/// Adaptive playout (issue 9): a stall that gaps at normal speed is ridden out by playing
/// slower, pitch kept, and the audio is all there, in order, without clicks.
#[tokio::test]
async fn slowed_playback_rides_out_a_stall_that_gaps_at_normal_speed() {
    guarded(async {
        let input = tone(frames_of(2000));
        let first = frames_of(1000);
        let run = |max_slowdown: f32| {
            let input = input.clone();
            async move {
                let (sink, rec) = ClockedSink::new(1);
                let cfg = PlayoutConfig {
                    min_prebuffer_ms: 100,
                    jitter_reserve_ms: 0,
                    max_slowdown,
                    ..config()
                };
                let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
                p.begin(ms(2000));
                // One 1 s burst starts playback at once; the next comes 1.06 s later: at
                // normal speed the device runs dry ~60 ms before it.
                p.push(&input[..first]).await.unwrap();
                tokio::time::sleep(ms(1060)).await;
                p.push(&input[first..]).await.unwrap();
                p.end();
                let report = p.finished().await.unwrap();
                let samples = rec.lock().unwrap().samples.clone();
                (report, samples)
            }
        };
        let (normal, _) = run(1.0).await;
        assert_eq!(
            normal.stalls, 1,
            "the rig must gap at normal speed: {normal:?}"
        );
        let (slowed, out) = run(0.9).await;
        assert_eq!(slowed.stalls, 0, "{slowed:?}");
        assert!(slowed.lowest_tempo >= 0.9 - 1e-6, "{slowed:?}");
        assert!(slowed.stretched_ms >= 800, "{slowed:?}");
        // Slowing by ≥ 6 % over ~1 s added ≥ 60 ms, and the output is the input plus that.
        assert!(slowed.added_ms >= 60, "{slowed:?}");
        let heard = out.iter().rposition(|&s| s != 0).unwrap_or(0) + 1;
        let expect = input.len() + frames_of(slowed.added_ms as usize);
        assert!(
            heard.abs_diff(expect) <= frames_of(15),
            "heard {heard} frames, expected {expect}"
        );
        // The tone never crosses zero: a zero inside is a gap, a big step is a click.
        assert!(
            out[..heard].iter().all(|&s| s != 0),
            "silence inside the audio"
        );
        assert!(
            max_step(&out[..heard]) <= MAX_STEP,
            "click: {}",
            max_step(&out)
        );
    })
    .await
}

/// A playout into a clocked mono sink (the DAC stand-in) that slows to 0.9× and starts its
/// next utterance by `plan`, with `jitter_reserve_ms` as the fixed rule's reserve.
fn learned_playout(
    plan: Option<StartPlan>,
    jitter_reserve_ms: u32,
) -> (
    Playout,
    UnboundedReceiver<PlayoutEvent>,
    Arc<Mutex<Recording>>,
) {
    let (sink, rec) = ClockedSink::new(1);
    let cfg = PlayoutConfig {
        min_prebuffer_ms: 100,
        jitter_reserve_ms,
        max_slowdown: 0.9,
        ..config()
    };
    let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
    let rx = p.subscribe();
    p.plan_next(plan);
    (p, rx, rec)
}

/// A learned plan replaces the fixed reserve: the start comes at the learned moment after
/// the first audio — earlier than the fixed rule on a network known to be good, later on
/// one known to stall even when the first burst is large.
#[tokio::test]
async fn a_learned_plan_starts_at_its_moment_after_the_first_audio() {
    guarded(async {
        let start_after = |plan: Option<StartPlan>, burst_ms: usize| async move {
            let (mut p, mut rx, _rec) = learned_playout(plan, 1000);
            p.begin(ms(6000));
            let input = tone(frames_of(6000));
            let pushed = Instant::now();
            p.push(&input[..frames_of(burst_ms)]).await.unwrap();
            let started = tokio::time::timeout(ms(1500), async {
                loop {
                    if let Ok(PlayoutEvent::Started { at }) = rx.try_recv() {
                        return at;
                    }
                    p.wait_event().await.unwrap();
                }
            })
            .await
            .ok()
            .map(|at| at.saturating_duration_since(pushed));
            p.push(&input[frames_of(burst_ms)..]).await.unwrap();
            p.end();
            let report = p.finished().await.unwrap();
            (started, report)
        };
        let good = StartPlan {
            jitter_ms: 200,
            rate: 2.0,
            silences: Silences::from_ms(&[600.0; 30]),
            quantile: 0.95,
        };
        // 600 ms in: the fixed rule wants 0.6 s + 1 s; the plan 200 ms less what slowing
        // gains before the next burst (10 % of a 0.6 s wait).
        let (cold, _) = start_after(None, 600).await;
        assert_eq!(cold, None, "the fixed rule started with 0.6 s: {cold:?}");
        let (warm, report) = start_after(Some(good), 600).await;
        let warm = warm.expect("never started");
        assert!(
            (ms(100)..ms(260)).contains(&warm),
            "started {warm:?} after the first audio"
        );
        assert!(report.warm && report.stalls == 0, "{report:?}");
        // 3 s in at once: the fixed rule starts at once. So does a plan that knows 800 ms
        // stalls and silences up to 1.3 s: 3 s played slowed outlast any of them, and any
        // 1.5 times as long...
        let (cold, _) = start_after(None, 3000).await;
        assert!(cold.unwrap() < ms(60), "{cold:?}");
        let stalls = StartPlan {
            jitter_ms: 800,
            rate: 2.0,
            silences: Silences::from_ms(&[[500.0; 27].as_slice(), &[1300.0; 3]].concat()),
            quantile: 0.95,
        };
        let (warm, _) = start_after(Some(stalls), 3000).await;
        assert!(warm.expect("never started") < ms(60), "{warm:?}");
        // ...but where one silence in ten lasts 4 s, 3 s (3.33 s at 0.9×) do not: it waits
        // for its moment, inside the usual 1 s wait.
        let long = StartPlan {
            jitter_ms: 800,
            rate: 2.0,
            silences: Silences::from_ms(&[[1000.0; 27].as_slice(), &[4000.0; 3]].concat()),
            quantile: 0.95,
        };
        let (warm, _) = start_after(Some(long), 3000).await;
        let warm = warm.expect("never started");
        assert!(
            (ms(600)..ms(820)).contains(&warm),
            "started {warm:?} after the first audio"
        );
    })
    .await
}

/// A stall under way at a learned start's moment is one the plan did not count on: the
/// start waits for the stream rather than play its one second into a stall that outlasts
/// it (a gap the listener hears, then a second start).
#[tokio::test]
async fn a_learned_start_waits_out_a_stall_its_buffer_cannot_bridge() {
    guarded(async {
        // Learned: start 2 s after the first audio; 500 ms between pages, stalls up to 4 s.
        let plan = StartPlan {
            jitter_ms: 2000,
            rate: 2.0,
            silences: Silences::from_ms(&[[500.0; 9].as_slice(), &[4000.0]].concat()),
            quantile: 0.95,
        };
        let (mut p, mut rx, _rec) = learned_playout(Some(plan), config().jitter_reserve_ms);
        p.begin(ms(6000));
        let input = tone(frames_of(6000));
        let pushed = Instant::now();
        p.push(&input[..frames_of(1000)]).await.unwrap();
        // Then nothing for 3.4 s. The planned moment (~1.9 s) falls inside the stall, where
        // 1 s of audio, even slowed, would run out at ~3 s: it cannot bridge the rest of
        // a 4 s stall (or a longer one not yet seen), so the start waits for the stream.
        let early = tokio::time::timeout(ms(2800), wait_started(&mut p, &mut rx)).await;
        assert!(
            early.is_err(),
            "started {:?} after the first audio, inside the stall",
            pushed.elapsed()
        );
        tokio::time::sleep(ms(600)).await;
        p.push(&input[frames_of(1000)..]).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();
        assert!(report.warm, "{report:?}");
        assert_eq!(report.stalls, 0, "a gap after the start: {report:?}");
    })
    .await
}

/// Issue 9, "pauses and steady parts first": catching up on a learned start's credit slows
/// held sounds, but a sound whose loudness changes every period (onsets, plosives) plays at
/// its own speed, sample for sample, because that is where stretching is heard.
#[tokio::test]
async fn catching_up_on_a_learned_start_leaves_changing_sounds_unstretched() {
    guarded(async {
        let run = |input: Vec<i16>| async move {
            // Learned: 200 ms of jitter, so the start takes credit that slowing earns back.
            let plan = StartPlan {
                jitter_ms: 200,
                rate: 2.0,
                silences: Silences::from_ms(&[600.0; 30]),
                quantile: 0.95,
            };
            let (mut p, mut rx, rec) = learned_playout(Some(plan), config().jitter_reserve_ms);
            p.begin(ms(3000));
            p.push(&input[..frames_of(600)]).await.unwrap();
            wait_started(&mut p, &mut rx).await;
            // The rest arrives in time: the buffer is never short, only the credit is owed.
            p.push(&input[frames_of(600)..]).await.unwrap();
            tokio::time::sleep(ms(1500)).await;
            p.end();
            let report = p.finished().await.unwrap();
            let rec = rec.lock().unwrap();
            assert_whole_periods(&rec, 1);
            (report, rec.samples.clone())
        };
        let held = tone(frames_of(3000));
        let (report, _) = run(held).await;
        assert!(report.warm && report.stalls == 0, "{report:?}");
        assert!(report.stretched_ms >= 200, "held sound: {report:?}");
        // The same tone, its level jumping by ±6 dB every period.
        let changing: Vec<i16> = tone(frames_of(3000))
            .iter()
            .enumerate()
            .map(|(i, &s)| if (i / PERIOD) % 2 == 0 { s } else { s / 2 })
            .collect();
        let (report, out) = run(changing.clone()).await;
        assert!(report.warm && report.stalls == 0, "{report:?}");
        assert_eq!(report.stretched_ms, 0, "changing sound: {report:?}");
        assert_played_exactly(&out, &changing);
    })
    .await
}

/// `s` at `gain`, as the audio thread scales it.
fn at_gain(s: i16, gain: f32) -> i16 {
    (f32::from(s) * gain).round() as i16
}

#[tokio::test]
async fn an_utterance_starts_at_its_gain_and_a_change_while_playing_ramps_without_a_click() {
    guarded(async {
        let (sink, rec) = ClockedSink::new(1);
        let mut p = Playout::spawn(Box::new(sink), config()).unwrap();
        let a = tone(frames_of(300));
        let b = tone(frames_of(1500));
        // A loud utterance, then a quiet one: the quiet one's very first sample is already
        // quiet (no fade down from the last one's gain).
        p.begin(ms(300));
        feed(&mut p, &a, frames_of(40), ms(12)).await;
        p.end();
        p.finished().await.unwrap();
        p.set_gain(0.125);
        let mut events = p.subscribe();
        p.begin(ms(1500));
        feed(&mut p, &b, frames_of(40), ms(12)).await;
        wait_started(&mut p, &mut events).await;
        // Mid-utterance, back to full scale: a ramp, not a step.
        tokio::time::sleep(ms(300)).await;
        p.set_gain(1.0);
        p.end();
        p.finished().await.unwrap();

        let rec = rec.lock().unwrap();
        assert_whole_periods(&rec, 1);
        let split = rec.drained_at[0];
        assert_played_exactly(&rec.samples[..split], &a);
        let out = &rec.samples[split..split + b.len()];
        let quiet = out
            .iter()
            .zip(&b)
            .take_while(|(o, i)| **o == at_gain(**i, 0.125))
            .count();
        assert!(quiet >= frames_of(250), "only {quiet} frames at gain 0.125");
        let loud = out
            .iter()
            .zip(&b)
            .position(|(o, i)| o == i)
            .expect("never reached full scale");
        // 0.125 → 1.0 moves 0.875 of the full 15 ms ramp (105 frames at 8 kHz).
        let ramp = loud - quiet;
        assert!(
            (frames_of(10)..=frames_of(15)).contains(&ramp),
            "ramp of {ramp} frames"
        );
        assert_eq!(&out[loud..], &b[loud..], "full scale after the ramp");
        // (The tone's DC offset makes its own start and end steps: only the change counts.)
        assert!(
            max_step(out) <= MAX_STEP,
            "click: step of {}",
            max_step(out)
        );
    })
    .await
}
