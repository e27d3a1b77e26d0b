//! The streaming Ogg demuxer against the `ogg` crate (reference writer and reader), in any
//! chunking, plus corruption, junk, truncation and memory bounds.

use std::io::Cursor;
use std::ops::Range;

use herald::codec::ogg::{Demuxer, OggError, Packet};
use ogg::{PacketReader, PacketWriteEndInfo, PacketWriter};
use proptest::prelude::*;

/// One packet to write: its length and how the writer should end it.
#[derive(Debug, Clone)]
struct Spec {
    len: usize,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Normal,
    Page,
    Stream,
}

/// Packet contents that differ per packet and per byte, so misplaced bytes are caught.
fn content(index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (index.wrapping_mul(131) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8)
        .collect()
}

/// Writes an Ogg file with the reference writer; granules advance 960 per packet.
fn write_ogg(serial: u32, specs: &[Spec]) -> Vec<u8> {
    let packets: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| content(i, s.len))
        .collect();
    let mut w = PacketWriter::new(Vec::new());
    for (i, (s, data)) in specs.iter().zip(&packets).enumerate() {
        let end = match s.end {
            End::Normal => PacketWriteEndInfo::NormalPacket,
            End::Page => PacketWriteEndInfo::EndPage,
            End::Stream => PacketWriteEndInfo::EndStream,
        };
        w.write_packet(data.clone(), serial, end, 960 * (i as u64 + 1))
            .unwrap();
    }
    w.into_inner()
}

/// Pages of `groups[k]` packets each (each group ends its page), the last ending the stream.
fn specs_from_groups(groups: &[Vec<usize>]) -> Vec<Spec> {
    let mut specs = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for (i, &len) in group.iter().enumerate() {
            let end = if i + 1 < group.len() {
                End::Normal
            } else if g + 1 < groups.len() {
                End::Page
            } else {
                End::Stream
            };
            specs.push(Spec { len, end });
        }
    }
    specs
}

/// What the reference reader makes of `file`.
fn reference_packets(file: &[u8]) -> Vec<ogg::Packet> {
    let mut r = PacketReader::new(Cursor::new(file));
    let mut out = Vec::new();
    while let Some(p) = r.read_packet().unwrap() {
        out.push(p);
    }
    out
}

/// Byte ranges of the pages in a well-formed file (walks the headers).
fn page_spans(file: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < file.len() {
        assert_eq!(&file[at..at + 4], b"OggS");
        let nseg = file[at + 26] as usize;
        let body: usize = file[at + 27..at + 27 + nseg]
            .iter()
            .map(|&l| l as usize)
            .sum();
        let end = at + 27 + nseg + body;
        spans.push(at..end);
        at = end;
    }
    spans
}

/// Feeds `file` in chunks of the given sizes (cycled), collecting packets and the first error.
fn demux_chunked(d: &mut Demuxer, file: &[u8], sizes: &[usize]) -> (Vec<Packet>, Vec<OggError>) {
    let mut packets = Vec::new();
    let mut errors = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < file.len() {
        let n = sizes[k % sizes.len()].clamp(1, file.len() - at);
        k += 1;
        if let Err(e) = d.push(&file[at..at + n], &mut |p| packets.push(p)) {
            errors.push(e);
        }
        at += n;
    }
    (packets, errors)
}

fn demux_all(file: &[u8]) -> (Vec<Packet>, Result<(), OggError>) {
    let mut d = Demuxer::new();
    let mut packets = Vec::new();
    let r = d.push(file, &mut |p| packets.push(p));
    (packets, r.and_then(|()| d.finish()))
}

fn assert_same_as_reference(ours: &[Packet], theirs: &[ogg::Packet]) {
    assert_eq!(ours.len(), theirs.len(), "packet count");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.data, b.data, "data of packet {i}");
        assert_eq!(a.serial, b.stream_serial(), "serial of packet {i}");
        assert_eq!(a.page_granule, b.absgp_page(), "page granule of packet {i}");
        assert_eq!(
            a.last_on_page,
            b.last_in_page(),
            "last_on_page of packet {i}"
        );
        assert_eq!(
            a.eos && a.last_on_page,
            b.last_in_stream(),
            "end of stream at packet {i}"
        );
        assert_eq!(a.bos && i == 0, b.first_in_stream(), "bos at packet {i}");
    }
}

/// Packet lengths: mostly Opus-sized, some empty, some spanning pages, rarely > 255*255.
fn packet_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        80 => 1..200usize,
        8 => Just(0usize),
        10 => 200..3000usize,
        1 => 65_000..70_000usize,
    ]
}

/// Chunk sizes: all single bytes, small, or network-sized.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1usize]),
        prop::collection::vec(1..16usize, 1..8),
        prop::collection::vec(1..5000usize, 1..8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the page layout and chunking, we read exactly what the reference reader reads.
    #[test]
    fn packets_match_reference_reader_in_any_chunking(
        serial in any::<u32>(),
        groups in prop::collection::vec(prop::collection::vec(packet_len(), 1..100), 1..5),
        sizes in chunking(),
    ) {
        let file = write_ogg(serial, &specs_from_groups(&groups));
        let reference = reference_packets(&file);
        let mut d = Demuxer::new();
        let (ours, errors) = demux_chunked(&mut d, &file, &sizes);
        prop_assert!(errors.is_empty(), "errors: {errors:?}");
        d.finish().unwrap();
        assert_same_as_reference(&ours, &reference);
        let stats = d.stats();
        prop_assert_eq!(stats.pages as usize, page_spans(&file).len());
        prop_assert_eq!(stats.packets as usize, reference.len());
        prop_assert_eq!(stats.skipped_bytes, 0);
        prop_assert!(stats.eos_seen);
        prop_assert_eq!(d.buffered_bytes(), 0, "nothing held after a complete stream");
    }
}

/// Feeds a file one byte at a time and records after which byte each packet appeared.
fn emission_points(file: &[u8]) -> Vec<(usize, Packet)> {
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    for (i, b) in file.iter().enumerate() {
        d.push(std::slice::from_ref(b), &mut |p| out.push((i, p)))
            .unwrap();
    }
    d.finish().unwrap();
    out
}

#[test]
fn packet_is_emitted_with_its_last_byte_before_the_page_completes() {
    // One page: 10 bytes, empty, 300 bytes (two lacing values), empty, 20 bytes.
    let lens = [10usize, 0, 300, 0, 20];
    let groups = vec![lens.to_vec()];
    let file = write_ogg(7, &specs_from_groups(&groups));
    assert_eq!(page_spans(&file).len(), 1);
    let header = 27 + file[26] as usize;
    assert_eq!(header, 27 + 6);

    let got = emission_points(&file);
    let mut end = header; // offset just past the last body byte seen so far
    for (k, (at, p)) in got.iter().enumerate() {
        end += lens[k];
        // Empty packets complete with the previous byte (the segment table's last, at most).
        assert_eq!(
            *at,
            end - 1,
            "packet {k} emitted after byte {at}, expected {}",
            end - 1
        );
        assert_eq!(p.data.len(), lens[k]);
        assert_eq!(p.last_on_page, k + 1 == lens.len());
        assert!(p.bos && p.eos);
    }
    assert_eq!(got.len(), lens.len());
    // All but the last packet came out before the page (and its CRC) was complete.
    assert!(got[..lens.len() - 1]
        .iter()
        .all(|(at, _)| *at < file.len() - 1));
}

#[test]
fn spanning_packet_is_emitted_mid_page_on_the_page_it_ends_on() {
    // 70 000 bytes: 65 025 on page 0 (255 full segments), the rest on page 1, then 2 packets.
    let groups = vec![vec![70_000usize, 5, 6]];
    let file = write_ogg(1, &specs_from_groups(&groups));
    let spans = page_spans(&file);
    assert_eq!(spans.len(), 2);
    let page1_header = 27 + file[spans[1].start + 26] as usize;

    let got = emission_points(&file);
    assert_eq!(got.len(), 3);
    let (at, big) = &got[0];
    assert_eq!(big.data, content(0, 70_000));
    assert_eq!(
        *at,
        spans[1].start + page1_header + (70_000 - 255 * 255) - 1
    );
    assert_eq!(big.page_sequence, 1);
    assert!(!big.last_on_page);
    assert!(!big.bos, "flags are those of the page the packet ends on");
    assert!(*at < spans[1].end - 1);
}

/// A 5-page stream (4 packets per page) for the corruption tests.
fn five_pages() -> (Vec<u8>, Vec<Range<usize>>) {
    let groups: Vec<Vec<usize>> = (0..5).map(|g| vec![100 + g, 0, 37, 250]).collect();
    let file = write_ogg(0x5eed, &specs_from_groups(&groups));
    let spans = page_spans(&file);
    assert_eq!(spans.len(), 5);
    (file, spans)
}

#[test]
fn corrupted_page_is_reported_by_sequence_and_offset() {
    let (mut file, spans) = five_pages();
    file[spans[3].start + 40] ^= 0x10; // a body byte of page 3
    let (packets, result) = demux_all(&file);
    let err = result.unwrap_err();
    match &err {
        OggError::Crc {
            page_sequence,
            offset,
            stored,
            computed,
        } => {
            assert_eq!(*page_sequence, 3);
            assert_eq!(*offset, spans[3].start as u64);
            assert_ne!(stored, computed);
        }
        other => panic!("expected a CRC error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "Ogg page 3 at byte {}: CRC mismatch",
            spans[3].start
        )),
        "{msg}"
    );
    // Pages 0..2 and page 3's packets came out before the mismatch was known.
    assert_eq!(packets.len(), 16);
}

#[test]
fn a_stream_whose_only_page_is_corrupt_says_so_at_the_end() {
    let mut file = write_ogg(1, &specs_from_groups(&[vec![10, 20]]));
    let n = file.len();
    file[n - 1] ^= 1;
    let mut d = Demuxer::new();
    let pushed = d.push(&file, &mut |_| {});
    assert!(
        matches!(
            pushed,
            Err(OggError::Crc {
                page_sequence: 0,
                offset: 0,
                ..
            })
        ),
        "{pushed:?}"
    );
    let err = d.finish().unwrap_err();
    assert_eq!(
        err,
        OggError::NoIntactPage {
            bytes: n as u64,
            crc_errors: 1
        }
    );
    assert!(
        err.to_string().contains("1 page(s) failed the CRC check"),
        "{err}"
    );
}

#[test]
fn after_a_crc_error_the_next_push_resynchronises() {
    let (mut file, spans) = five_pages();
    file[spans[1].start + 30] ^= 0xff; // a lacing value: the page layout itself is wrong
    let mut d = Demuxer::new();
    let mut packets = Vec::new();
    let first = d.push(&file[..spans[2].end], &mut |p| packets.push(p));
    assert!(
        matches!(
            first,
            Err(OggError::Crc {
                page_sequence: 1,
                ..
            })
        ),
        "{first:?}"
    );
    d.push(&file[spans[2].end..], &mut |p| packets.push(p))
        .unwrap();
    d.finish().unwrap();
    let last_two: Vec<u32> = packets
        .iter()
        .rev()
        .take(8)
        .map(|p| p.page_sequence)
        .collect();
    assert_eq!(last_two, vec![4, 4, 4, 4, 3, 3, 3, 3]);
    assert_eq!(d.stats().crc_errors, 1);
}

/// Deterministic pseudo-random junk without any "OggS" in it.
fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    for i in 0..len.saturating_sub(3) {
        if &v[i..i + 4] == b"OggS" {
            v[i] = b'o';
        }
    }
    v
}

#[test]
fn junk_before_and_between_pages_is_skipped_and_counted() {
    let (file, spans) = five_pages();
    let reference = reference_packets(&file);
    let mut noisy = b"<html>502 Bad Gateway</html>\r\n".to_vec();
    let mut junk_total = noisy.len();
    for (k, span) in spans.iter().enumerate() {
        noisy.extend_from_slice(&file[span.clone()]);
        if k == 1 || k == 3 {
            // Fake captures too: a header with version 1 must be rejected, not trusted.
            let mut j = junk(1000 + k, k as u64 + 3);
            j.extend_from_slice(b"OggS\x01Ogg");
            junk_total += j.len();
            noisy.extend_from_slice(&j);
        }
    }
    for sizes in [vec![1usize], vec![7, 300], vec![4096]] {
        let mut d = Demuxer::new();
        let (ours, errors) = demux_chunked(&mut d, &noisy, &sizes);
        assert!(errors.is_empty(), "{errors:?}");
        d.finish().unwrap();
        assert_same_as_reference(&ours, &reference);
        assert_eq!(d.stats().skipped_bytes, junk_total as u64);
        assert_eq!(d.stats().sequence_gaps, 0);
    }
}

#[test]
fn junk_replacing_a_page_loses_only_that_page() {
    let (file, spans) = five_pages();
    let mut damaged = file.clone();
    damaged.splice(spans[2].clone(), junk(spans[2].len(), 99));
    let (packets, result) = demux_all(&damaged);
    result.unwrap();
    let pages: Vec<u32> = packets.iter().map(|p| p.page_sequence).collect();
    assert_eq!(pages, [0, 0, 0, 0, 1, 1, 1, 1, 3, 3, 3, 3, 4, 4, 4, 4]);
    let mut d = Demuxer::new();
    d.push(&damaged, &mut |_| {}).unwrap();
    assert_eq!(d.stats().sequence_gaps, 1);
    assert_eq!(d.stats().skipped_bytes, spans[2].len() as u64);
}

#[test]
fn packets_cut_by_a_lost_page_are_dropped_and_counted() {
    // Page 0: a 65 025-byte fragment; page 1: its end + 3 packets; page 2: 2 packets.
    let groups = vec![vec![70_000usize, 1, 2, 3], vec![4, 5]];
    let file = write_ogg(3, &specs_from_groups(&groups));
    let spans = page_spans(&file);
    assert_eq!(spans.len(), 3);

    // Page 1 lost: the pending packet can never end, page 2 does not continue it.
    let mut without_1 = file[spans[0].clone()].to_vec();
    without_1.extend_from_slice(&file[spans[2].clone()]);
    let mut d = Demuxer::new();
    let mut packets = Vec::new();
    d.push(&without_1, &mut |p| packets.push(p.data.len()))
        .unwrap();
    d.finish().unwrap();
    assert_eq!(packets, [4, 5]);
    assert_eq!(d.stats().dropped_packets, 1);
    assert_eq!(d.stats().sequence_gaps, 1);

    // Page 0 lost: page 1 starts with the end of a packet we never saw.
    let mut d = Demuxer::new();
    let mut packets = Vec::new();
    d.push(&file[spans[1].start..], &mut |p| packets.push(p.data.len()))
        .unwrap();
    d.finish().unwrap();
    assert_eq!(packets, [1, 2, 3, 4, 5]);
    assert_eq!(d.stats().orphaned_fragments, 1);
}

#[test]
fn only_junk_is_a_clear_error_saying_what_it_was() {
    let html = b"<html><head><title>502 Bad Gateway</title></head></html>";
    let (packets, result) = demux_all(html);
    assert!(packets.is_empty());
    let msg = result.unwrap_err().to_string();
    assert!(msg.contains("not an Ogg stream"), "{msg}");
    assert!(msg.contains("starts with '<html>"), "{msg}");

    let json = br#"{"error": {"message": "The server is overloaded", "type": "server_error"}}"#;
    let err = demux_all(json).1.unwrap_err();
    assert!(
        matches!(&err, OggError::NotOgg { bytes, .. } if *bytes == json.len() as u64),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("JSON"), "{msg}");
    assert!(msg.contains("\"error\""), "{msg}");

    assert_eq!(demux_all(b"").1.unwrap_err(), OggError::Empty);
}

#[test]
fn junk_after_the_last_page_is_reported() {
    let (mut file, _) = five_pages();
    file.extend_from_slice(b"garbage after the end");
    let (packets, result) = demux_all(&file);
    assert_eq!(packets.len(), 20, "all audio was still delivered");
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            OggError::TrailingJunk {
                bytes: 21,
                last_page: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_streams_are_errors_from_finish() {
    let (file, spans) = five_pages();
    // Inside page 2's body.
    let (_, r) = demux_all(&file[..spans[2].start + 50]);
    let err = r.unwrap_err();
    assert_eq!(
        err,
        OggError::TruncatedPage {
            page_sequence: 2,
            offset: spans[2].start as u64,
            missing: spans[2].len() - 50,
        }
    );
    assert!(err.to_string().contains("inside page 2"), "{err}");
    // Inside page 3's fixed header.
    let (_, r) = demux_all(&file[..spans[3].start + 10]);
    assert_eq!(
        r.unwrap_err(),
        OggError::TruncatedHeader {
            offset: spans[3].start as u64,
            have: 10
        }
    );
    // At a page boundary, but the last page says its packet continues.
    let big = write_ogg(9, &specs_from_groups(&[vec![70_000usize]]));
    let spans = page_spans(&big);
    let (packets, r) = demux_all(&big[..spans[0].end]);
    assert!(packets.is_empty());
    assert_eq!(
        r.unwrap_err(),
        OggError::UnfinishedPacket {
            page_sequence: 0,
            offset: 0,
            bytes: 255 * 255
        }
    );
}

#[test]
fn memory_stays_bounded_on_a_flood_of_junk() {
    let mut d = Demuxer::new();
    let mut chunk = junk(64 * 1024, 1);
    // Plenty of near-misses in every chunk: bare captures, bad versions, impossible flags.
    for (i, fake) in [
        &b"OggS\x01"[..],
        b"OggS\x00\x80",
        b"OggS\x00\x03",
        b"Ogg",
        b"O",
    ]
    .iter()
    .enumerate()
    {
        let at = 1000 * (i + 1);
        chunk[at..at + fake.len()].copy_from_slice(fake);
    }
    let chunks = 256; // 16 MiB
    for _ in 0..chunks {
        d.push(&chunk, &mut |p| panic!("packet from junk: {p:?}"))
            .unwrap();
        assert!(d.buffered_bytes() <= 282, "{}", d.buffered_bytes());
    }
    assert_eq!(d.stats().skipped_bytes, (chunk.len() * chunks) as u64);
    assert!(matches!(d.finish(), Err(OggError::NotOgg { .. })));
}

#[test]
fn memory_stays_bounded_on_a_never_ending_packet() {
    // Not a multiple of a page's worth, so over-allocation past the limit would show.
    const MAX: usize = 1_000_000;
    // A 4 MiB packet (65 pages of continuation), then a normal packet.
    let file = write_ogg(5, &specs_from_groups(&[vec![4 << 20, 17]]));
    let mut d = Demuxer::with_max_packet_bytes(MAX);
    let mut packets = Vec::new();
    let mut errors = Vec::new();
    for chunk in file.chunks(4096) {
        if let Err(e) = d.push(chunk, &mut |p| packets.push(p)) {
            errors.push(e);
        }
        assert!(d.buffered_bytes() <= MAX + 282, "{}", d.buffered_bytes());
    }
    d.finish().unwrap();
    // The limit is crossed on page 15 (16 full pages hold 1 040 400 bytes).
    let spans = page_spans(&file);
    assert_eq!(
        errors,
        [OggError::PacketTooLarge {
            page_sequence: 15,
            offset: spans[15].start as u64,
            size: 16 * 255 * 255,
            max: MAX
        }]
    );
    assert!(errors[0].to_string().starts_with("Ogg page 15 at byte"));
    // The rest of the huge packet was skipped as an orphan; the next packet survives.
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].data, content(1, 17));
    assert_eq!(d.stats().orphaned_fragments, 1);
    assert_eq!(d.stats().dropped_packets, 1);
}
