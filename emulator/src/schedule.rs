//! The timing model: when each byte of a response leaves, relative to the request.
//!
//! Audio second k is "generated" at `ttfb + (k+1)/speed`; an Opus page leaves when the
//! audio it covers is generated (so ~1 s bursts), pcm leaves in `chunk`-byte pieces as
//! generated. A stall holds back everything due inside it until it ends.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{Fault, Scenario};
use herald::tts::AudioFormat;

/// One socket write and when it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Due time after the request arrived.
    pub at: Duration,
    /// The bytes.
    pub bytes: Bytes,
    /// Audio complete once this write is out, in samples at the format's rate (opus: 48 kHz
    /// granule minus pre-skip; pcm: 24 kHz), set only on writes that complete something a
    /// decoder can use: the last write of an Ogg page, every pcm write (whole samples).
    pub media: Option<u64>,
}

/// What happens after the last piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The body ends normally.
    End,
    /// The connection is cut (the client sees an incomplete body).
    Cut,
    /// Nothing more is sent, and the connection stays open.
    Hang,
}

/// The full send plan of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Writes in order.
    pub pieces: Vec<Piece>,
    /// After the last write.
    pub tail: Tail,
}

/// Stall intervals (start, end) in wall time after the request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stalls(Vec<(Duration, Duration)>);

impl Stalls {
    /// Explicit stalls plus random ones (seeded) up to `horizon`.
    pub fn new(sc: &Scenario, seed: u64, horizon: Duration) -> Stalls {
        let mut v: Vec<(Duration, Duration)> =
            sc.stalls.iter().map(|&(at, len)| (at, at + len)).collect();
        if let Some(every) = sc.stall_every {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut t = Duration::ZERO;
            loop {
                // Gaps of 0.5–1.5× the mean keep stalls irregular like real WiFi.
                let gap = every.mul_f64(rng.random_range(0.5..1.5));
                let len_ms = rng.random_range(
                    sc.stall_min.as_millis() as u64..=sc.stall_max.as_millis() as u64,
                );
                let start = t + gap;
                if start > horizon {
                    break;
                }
                let end = start + Duration::from_millis(len_ms);
                v.push((start, end));
                t = end;
            }
        }
        v.sort();
        Stalls(v)
    }

    /// When something due at `t` actually leaves (at the end of any stall covering `t`).
    pub fn release(&self, t: Duration) -> Duration {
        let mut out = t;
        // Sorted; overlapping stalls chain.
        for &(s, e) in &self.0 {
            if s <= out && out < e {
                out = e;
            }
        }
        out
    }

    /// The intervals.
    pub fn intervals(&self) -> &[(Duration, Duration)] {
        &self.0
    }
}

fn gen_time(sc: &Scenario, audio: Duration) -> Duration {
    sc.ttfb + audio.div_f64(sc.speed)
}

/// Splits `range` into `chunk`-byte writes due at `at`; the last one carries `media`.
fn split(
    bytes: &Bytes,
    range: Range<usize>,
    chunk: usize,
    at: Duration,
    media: Option<u64>,
    out: &mut Vec<Piece>,
) {
    let mut pos = range.start;
    while pos < range.end {
        let end = (pos + chunk).min(range.end);
        out.push(Piece {
            at,
            bytes: bytes.slice(pos..end),
            media: media.filter(|_| end == range.end),
        });
        pos = end;
    }
}

/// Plans an Ogg Opus body: `pages` are the page byte ranges, `page_audio_end` the audio
/// time each page completes (headers: zero), `page_media` the decodable samples (48 kHz)
/// complete once each page is in.
pub fn plan_opus(
    body: Bytes,
    pages: &[Range<usize>],
    page_audio_end: &[Duration],
    page_media: &[u64],
    sc: &Scenario,
    stalls: &Stalls,
) -> Plan {
    let mut pieces = Vec::new();
    // Where hang-body / drop stop: after the first audio page (and half of the next, for drop).
    let first_audio_end = pages.get(2).map(|r| r.end).unwrap_or(body.len());
    let cut_at = match sc.fault {
        Some(Fault::HangBody) => Some(first_audio_end),
        Some(Fault::Drop) => Some(match pages.get(3) {
            Some(r) => r.start + r.len() / 2,
            None => pages
                .get(2)
                .map(|r| r.start + r.len() / 2)
                .unwrap_or(body.len() / 2),
        }),
        _ => None,
    };
    for (i, (range, audio_end)) in pages.iter().zip(page_audio_end).enumerate() {
        let at = stalls.release(gen_time(sc, *audio_end));
        let end = match cut_at {
            Some(c) if c <= range.start => break,
            Some(c) => range.end.min(c),
            None => range.end,
        };
        // A page cut short completes nothing: its audio cannot be decoded.
        let media = page_media.get(i).copied().filter(|_| end == range.end);
        split(&body, range.start..end, sc.chunk, at, media, &mut pieces);
    }
    Plan {
        pieces,
        tail: tail_for(sc),
    }
}

/// Plans a pcm body: `chunk`-byte pieces, each leaving once its audio is generated.
pub fn plan_pcm(body: Bytes, sc: &Scenario, stalls: &Stalls) -> Plan {
    // 1 s of pcm, or half the body if shorter, for hang-body / drop.
    let cut_at = match sc.fault {
        Some(Fault::HangBody) | Some(Fault::Drop) => Some(48_000.min((body.len() / 2) & !1)),
        _ => None,
    };
    let len = cut_at.unwrap_or(body.len());
    let mut pieces = Vec::new();
    // Whole samples per piece.
    let chunk = (sc.chunk & !1).max(2);
    let mut pos = 0;
    while pos < len {
        let end = (pos + chunk).min(len);
        let audio = Duration::from_secs_f64(end as f64 / 48_000.0);
        split(
            &body,
            pos..end,
            chunk,
            stalls.release(gen_time(sc, audio)),
            Some(end as u64 / 2),
            &mut pieces,
        );
        pos = end;
    }
    Plan {
        pieces,
        tail: tail_for(sc),
    }
}

fn tail_for(sc: &Scenario) -> Tail {
    match sc.fault {
        Some(Fault::Drop) => Tail::Cut,
        Some(Fault::HangBody) => Tail::Hang,
        _ => Tail::End,
    }
}

/// Plans either format.
pub fn plan(
    format: AudioFormat,
    body: Bytes,
    pages: &[Range<usize>],
    page_audio_end: &[Duration],
    page_media: &[u64],
    sc: &Scenario,
    stalls: &Stalls,
) -> Plan {
    match format {
        AudioFormat::Opus => plan_opus(body, pages, page_audio_end, page_media, sc, stalls),
        AudioFormat::Pcm => plan_pcm(body, sc, stalls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn same_seed_same_stalls_and_stalls_hold_back() {
        let sc = Scenario::parse("wifi").unwrap();
        let a = Stalls::new(&sc, 7, Duration::from_secs(30));
        let b = Stalls::new(&sc, 7, Duration::from_secs(30));
        let c = Stalls::new(&sc, 8, Duration::from_secs(30));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.intervals().len() >= 5);
        for &(s, e) in a.intervals() {
            assert!(e - s >= ms(150) && e - s <= ms(1000));
            let mid = s + (e - s) / 2;
            assert_eq!(a.release(mid), e);
        }
    }

    #[test]
    fn opus_pages_leave_once_per_generated_second() {
        let sc = Scenario::parse("ttfb=100,speed=2,chunk=10").unwrap();
        let body = Bytes::from(vec![0u8; 100]);
        let pages = [0..10, 10..30, 30..60, 60..100];
        let ends = [ms(0), ms(0), ms(1000), ms(1500)];
        let media = [0, 0, 47_688, 72_000];
        let p = plan_opus(body, &pages, &ends, &media, &sc, &Stalls::default());
        let times: Vec<u64> = p.pieces.iter().map(|x| x.at.as_millis() as u64).collect();
        assert_eq!(
            times,
            vec![100, 100, 100, 600, 600, 600, 850, 850, 850, 850]
        );
        // Only the write that completes a page says how much audio is usable.
        let marks: Vec<Option<u64>> = p.pieces.iter().map(|x| x.media).collect();
        let n = None;
        assert_eq!(
            marks,
            vec![
                Some(0),
                n,
                Some(0),
                n,
                n,
                Some(47_688),
                n,
                n,
                n,
                Some(72_000)
            ]
        );
        assert_eq!(p.tail, Tail::End);
    }

    #[test]
    fn a_stall_holds_the_backlog_until_it_ends() {
        let sc = Scenario::parse("ttfb=0,speed=1,chunk=48000,stall=500+1200").unwrap();
        let st = Stalls::new(&sc, 0, Duration::from_secs(10));
        let p = plan_pcm(Bytes::from(vec![0u8; 48_000 * 3]), &sc, &st);
        let times: Vec<u64> = p.pieces.iter().map(|x| x.at.as_millis() as u64).collect();
        assert_eq!(times, vec![1700, 2000, 3000]);
        let marks: Vec<Option<u64>> = p.pieces.iter().map(|x| x.media).collect();
        assert_eq!(marks, vec![Some(24_000), Some(48_000), Some(72_000)]);
    }

    #[test]
    fn drop_cuts_inside_the_second_audio_page() {
        let sc = Scenario::parse("fast,drop,chunk=1000").unwrap();
        let body = Bytes::from(vec![0u8; 100]);
        let pages = [0..10, 10..30, 30..60, 60..100];
        let ends = [ms(0), ms(0), ms(1000), ms(1500)];
        let media = [0, 0, 47_688, 72_000];
        let p = plan_opus(body, &pages, &ends, &media, &sc, &Stalls::default());
        let sent: usize = p.pieces.iter().map(|x| x.bytes.len()).sum();
        assert_eq!(sent, 80);
        // The cut page completes nothing.
        let last = p.pieces.iter().rev().find_map(|x| x.media);
        assert_eq!(last, Some(47_688));
        assert_eq!(p.tail, Tail::Cut);
    }
}
