//! The ALSA and WAV sinks against real alsa-lib, with test PCMs standing in for hardware
//! (see tests/support/alsa_env.rs and docs/TESTING-AUDIO.md for what each PCM stands for).

mod support;

use std::time::Duration;

use herald::audio::alsa::{list_devices, probe, AlsaSink, COMMON_RATES};
use herald::audio::wav::WavSink;
use herald::audio::{DeviceFormat, Sink, SinkError, SinkRequest};
use support::{alsa_env, claim_fifo, FifoClock};

/// Hang guard for FIFO captures (the writer normally closes the FIFO long before this).
const IDLE: Duration = Duration::from_secs(5);

fn open(device: &str, req: &SinkRequest) -> AlsaSink {
    alsa_env();
    AlsaSink::open(device, req).unwrap_or_else(|e| panic!("opening {device}: {e}"))
}

/// `periods` periods of distinct, recognisable samples (a counter that walks the i16 range).
fn pattern(fmt: DeviceFormat, periods: usize, seed: i16) -> Vec<Vec<i16>> {
    let per = fmt.period_frames * usize::from(fmt.channels);
    let mut v = seed;
    (0..periods)
        .map(|_| {
            (0..per)
                .map(|_| {
                    v = v.wrapping_add(7919);
                    v
                })
                .collect()
        })
        .collect()
}

#[test]
fn defaults_on_a_permissive_device_give_20ms_periods_and_4_periods_at_48k() {
    let sink = open("herald_null", &SinkRequest::default());
    assert_eq!(
        sink.format(),
        DeviceFormat {
            rate: 48_000,
            channels: 1,
            period_frames: 960,
            buffer_frames: 3840
        }
    );
    assert_eq!(sink.name(), "herald_null");
    assert_eq!(sink.sample_format(), alsa::pcm::Format::s16().to_string());
}

#[test]
fn odd_period_and_buffer_requests_are_read_back_as_granted() {
    let req = SinkRequest {
        period_ms: 7,
        buffer_periods: 3,
        ..SinkRequest::default()
    };
    let sink = open("herald_null", &req);
    // 7 ms at 48 kHz = 336 frames; 3 of them.
    assert_eq!(sink.format().period_frames, 336);
    assert_eq!(sink.format().buffer_frames, 1008);
}

#[test]
fn mono_stream_on_a_stereo_only_device_is_granted_two_channels() {
    let mut sink = open("herald_stereo", &SinkRequest::default());
    let fmt = sink.format();
    assert_eq!(
        fmt.channels, 2,
        "the audio thread must up-mix to what the device needs"
    );
    assert_eq!(fmt.rate, 48_000);
    for p in pattern(fmt, 3, 1) {
        sink.write(&p).unwrap();
    }
    sink.drain().unwrap();
}

#[test]
fn a_device_that_only_takes_44k1_is_opened_at_44100() {
    let mut sink = open("herald_44k", &SinkRequest::default());
    let fmt = sink.format();
    assert_eq!(
        fmt.rate, 44_100,
        "the pipeline resamples to what the device grants"
    );
    assert_eq!(fmt.channels, 1);
    // 20 ms at 44.1 kHz.
    assert_eq!(fmt.period_frames, 882);
    assert_eq!(fmt.buffer_frames, 4 * 882);
    for p in pattern(fmt, 4, 2) {
        sink.write(&p).unwrap();
    }
    sink.drain().unwrap();
}

#[test]
fn a_fixed_period_device_grants_its_own_period_size() {
    let sink = open("herald_fixed_period", &SinkRequest::default());
    let fmt = sink.format();
    // 4096-byte periods of mono S16; the request (960 frames) cannot be had.
    assert_eq!(fmt.period_frames, 2048);
    assert_eq!(fmt.buffer_frames % fmt.period_frames, 0);
    assert!(fmt.buffer_frames >= 2 * fmt.period_frames);
}

#[test]
fn a_period_refused_by_the_driver_is_replaced_by_a_nearby_power_of_two() {
    let mut sink = open("herald_reject_period", &SinkRequest::default());
    let fmt = sink.format();
    // 960-frame mono periods are advertised but fail hw_params; 1024 is the next choice.
    assert_eq!(fmt.rate, 48_000);
    assert_eq!(fmt.period_frames, 1024);
    assert_eq!(fmt.buffer_frames, 4096);
    for p in pattern(fmt, 3, 3) {
        sink.write(&p).unwrap();
    }
    sink.drain().unwrap();
}

#[test]
fn when_no_period_near_the_request_is_taken_the_device_defaults_are_used_and_play() {
    let mut sink = open("herald_reject_small_periods", &SinkRequest::default());
    let fmt = sink.format();
    assert_eq!(fmt.rate, 48_000);
    // Whatever the device chose, it is read back and writes use it.
    assert!(fmt.period_frames * 2 > 8192, "{fmt:?}");
    assert!(fmt.buffer_frames >= 2 * fmt.period_frames, "{fmt:?}");
    for p in pattern(fmt, 2, 3) {
        sink.write(&p).unwrap();
    }
    sink.drain().unwrap();
}

#[test]
fn an_s32_only_device_receives_the_samples_converted_exactly() {
    let env = alsa_env();
    let written = {
        let mut sink = open("herald_s32_file", &SinkRequest::default());
        assert_eq!(sink.sample_format(), alsa::pcm::Format::s32().to_string());
        let periods = pattern(sink.format(), 3, 4);
        for p in &periods {
            sink.write(p).unwrap();
        }
        sink.drain().unwrap();
        periods.concat()
    };
    let raw = std::fs::read(env.s32_capture()).unwrap();
    let got: Vec<i32> = raw
        .chunks_exact(4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want: Vec<i32> = written.iter().map(|s| i32::from(*s) << 16).collect();
    assert_eq!(got, want);
}

#[test]
fn a_device_without_a_usable_format_is_refused_naming_the_formats_it_offers() {
    alsa_env();
    let err = AlsaSink::open("herald_no_s16", &SinkRequest::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SinkError::Params {
                param: "format",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("herald_no_s16"), "{msg}");
    assert!(msg.contains("MU_LAW"), "{msg}");
}

#[test]
fn a_missing_device_is_not_found_and_named() {
    alsa_env();
    let err = AlsaSink::open("herald_no_such_device", &SinkRequest::default()).unwrap_err();
    assert!(matches!(err, SinkError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("herald_no_such_device"), "{err}");

    let err = AlsaSink::open("bad\0name", &SinkRequest::default()).unwrap_err();
    assert!(matches!(err, SinkError::NotFound { .. }), "{err:?}");

    let err = probe("herald_no_such_device").unwrap_err();
    assert!(err.to_string().contains("herald_no_such_device"), "{err}");
}

#[test]
fn a_busy_device_is_reported_as_busy_naming_it() {
    alsa_env();
    let err = AlsaSink::open("herald_busy", &SinkRequest::default()).unwrap_err();
    assert!(matches!(err, SinkError::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("herald_busy"), "{err}");
    let listed = list_devices()
        .into_iter()
        .find(|d| d.name == "herald_busy")
        .unwrap();
    assert_eq!(listed.caps.unwrap_err(), "busy");
}

#[test]
fn a_float_only_device_is_fed_float_samples() {
    let mut sink = open("herald_float", &SinkRequest::default());
    assert_eq!(sink.sample_format(), alsa::pcm::Format::float().to_string());
    assert_eq!(sink.format().period_frames, 960);
    for p in pattern(sink.format(), 3, 12) {
        sink.write(&p).unwrap();
    }
    sink.drain().unwrap();
}

#[test]
fn underruns_are_recovered_and_counted() {
    let mut sink = open("herald_xrun", &SinkRequest::default());
    // The device underruns after every 4800 frames (5 periods) since its last prepare.
    for p in pattern(sink.format(), 20, 5) {
        sink.write(&p).unwrap();
    }
    assert!(sink.xruns() >= 2, "xruns counted: {}", sink.xruns());
    sink.drain().unwrap();
}

#[test]
fn fifo_capture_is_bit_exact_and_gapless_while_the_writer_keeps_up() {
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let written = {
        let mut sink = open(&fifo.pcm, &SinkRequest::default());
        let periods = pattern(sink.format(), 50, 6); // one second
        for p in &periods {
            sink.write(p).unwrap();
        }
        sink.drain().unwrap();
        periods.concat()
    }; // dropping the sink closes the FIFO: the clock sees EOF
    let cap = clock.finish(IDLE);
    assert!(cap.eof, "the writer closed the FIFO");
    assert_eq!(cap.samples.len(), written.len());
    assert!(
        cap.samples == written,
        "captured samples differ from what was written"
    );
    assert!(
        cap.gaps.is_empty(),
        "gaps while the writer kept up: {:?}",
        cap.gaps
    );
}

#[test]
fn a_writer_pause_shows_up_as_a_gap() {
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let written = {
        let mut sink = open(&fifo.pcm, &SinkRequest::default());
        let periods = pattern(sink.format(), 30, 7);
        for p in &periods[..15] {
            sink.write(p).unwrap();
        }
        // Far longer than the pipe (~85 ms) can cover: a real speaker would go silent.
        std::thread::sleep(Duration::from_millis(500));
        for p in &periods[15..] {
            sink.write(p).unwrap();
        }
        sink.drain().unwrap();
        periods.concat()
    };
    let cap = clock.finish(IDLE);
    assert!(!cap.gaps.is_empty(), "a 500 ms stall was not detected");
    // Most of the pause is silence: the pipe and the plugin's buffer cover at most ~165 ms.
    assert!(
        cap.gap_frames() >= 48 * 250,
        "only {} frames of gap for a 500 ms pause",
        cap.gap_frames()
    );
    // The stall loses time, not data.
    assert!(
        cap.samples == written,
        "captured samples differ from what was written"
    );
}

#[test]
fn silence_after_the_last_sample_is_not_reported_as_a_gap() {
    // The audio thread keeps the device open between utterances; the clock must not call
    // that idle time a gap, or every test would need to close the sink at once.
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let mut sink = open(&fifo.pcm, &SinkRequest::default());
    let periods = pattern(sink.format(), 10, 11);
    for p in &periods {
        sink.write(p).unwrap();
    }
    sink.drain().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Still open: the clock stops on the idle timeout instead of EOF.
    let cap = clock.finish(Duration::from_millis(200));
    drop(sink);
    assert!(!cap.eof);
    assert!(
        cap.samples == periods.concat(),
        "captured samples differ from what was written"
    );
    assert!(
        cap.gaps.is_empty(),
        "idle time after the end counted as a gap: {:?}",
        cap.gaps
    );
}

#[test]
fn drain_returns_only_after_the_reader_has_taken_the_data_and_the_sink_is_reusable() {
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let mut sink = open(&fifo.pcm, &SinkRequest::default());
    let fmt = sink.format();
    let first = pattern(fmt, 25, 8);
    for p in &first {
        sink.write(p).unwrap();
    }
    sink.drain().unwrap();
    // Everything left the sink: at most one pipe-full is still waiting for the reader. (Without
    // a real drain, the file plugin would still hold a whole ALSA buffer as well.)
    let total = (first.concat().len() * 2) as u64;
    let consumed = clock.consumed_bytes();
    assert!(
        consumed + clock.pipe_capacity() as u64 >= total,
        "drain returned with {} of {total} bytes consumed",
        consumed
    );
    // The next utterance plays on the same handle.
    let second = pattern(fmt, 5, 9);
    for p in &second {
        sink.write(p).unwrap();
    }
    sink.drain().unwrap();
    drop(sink);
    let cap = clock.finish(IDLE);
    let mut all = first.concat();
    all.extend(second.concat());
    assert!(
        cap.samples == all,
        "captured samples differ from what was written"
    );
}

#[test]
fn wav_sink_writes_exactly_what_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.wav");
    let mut sink = WavSink::create(&path, 24_000, 2, 480).unwrap();
    assert_eq!(
        sink.format(),
        DeviceFormat {
            rate: 24_000,
            channels: 2,
            period_frames: 480,
            buffer_frames: 480
        }
    );
    let periods = pattern(sink.format(), 4, 10);
    for p in &periods[..2] {
        sink.write(p).unwrap();
    }
    sink.drain().unwrap();
    // After a drain the file is already a complete WAV.
    let early: Vec<i16> = hound::WavReader::open(&path)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(early, periods[..2].concat());
    for p in &periods[2..] {
        sink.write(p).unwrap();
    }
    sink.drain().unwrap();
    drop(sink);

    let mut reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (24_000, 2, 16)
    );
    let got: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    assert_eq!(got, periods.concat());
}

#[test]
fn wav_sink_in_a_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("out.wav");
    let err = WavSink::create(&path, 48_000, 1, 960).unwrap_err();
    assert!(matches!(err, SinkError::Wav { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn listing_shows_the_test_devices_with_what_they_accept() {
    alsa_env();
    let devices = list_devices();
    let find = |name: &str| {
        devices.iter().find(|d| d.name == name).unwrap_or_else(|| {
            panic!(
                "{name} not listed in {:?}",
                devices.iter().map(|d| &d.name).collect::<Vec<_>>()
            )
        })
    };
    assert!(devices.iter().any(|d| d.name == "default"));

    let k44 = find("herald_44k");
    assert!(
        k44.description.contains("44.1 kHz"),
        "{:?}",
        k44.description
    );
    let caps = k44.caps.as_ref().unwrap();
    assert_eq!(caps.rates, (44_100, 44_100));
    assert_eq!(caps.common_rates, vec![44_100]);
    assert_eq!(caps.channels, (1, 2));
    assert_eq!(caps.formats, vec!["S16_LE".to_string()]);

    let stereo = find("herald_stereo").caps.as_ref().unwrap();
    assert_eq!(stereo.channels, (2, 2));

    let null = find("herald_null").caps.as_ref().unwrap();
    assert_eq!(null.common_rates, COMMON_RATES.to_vec());

    let s32 = probe("herald_s32").unwrap();
    assert_eq!(s32.formats, vec!["S32_LE".to_string()]);
}

/// CPU time this process has used (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// ALSA's `null` PCM takes every write at once and reports no delay, so nothing clocks the
/// audio thread: a stall on it used to spin writing silence (half the machine's CPU) and
/// report hundreds of millions of milliseconds of it.
#[test]
fn a_stall_on_a_device_that_never_blocks_is_timed_by_the_clock_not_spun() {
    use herald::audio::playout::{Playout, PlayoutConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sink = open("herald_null", &SinkRequest::default());
        let cfg = PlayoutConfig {
            min_prebuffer_ms: 100,
            jitter_reserve_ms: 0,
            realtime_priority: None,
            // The pacing of a stall's silence is under test, not slowed playback.
            max_slowdown: 1.0,
            ..PlayoutConfig::default()
        };
        let mut p = Playout::spawn(Box::new(sink), cfg).unwrap();
        let tone: Vec<i16> = (0..9600).map(|i| ((i % 96) as i16 - 48) * 300).collect();
        p.begin(Duration::from_millis(1200));
        p.push(&tone).await.unwrap();
        // The network goes quiet for a second with 200 ms played: a stall.
        let (cpu0, wall0) = (process_cpu(), std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (cpu, wall) = (process_cpu() - cpu0, wall0.elapsed());
        p.push(&tone).await.unwrap();
        p.end();
        let report = p.finished().await.unwrap();
        assert_eq!(report.stalls, 1, "{report:?}");
        assert!(
            (500..=2500).contains(&report.stall_ms),
            "a 1 s network pause reported as {} ms of silence",
            report.stall_ms
        );
        // Spinning takes a whole core; waiting takes next to nothing.
        assert!(
            cpu < wall / 2,
            "the stall used {cpu:?} of CPU in {wall:?}: the audio thread spins"
        );
        assert_eq!(report.frames_played, 2 * tone.len() as u64);
        p.shutdown().unwrap();
    });
}

/// The delay-reporting FIFO device (a stand-in for a sound card, which this machine does not
/// have): it plays what it is given exactly and gaplessly, reports as its delay what is still
/// in the pipe, and drains only once the reader has taken everything. The file PCM on the
/// same FIFO reports nothing queued at all.
#[test]
fn the_delay_reporting_fifo_device_reports_what_its_pipe_still_holds() {
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let written = {
        let mut sink = open(&fifo.delay_pcm, &SinkRequest::default());
        let periods = pattern(sink.format(), 50, 9); // one second
        clock.pause();
        // Three periods into a paused "DAC": all of them are still queued.
        for p in &periods[..3] {
            sink.write(p).unwrap();
        }
        let period = sink.format().period_frames as u64;
        assert_eq!(sink.queued_frames(), Some(3 * period));
        clock.resume();
        for p in &periods[3..] {
            sink.write(p).unwrap();
        }
        let queued = sink.queued_frames().unwrap();
        // The 8 KiB pipe holds at most 4096 mono frames.
        assert!(queued > 0 && queued <= 4096, "queued {queued}");
        sink.drain().unwrap();
        assert!(
            clock.consumed_bytes() >= (periods.concat().len() * 2) as u64,
            "drain returned before the reader had everything"
        );
        periods.concat()
    };
    let cap = clock.finish(IDLE);
    assert!(cap.samples == written, "captured samples differ");
    assert!(cap.gaps.is_empty(), "gaps: {:?}", cap.gaps);
}
