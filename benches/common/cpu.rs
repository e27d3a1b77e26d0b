//! CPU-time helpers shared by the benches that compare against bare libopus
//! (`#[path = "common/cpu.rs"] mod cpu;`).

use std::io::Cursor;

/// This thread's CPU time in seconds (not wall time: on a shared machine wall time mostly
/// measures preemption).
pub fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The Opus audio packets of an Ogg Opus file (OpusHead and OpusTags left out).
pub fn audio_packets(file: &[u8]) -> Vec<Vec<u8>> {
    let mut reader = ogg::PacketReader::new(Cursor::new(file));
    let mut packets = Vec::new();
    while let Some(p) = reader.read_packet().expect("ogg") {
        packets.push(p.data);
    }
    packets.split_off(2.min(packets.len()))
}

/// Decodes `packets` with bare libopus at 48 kHz mono.
pub fn decode(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).expect("opus decoder");
    let mut buf = vec![0i16; 5760];
    let mut pcm = Vec::new();
    for p in packets {
        let n = dec.decode(p, &mut buf, false).expect("decode");
        pcm.extend_from_slice(&buf[..n]);
    }
    pcm
}
