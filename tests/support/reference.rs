//! Reference decoding for end-to-end comparisons: the `ogg` crate's reader and libopus
//! called directly, with pre-skip and end trim applied by hand (RFC 7845), independent of
//! herald's own demuxer and decoder.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;

/// Decodes a whole Ogg Opus file at `rate` (an Opus rate) into interleaved samples.
pub fn decode_ogg_opus(bytes: &[u8], rate: u32) -> Vec<i16> {
    let mut reader = ogg::PacketReader::new(Cursor::new(bytes));
    let head = reader.read_packet_expected().unwrap();
    assert_eq!(&head.data[..8], b"OpusHead");
    let channels = head.data[9] as usize;
    let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]) as u64;
    let _tags = reader.read_packet_expected().unwrap();
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut dec = opus::Decoder::new(rate, ch).unwrap();
    let scale = 48_000 / rate as u64;
    let mut out = Vec::new();
    let mut buf = vec![0i16; 5760 * channels];
    let mut last_granule = 0;
    while let Some(p) = reader.read_packet().unwrap() {
        let n = dec.decode(&p.data, &mut buf, false).unwrap();
        out.extend_from_slice(&buf[..n * channels]);
        if p.last_in_page() {
            last_granule = p.absgp_page();
        }
    }
    let skip = ((pre_skip + scale / 2) / scale) as usize * channels;
    let total = ((last_granule - pre_skip + scale / 2) / scale) as usize * channels;
    out.drain(..skip.min(out.len()));
    out.truncate(total);
    out
}

/// Reads a WAV file written by herald's WAV sink.
pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let samples = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (spec, samples)
}
