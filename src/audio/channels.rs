//! Channel mapping between the decoder's layout and the device's.

/// Maps interleaved `input` with `in_ch` channels to `out_ch` channels, replacing the
/// contents of `out` (its capacity is reused).
///
/// - same count: copied;
/// - mono → N: the sample goes to front left and right (channels 0 and 1), others silent
///   (ALSA orders front L/R first in every standard layout);
/// - N → mono: the average of front left and right;
/// - M → N otherwise: the first `min(M, N)` channels are kept, the rest silent.
///
/// A trailing partial frame is ignored; zero channels on either side yield no output.
pub fn map_channels(input: &[i16], in_ch: u16, out_ch: u16, out: &mut Vec<i16>) {
    out.clear();
    if in_ch == 0 || out_ch == 0 {
        return;
    }
    let (inc, outc) = (usize::from(in_ch), usize::from(out_ch));
    let frames = input.len() / inc;
    out.reserve(frames * outc);
    if inc == outc {
        out.extend_from_slice(&input[..frames * inc]);
        return;
    }
    for frame in input.chunks_exact(inc) {
        if inc == 1 {
            let s = frame[0];
            out.push(s);
            out.push(s);
            out.resize(out.len() + outc - 2, 0);
        } else if outc == 1 {
            // Average in i32: no overflow, and the result always fits back into i16.
            out.push(((i32::from(frame[0]) + i32::from(frame[1])) / 2) as i16);
        } else {
            let keep = inc.min(outc);
            out.extend_from_slice(&frame[..keep]);
            out.resize(out.len() + outc - keep, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::map_channels;

    #[test]
    fn mono_to_stereo_duplicates() {
        let mut out = vec![99; 3];
        map_channels(&[1, -2, 32767], 1, 2, &mut out);
        assert_eq!(out, [1, 1, -2, -2, 32767, 32767]);
    }

    #[test]
    fn mono_to_surround_feeds_front_pair_only() {
        let mut out = Vec::new();
        map_channels(&[5, 6], 1, 6, &mut out);
        assert_eq!(out, [5, 5, 0, 0, 0, 0, 6, 6, 0, 0, 0, 0]);
    }

    #[test]
    fn stereo_to_mono_averages_without_overflow() {
        let mut out = Vec::new();
        map_channels(
            &[100, 300, i16::MAX, i16::MAX, i16::MIN, i16::MIN, -3, 4],
            2,
            1,
            &mut out,
        );
        assert_eq!(out, [200, i16::MAX, i16::MIN, 0]);
    }

    #[test]
    fn surround_to_stereo_keeps_front_pair() {
        let mut out = Vec::new();
        map_channels(&[1, 2, 3, 4, 5, 6, 7, 8], 4, 2, &mut out);
        assert_eq!(out, [1, 2, 5, 6]);
    }

    #[test]
    fn stereo_to_quad_silences_rears() {
        let mut out = Vec::new();
        map_channels(&[1, 2, 3, 4], 2, 4, &mut out);
        assert_eq!(out, [1, 2, 0, 0, 3, 4, 0, 0]);
    }

    #[test]
    fn same_count_copies_and_partial_frame_is_dropped() {
        let mut out = vec![7; 10];
        map_channels(&[1, 2, 3, 4, 5], 2, 2, &mut out);
        assert_eq!(out, [1, 2, 3, 4]);
    }

    #[test]
    fn zero_channels_give_nothing() {
        let mut out = vec![1];
        map_channels(&[1, 2], 0, 2, &mut out);
        assert!(out.is_empty());
        map_channels(&[1, 2], 2, 0, &mut out);
        assert!(out.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        #[test]
        fn mono_up_and_down_is_lossless(input in proptest::collection::vec(proptest::num::i16::ANY, 0..256), n in 2u16..9) {
            let (mut up, mut down) = (Vec::new(), Vec::new());
            map_channels(&input, 1, n, &mut up);
            proptest::prop_assert_eq!(up.len(), input.len() * usize::from(n));
            map_channels(&up, n, 1, &mut down);
            proptest::prop_assert_eq!(down, input);
        }
    }
}
