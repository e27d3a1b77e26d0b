//! Announcement volume: the 0–100 scale and its curve, the clamps and quiet hours that
//! decide the volume a job plays at, and local time of day.
//!
//! The scale is cubic, `gain = (volume / 100)³`, the curve PulseAudio's volume percentages
//! and `alsamixer -M` use: equal steps sound about equally loud (50 ≈ −18 dB, 30 ≈ −31 dB,
//! 10 = −60 dB) and 0 is true silence, with no jump at the bottom as a dB-linear scale has.

use serde::{Deserialize, Serialize};

/// The loudest volume: full scale, the audio as decoded.
pub const MAX: u8 = 100;

/// A volume on the 0–100 scale (validated: every caller builds one through [`Volume::new`]
/// or its `Deserialize`, so the range is checked in one place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u8")]
pub struct Volume(u8);

/// A volume that is not a whole number from 0 to 100.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "volume {value} is not allowed (allowed: a whole number from 0 = silent to 100 = full scale)"
)]
pub struct VolumeError {
    /// What was given, as written.
    pub value: String,
}

impl Volume {
    /// Full scale.
    pub const FULL: Volume = Volume(MAX);
    /// Silence.
    pub const SILENT: Volume = Volume(0);

    /// The volume `value`, if it is a whole number from 0 to 100.
    pub fn new(value: f64) -> Result<Volume, VolumeError> {
        if value.fract() == 0.0 && (0.0..=f64::from(MAX)).contains(&value) {
            Ok(Volume(value as u8))
        } else {
            Err(VolumeError {
                value: value.to_string(),
            })
        }
    }

    /// The number on the scale.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The linear amplitude factor: `(volume / 100)³` (see the module docs).
    pub fn gain(self) -> f32 {
        (f32::from(self.0) / f32::from(MAX)).powi(3)
    }
}

impl From<Volume> for u8 {
    fn from(v: Volume) -> u8 {
        v.0
    }
}

impl std::fmt::Display for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Volume {
    type Err = VolumeError;
    /// For the command line (`--volume 40`).
    fn from_str(s: &str) -> Result<Volume, VolumeError> {
        let value: f64 = s.trim().parse().map_err(|_| VolumeError {
            value: format!("'{s}'"),
        })?;
        Volume::new(value)
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Volume, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Volume;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a volume: a whole number from 0 = silent to 100 = full scale")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Volume, E> {
                Volume::new(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Volume, E> {
                Volume::new(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Volume, E> {
                Volume::new(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A time of day, to the minute (`"22:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    minutes: u16,
}

impl TimeOfDay {
    /// `hour`:`minute`, if it is a time of day.
    pub fn new(hour: u8, minute: u8) -> Option<TimeOfDay> {
        (hour < 24 && minute < 60).then(|| TimeOfDay {
            minutes: u16::from(hour) * 60 + u16::from(minute),
        })
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.minutes
    }
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

impl std::str::FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("'{s}' is not a time of day (allowed: \"HH:MM\", 00:00 to 23:59)");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let digits = |t: &str, n: std::ops::RangeInclusive<usize>| {
            n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(h, 1..=2) || !digits(m, 2..=2) {
            return Err(bad());
        }
        let (h, m) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        TimeOfDay::new(h, m).ok_or_else(bad)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TimeOfDay, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[[audio.quiet_hours]]`: from `from` up to `to` (local time; `to` before `from` spans
/// midnight), nothing plays louder than `max_volume`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start (inclusive).
    pub from: TimeOfDay,
    /// End (exclusive).
    pub to: TimeOfDay,
    /// The loudest volume while it lasts.
    pub max_volume: Volume,
}

impl QuietHours {
    /// Whether `t` lies in the window (`from` ≤ t < `to`, across midnight when `to` <
    /// `from`).
    pub fn contains(&self, t: TimeOfDay) -> bool {
        if self.from <= self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }

    /// The window's own rule: `from` and `to` differ (an empty window is a mistake).
    pub fn validate(&self) -> Result<(), String> {
        if self.from == self.to {
            return Err(format!(
                "from and to are both {} (allowed: two different times; the window runs from `from` up to `to`, across midnight when `to` is earlier)",
                self.from
            ));
        }
        Ok(())
    }
}

/// How the volume a job plays at is decided: what it asked for (else `default`), clamped to
/// `min`..=`max`, then capped by any quiet hours in force. Quiet hours win over `min`: at
/// night the house asked for quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePolicy {
    /// `audio.volume`: for jobs that ask for none.
    pub default: Volume,
    /// `audio.min_volume`.
    pub min: Volume,
    /// `audio.max_volume`.
    pub max: Volume,
    /// `[[audio.quiet_hours]]`.
    pub quiet_hours: Vec<QuietHours>,
}

impl Default for VolumePolicy {
    /// Full scale, no limits, no quiet hours: the audio as decoded.
    fn default() -> Self {
        VolumePolicy {
            default: Volume::FULL,
            min: Volume::SILENT,
            max: Volume::FULL,
            quiet_hours: Vec::new(),
        }
    }
}

impl VolumePolicy {
    /// The volume a job that asked for `asked` plays at when it starts at local time `now`.
    pub fn applied(&self, asked: Option<Volume>, now: TimeOfDay) -> Volume {
        let v = asked.unwrap_or(self.default).clamp(self.min, self.max);
        self.quiet_hours
            .iter()
            .filter(|q| q.contains(now))
            .fold(v, |v, q| v.min(q.max_volume))
    }

    /// The loudest any job may play at `now`.
    pub fn max_at(&self, now: TimeOfDay) -> Volume {
        self.applied(Some(Volume::FULL), now)
    }
}

/// The local time of day (the system's time zone: `TZ`, else `/etc/localtime`, read once
/// per process); UTC if the C library cannot say.
pub fn local_time_of_day() -> TimeOfDay {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: `tm` is plain data that localtime_r fills; both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    let (h, m) = if ok {
        (tm.tm_hour, tm.tm_min)
    } else {
        (((now / 3600) % 24) as i32, ((now / 60) % 60) as i32)
    };
    TimeOfDay::new(h as u8, m as u8).unwrap_or(TimeOfDay { minutes: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TimeOfDay {
        s.parse().unwrap()
    }

    fn v(n: u8) -> Volume {
        Volume::new(f64::from(n)).unwrap()
    }

    #[test]
    fn the_curve_is_cubic_from_silence_to_full_scale() {
        assert_eq!(v(0).gain(), 0.0);
        assert_eq!(v(100).gain(), 1.0);
        assert!((v(50).gain() - 0.125).abs() < 1e-6);
        // In dB: 50 ≈ −18, 30 ≈ −31, 10 = −60.
        let db = |n| 20.0 * f64::from(v(n).gain()).log10();
        assert!((db(50) + 18.06).abs() < 0.01, "{}", db(50));
        assert!((db(30) + 31.37).abs() < 0.01, "{}", db(30));
        assert!((db(10) + 60.0).abs() < 0.01, "{}", db(10));
        // Monotonic: louder is never quieter.
        for n in 0..100 {
            assert!(v(n).gain() < v(n + 1).gain(), "{n}");
        }
    }

    #[test]
    fn only_whole_numbers_from_0_to_100_are_volumes() {
        for bad in [-1.0, 101.0, 50.5, f64::NAN, f64::INFINITY] {
            let e = Volume::new(bad).unwrap_err().to_string();
            assert!(e.contains("0 = silent to 100 = full scale"), "{e}");
        }
        assert_eq!("40".parse::<Volume>().unwrap().get(), 40);
        assert!("loud"
            .parse::<Volume>()
            .unwrap_err()
            .to_string()
            .contains("'loud'"));
        let e = serde_json::from_str::<Volume>("\"loud\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a whole number from 0"), "{e}");
        assert_eq!(serde_json::from_str::<Volume>("70.0").unwrap().get(), 70);
        assert_eq!(serde_json::to_string(&v(70)).unwrap(), "70");
    }

    #[test]
    fn times_of_day_parse_hh_mm_only() {
        assert_eq!(t("22:00").minutes(), 22 * 60);
        assert_eq!(t("7:05").to_string(), "07:05");
        assert_eq!(t("23:59").minutes(), 1439);
        for bad in [
            "25:00", "24:00", "12:60", "12", "12:5", "noon", "-1:00", "12:00:00", "",
        ] {
            let e = bad.parse::<TimeOfDay>().unwrap_err();
            assert!(e.contains("00:00 to 23:59"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_window_spanning_midnight_covers_the_night_and_not_the_day() {
        let night = QuietHours {
            from: t("22:00"),
            to: t("07:00"),
            max_volume: v(30),
        };
        for inside in ["22:00", "23:59", "00:00", "03:00", "06:59"] {
            assert!(night.contains(t(inside)), "{inside}");
        }
        for outside in ["07:00", "12:00", "21:59"] {
            assert!(!night.contains(t(outside)), "{outside}");
        }
        let lunch = QuietHours {
            from: t("12:00"),
            to: t("13:30"),
            max_volume: v(10),
        };
        assert!(lunch.contains(t("12:00")) && lunch.contains(t("13:29")));
        assert!(!lunch.contains(t("13:30")) && !lunch.contains(t("11:59")));
        let empty = QuietHours {
            from: t("08:00"),
            to: t("08:00"),
            max_volume: v(10),
        };
        assert!(empty.validate().unwrap_err().contains("both 08:00"));
        assert!(night.validate().is_ok());
    }

    #[test]
    fn the_applied_volume_is_asked_or_default_clamped_then_capped_by_quiet_hours() {
        let p = VolumePolicy {
            default: v(80),
            min: v(20),
            max: v(90),
            quiet_hours: vec![QuietHours {
                from: t("22:00"),
                to: t("07:00"),
                max_volume: v(30),
            }],
        };
        let day = t("12:00");
        assert_eq!(p.applied(None, day), v(80));
        assert_eq!(p.applied(Some(v(100)), day), v(90));
        assert_eq!(p.applied(Some(v(5)), day), v(20));
        let night = t("23:30");
        assert_eq!(p.applied(None, night), v(30));
        assert_eq!(p.applied(Some(v(25)), night), v(25));
        assert_eq!(p.max_at(night), v(30));
        assert_eq!(p.max_at(day), v(90));
        // Quiet hours below min_volume: quiet wins.
        let p = VolumePolicy { min: v(50), ..p };
        assert_eq!(p.applied(Some(v(60)), t("01:00")), v(30));
        assert_eq!(VolumePolicy::default().applied(None, day), v(100));
    }
}
