//! Fuzzes the streaming Ogg demuxer: arbitrary bytes, chunked by sizes taken from the input.
//!
//! Checks, besides "never panics": memory stays within one page header plus the packet limit;
//! no packet exceeds the limit; and, when neither run hit an error, the packets do not depend
//! on the chunking (chunked run == single push).
#![no_main]

use herald::codec::ogg::{Demuxer, Packet};
use libfuzzer_sys::fuzz_target;

/// Largest page header: 27 fixed bytes plus 255 lacing values.
const MAX_HEADER: usize = 27 + 255;

fuzz_target!(|data: &[u8]| {
    // Control bytes: [flags, limit, chunk sizes (4)], then the stream.
    if data.len() < 6 {
        return;
    }
    let (ctrl, body) = data.split_at(6);
    let max = 1 + usize::from(ctrl[1]) * 300; // small limits exercise the too-large path
    let sizes: Vec<usize> = ctrl[2..6].iter().map(|&b| usize::from(b) + 1).collect();
    let mut stream = body.to_vec();
    if ctrl[0] & 1 != 0 {
        // Random bytes almost never carry a valid CRC; let the fuzzer reach the deep paths
        // (spanning packets, orphans, resync after good pages) by fixing CRCs up.
        fix_crcs(&mut stream);
    }

    let (chunked, chunked_errors) = run(&stream, &sizes, max);
    let (whole, whole_errors) = run(&stream, &[usize::MAX], max);
    if chunked_errors == 0 && whole_errors == 0 {
        assert_eq!(chunked, whole, "packets depend on the chunking");
    }
});

/// Demuxes `stream` in chunks of `sizes` (cycled); returns the packets and the error count.
fn run(stream: &[u8], sizes: &[usize], max: usize) -> (Vec<Packet>, usize) {
    let mut d = Demuxer::with_max_packet_bytes(max);
    let mut packets = Vec::new();
    let mut errors = 0;
    let mut at = 0;
    let mut k = 0;
    while at < stream.len() {
        let n = sizes[k % sizes.len()].min(stream.len() - at);
        k += 1;
        let result = d.push(&stream[at..at + n], &mut |p| {
            assert!(
                p.data.len() <= max,
                "packet of {} > limit {max}",
                p.data.len()
            );
            packets.push(p);
        });
        if let Err(e) = result {
            // Every error must render to a message without panicking.
            let _ = e.to_string();
            errors += 1;
        }
        at += n;
        assert!(
            d.buffered_bytes() <= MAX_HEADER + max,
            "buffered {} > bound {}",
            d.buffered_bytes(),
            MAX_HEADER + max
        );
    }
    if let Err(e) = d.finish() {
        let _ = e.to_string();
    }
    let s = d.stats();
    assert_eq!(s.bytes, stream.len() as u64);
    assert!(s.skipped_bytes <= s.bytes);
    assert_eq!(s.packets, packets.len() as u64);
    (packets, errors)
}

/// Rewrites the CRC of every page that starts with "OggS" and fits in the buffer.
fn fix_crcs(stream: &mut [u8]) {
    let mut at = 0;
    while at + 27 <= stream.len() {
        if &stream[at..at + 4] != b"OggS" {
            at += 1;
            continue;
        }
        let nseg = usize::from(stream[at + 26]);
        if at + 27 + nseg > stream.len() {
            return;
        }
        let body: usize = stream[at + 27..at + 27 + nseg]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        let end = at + 27 + nseg + body;
        if end > stream.len() {
            return;
        }
        stream[at + 22..at + 26].fill(0);
        let crc = crc32(&stream[at..end]);
        stream[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, MSB first, initial 0), bitwise: independent of the
/// table-driven one under test.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in bytes {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}
