//! Where slowed playback stretches: pauses and steady parts first. Each block the audio
//! thread is about to push into the stretcher is classified by its energy as a pause, a
//! steady part (a held vowel, a tone) or a change (an onset, a plosive); when slowing is
//! only catching up on a learned plan, changes play at normal speed, because that is where
//! a time-stretcher's repeated pitch periods are heard. When the buffer is about to run out
//! every block is slowed: a gap is worse than a stretched onset.
//!
//! Allocation-free and lock-free: it runs in the audio thread's period loop.

/// What a block of audio is, for stretching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Silence, or far below the recent speech level: stretching it is inaudible.
    Pause,
    /// About as loud as the block before it (within ±3 dB): a held sound stretches cleanly.
    Steady,
    /// Louder or quieter than the block before it by more than 3 dB: an onset or a decay.
    Changing,
}

/// Why the audio thread wants to play slower, from least to most pressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slowing {
    /// Normal speed.
    No,
    /// Earning back what a learned start took on credit: pauses and steady parts only.
    Gentle,
    /// The buffer is short or a stall is under way: every block.
    Urgent,
}

/// Below this mean square (−60 dBFS) a block is a pause whatever came before.
const SILENCE_ENERGY: f32 = 1e-6;
/// A block 20 dB below the recent speech level is a pause.
const PAUSE_BELOW_LEVEL: f32 = 0.01;
/// Within this energy ratio of the previous block (±3 dB) a block is steady.
const STEADY_RATIO: f32 = 2.0;
/// How fast the remembered speech level falls: to a quarter (−6 dB) per second, so a
/// sentence's quieter end is not taken for a pause, and a quieter speaker is learned soon.
const LEVEL_FALL_PER_SEC: f32 = 0.25;

/// Classifies blocks by their energy against the block before and the recent speech level.
#[derive(Debug, Clone)]
pub struct BlockClassifier {
    rate: f32,
    channels: usize,
    previous: f32,
    level: f32,
}

impl BlockClassifier {
    /// A classifier for interleaved i16 audio at `rate` frames per second.
    pub fn new(rate: u32, channels: usize) -> Self {
        BlockClassifier {
            rate: rate.max(1) as f32,
            channels: channels.max(1),
            previous: 0.0,
            level: 0.0,
        }
    }

    /// Forgets the previous block and the speech level (a new utterance).
    pub fn reset(&mut self) {
        self.previous = 0.0;
        self.level = 0.0;
    }

    /// Classifies the next block (`parts` are its interleaved samples, in order; a ring
    /// buffer hands them over in up to two slices).
    pub fn classify(&mut self, parts: &[&[i16]]) -> Block {
        let samples: usize = parts.iter().map(|p| p.len()).sum();
        if samples == 0 {
            return Block::Pause;
        }
        let energy = mean_square(parts, samples);
        let seconds = samples as f32 / self.channels as f32 / self.rate;
        self.level = energy.max(self.level * LEVEL_FALL_PER_SEC.powf(seconds));
        let block = if energy < SILENCE_ENERGY || energy < self.level * PAUSE_BELOW_LEVEL {
            Block::Pause
        } else if energy <= self.previous * STEADY_RATIO && energy * STEADY_RATIO >= self.previous {
            Block::Steady
        } else {
            Block::Changing
        };
        self.previous = energy;
        block
    }
}

/// Mean square of the samples, full scale = 1.0.
fn mean_square(parts: &[&[i16]], samples: usize) -> f32 {
    let sum: f64 = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|&s| {
            let x = f64::from(s) / 32768.0;
            x * x
        })
        .sum();
    (sum / samples as f64) as f32
}

/// The tempo for a block: `min_tempo` where slowing applies to it, else 1.0.
pub fn tempo_for(slowing: Slowing, block: Block, min_tempo: f32) -> f32 {
    match (slowing, block) {
        (Slowing::No, _) | (Slowing::Gentle, Block::Changing) => 1.0,
        (Slowing::Gentle, _) | (Slowing::Urgent, _) => min_tempo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;
    const BLOCK: usize = 960;

    fn sine(amp: f64, frames: usize) -> Vec<i16> {
        (0..frames)
            .map(|n| {
                (amp * 32767.0 * (2.0 * std::f64::consts::PI * 220.0 * n as f64 / 48_000.0).sin())
                    as i16
            })
            .collect()
    }

    fn classify(c: &mut BlockClassifier, x: &[i16]) -> Block {
        c.classify(&[x])
    }

    #[test]
    fn silence_is_a_pause_and_a_held_tone_is_steady() {
        let mut c = BlockClassifier::new(RATE, 1);
        assert_eq!(classify(&mut c, &vec![0; BLOCK]), Block::Pause);
        let tone = sine(0.3, BLOCK);
        assert_eq!(classify(&mut c, &tone), Block::Changing, "the onset");
        for _ in 0..10 {
            assert_eq!(classify(&mut c, &tone), Block::Steady);
        }
    }

    #[test]
    fn a_jump_of_more_than_3_db_either_way_is_a_change() {
        let mut c = BlockClassifier::new(RATE, 1);
        classify(&mut c, &sine(0.2, BLOCK));
        // +6 dB, then −6 dB: both are changes; +2 dB is steady.
        assert_eq!(classify(&mut c, &sine(0.4, BLOCK)), Block::Changing);
        assert_eq!(classify(&mut c, &sine(0.2, BLOCK)), Block::Changing);
        assert_eq!(classify(&mut c, &sine(0.25, BLOCK)), Block::Steady);
    }

    #[test]
    fn quiet_after_speech_is_a_pause_even_when_not_silent() {
        let mut c = BlockClassifier::new(RATE, 1);
        classify(&mut c, &sine(0.5, BLOCK));
        // −26 dB: breath noise between words, above the absolute silence floor.
        let quiet = sine(0.025, BLOCK);
        assert_eq!(classify(&mut c, &quiet), Block::Pause);
        assert_eq!(classify(&mut c, &quiet), Block::Pause);
    }

    #[test]
    fn the_speech_level_is_forgotten_so_a_quieter_speaker_is_not_all_pause() {
        let mut c = BlockClassifier::new(RATE, 1);
        classify(&mut c, &sine(0.8, BLOCK));
        let quiet = sine(0.06, BLOCK); // −22.5 dB
        assert_eq!(classify(&mut c, &quiet), Block::Pause);
        // Two seconds later the level has fallen 12 dB: the same sound is speech now.
        let mut last = Block::Pause;
        for _ in 0..100 {
            last = classify(&mut c, &quiet);
        }
        assert_eq!(last, Block::Steady);
    }

    #[test]
    fn two_slices_are_one_block() {
        let tone = sine(0.3, BLOCK);
        let mut a = BlockClassifier::new(RATE, 2);
        let mut b = BlockClassifier::new(RATE, 2);
        a.classify(&[&tone]);
        b.classify(&[&tone[..100], &tone[100..]]);
        assert_eq!(
            a.classify(&[&tone]),
            b.classify(&[&tone[..333], &tone[333..]])
        );
        assert_eq!(a.level, b.level);
    }

    #[test]
    fn gentle_slowing_leaves_changes_at_normal_speed_urgent_slows_all() {
        for block in [Block::Pause, Block::Steady, Block::Changing] {
            assert_eq!(tempo_for(Slowing::No, block, 0.9), 1.0);
            assert_eq!(tempo_for(Slowing::Urgent, block, 0.9), 0.9);
        }
        assert_eq!(tempo_for(Slowing::Gentle, Block::Pause, 0.9), 0.9);
        assert_eq!(tempo_for(Slowing::Gentle, Block::Steady, 0.9), 0.9);
        assert_eq!(tempo_for(Slowing::Gentle, Block::Changing, 0.9), 1.0);
    }
}
