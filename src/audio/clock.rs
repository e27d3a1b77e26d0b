//! The wall-clock view of a device: frames written since it started, against the frames
//! its clock has consumed since then. A clocked device consumes at its rate from the moment
//! it gets its first frames, so what was written minus what that clock reached is a lower
//! bound on what it still holds, whatever its driver reports.

use std::time::{Duration, Instant};

/// Frames written since a start moment, read against the wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock {
    since: Option<Instant>,
    written: u64,
}

impl WallClock {
    /// Frames the clock has reached at `now` (0 while stopped).
    pub fn played(&self, now: Instant, rate: u32) -> u64 {
        self.since.map_or(0, |s| {
            (now.saturating_duration_since(s).as_secs_f64() * f64::from(rate)) as u64
        })
    }

    /// Frames written since the start.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// When the frame `frames` after the start is due (`None` while stopped).
    pub fn at(&self, frames: u64, rate: u32) -> Option<Instant> {
        self.since
            .map(|s| s + Duration::from_secs_f64(frames as f64 / f64::from(rate.max(1))))
    }

    /// Written but not yet reached by the clock: what the device holds at least.
    pub fn ahead(&self, now: Instant, rate: u32) -> u64 {
        self.written.saturating_sub(self.played(now, rate))
    }

    /// Starts the clock at `now` if it is stopped or has reached everything written (the
    /// device ran dry and starts again with the next write). True if it had been running
    /// and ran dry.
    pub fn start_if_dry(&mut self, now: Instant, rate: u32) -> bool {
        let ran_dry = self.since.is_some() && self.played(now, rate) > self.written;
        if self.since.is_none() || ran_dry {
            *self = WallClock {
                since: Some(now),
                written: 0,
            };
        }
        ran_dry
    }

    /// Counts `frames` more written.
    pub fn add(&mut self, frames: u64) {
        self.written += frames;
    }

    /// Stops the clock (the device was drained: nothing is queued).
    pub fn stop(&mut self) {
        *self = WallClock::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_written_less_what_the_clock_reached() {
        let t0 = Instant::now();
        let mut c = WallClock::default();
        assert!(!c.start_if_dry(t0, 48_000));
        c.add(4800);
        assert_eq!(c.ahead(t0, 48_000), 4800);
        assert_eq!(c.ahead(t0 + Duration::from_millis(40), 48_000), 4800 - 1920);
        assert_eq!(c.ahead(t0 + Duration::from_millis(200), 48_000), 0);
    }

    #[test]
    fn a_clock_that_ran_past_everything_restarts_with_the_next_write() {
        let t0 = Instant::now();
        let mut c = WallClock::default();
        c.start_if_dry(t0, 1000);
        c.add(100);
        // Still 50 frames queued: no restart.
        assert!(!c.start_if_dry(t0 + Duration::from_millis(50), 1000));
        assert_eq!(c.written(), 100);
        // Ran dry 100 ms ago: starts again from the new write.
        let t1 = t0 + Duration::from_millis(200);
        assert!(c.start_if_dry(t1, 1000));
        c.add(10);
        assert_eq!(c.ahead(t1, 1000), 10);
        c.stop();
        assert_eq!(c.ahead(t1, 1000), 0);
        assert!(c.at(0, 1000).is_none());
    }
}
