//! Text → request segments: validation, splitting at the API's input limit, and a
//! duration estimate that the playout's start policy uses.

use std::time::Duration;

/// Characters per second of speech at speed 1.0. OpenAI's voices speak roughly 13–16
/// characters of English text a second; the lower end makes the estimate long rather than
/// short, so the start policy errs towards a longer prebuffer for slow streams.
const CHARS_PER_SECOND: f64 = 14.0;

/// Why text cannot be spoken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing but whitespace.
    #[error("the text is empty: give at least one non-blank character")]
    Empty,
    /// Longer than `max_text_chars`.
    #[error("the text has {chars} characters; at most {max} are allowed (max_text_chars)")]
    TooLong {
        /// Characters in the text.
        chars: usize,
        /// The configured limit.
        max: usize,
    },
}

/// Checks text against the configured limits before anything is sent.
pub fn validate(text: &str, max_chars: usize) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(TextError::TooLong {
            chars,
            max: max_chars,
        });
    }
    Ok(())
}

/// Expected spoken duration of `text` at `speed` (1.0 = normal).
pub fn estimate_duration(text: &str, speed: f32) -> Duration {
    let chars = text
        .split_whitespace()
        .map(|w| w.chars().count() + 1)
        .sum::<usize>();
    let speed = if speed.is_finite() && speed > 0.0 {
        speed as f64
    } else {
        1.0
    };
    Duration::from_secs_f64(chars as f64 / CHARS_PER_SECOND / speed)
}

/// Splits `text` into segments of at most `max_chars` characters each, cutting at the last
/// sentence end that fits, else the last clause break, else the last space, else (one huge
/// "word") at the limit. Segments are trimmed; none is empty.
pub fn segment(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        // Byte index just past `max_chars` characters (or the whole rest).
        let limit = rest
            .char_indices()
            .nth(max_chars)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        if limit == rest.len() {
            out.push(rest.to_string());
            break;
        }
        let window = &rest[..limit];
        let cut = last_break(window, is_sentence_end)
            .or_else(|| last_break(window, is_clause_end))
            .or_else(|| window.rfind(char::is_whitespace).filter(|&i| i > 0))
            .unwrap_or(limit);
        let (head, tail) = rest.split_at(cut);
        let head = head.trim();
        if !head.is_empty() {
            out.push(head.to_string());
        }
        rest = tail.trim_start();
    }
    out
}

/// Splits the opening of `text` off at the first sentence end (or, in a long first
/// sentence, clause break) after at least `min_chars` characters that leaves text after
/// it; `None` when there is no such break (one short sentence, or one long run-on).
pub fn split_lead(text: &str, min_chars: usize) -> Option<(String, String)> {
    let start = text
        .char_indices()
        .nth(min_chars)
        .map_or(text.len(), |(i, _)| i);
    // A sentence end reads best; a clause break keeps a long first sentence from making
    // the pcm lead (and its bytes) long.
    let sentence = first_break(text, start, is_sentence_end);
    let clause = || first_break(text, start, is_clause_end);
    let cut = match sentence {
        Some(s) if s <= start * 4 => s,
        s => s.into_iter().chain(clause()).min()?,
    };
    let (lead, rest) = text.split_at(cut);
    let (lead, rest) = (lead.trim(), rest.trim());
    (!lead.is_empty() && !rest.is_empty()).then(|| (lead.to_string(), rest.to_string()))
}

/// Byte index just after the first `punct` at or after byte `from` that ends a sentence or
/// clause (followed by whitespace, as in [`last_break`]), or `None`.
fn first_break(text: &str, from: usize, punct: fn(char) -> bool) -> Option<usize> {
    text.char_indices()
        .filter(|&(i, c)| i >= from && punct(c))
        .find_map(|(i, c)| break_end(text, i, c))
}

/// Byte index just after the last `punct` in `window` that is followed by whitespace
/// (so "3.14" or "e.g.x" do not count), or `None`.
fn last_break(window: &str, punct: fn(char) -> bool) -> Option<usize> {
    window
        .char_indices()
        .rev()
        .filter(|&(_, c)| punct(c))
        .find_map(|(i, c)| break_end(window, i, c))
}

/// Where a break at `c` (byte `i`) ends, closing quotes included, when whitespace follows.
fn break_end(text: &str, i: usize, c: char) -> Option<usize> {
    // Closing quotes/brackets belong to the sentence they end.
    let after = &text[i + c.len_utf8()..];
    let closers = after.len()
        - after
            .trim_start_matches(['"', '\'', '”', '’', ')', ']', '»'])
            .len();
    let end = i + c.len_utf8() + closers;
    text[end..].starts_with(char::is_whitespace).then_some(end)
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
}

fn is_clause_end(c: char) -> bool {
    matches!(c, ',' | ';' | ':' | '—' | '–' | '，' | '；' | '：')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_is_the_first_sentence_long_enough() {
        let lead = |t| split_lead(t, 28);
        assert_eq!(
            lead("Hi. Dinner is ready in the kitchen. Please come down now."),
            Some((
                "Hi. Dinner is ready in the kitchen.".to_string(),
                "Please come down now.".to_string()
            ))
        );
        // One sentence with no break after the lead's length: no split.
        assert_eq!(lead("Dinner is ready, in the kitchen downstairs."), None);
        // A clause break will do when no sentence ends.
        assert_eq!(
            lead("Dinner is ready in the kitchen, come down now."),
            Some((
                "Dinner is ready in the kitchen,".to_string(),
                "come down now.".to_string()
            ))
        );
        assert_eq!(lead("Dinner is ready."), None);
        // A long first sentence is cut at a clause instead.
        let long = format!(
            "The bus is at the front door, {} and leaves. Bye.",
            "wait ".repeat(40)
        );
        let (head, rest) = lead(&long).unwrap();
        assert_eq!(head, "The bus is at the front door,");
        assert!(rest.ends_with("leaves. Bye."), "{rest}");
        // A decimal point is no sentence end.
        assert_eq!(
            lead("The temperature outside is 3.5 degrees. Wear a coat."),
            Some((
                "The temperature outside is 3.5 degrees.".to_string(),
                "Wear a coat.".to_string()
            ))
        );
    }

    #[test]
    fn short_text_is_one_segment() {
        assert_eq!(
            segment("  Dinner is ready.  ", 4096),
            vec!["Dinner is ready."]
        );
    }

    #[test]
    fn splits_on_sentence_boundaries_first() {
        let s = segment("One two. Three four, five six. Seven.", 22);
        assert_eq!(s, vec!["One two.", "Three four, five six.", "Seven."]);
    }

    #[test]
    fn falls_back_to_clause_then_word_then_hard_cut() {
        assert_eq!(
            segment("alpha beta, gamma delta epsilon", 16),
            vec!["alpha beta,", "gamma delta", "epsilon"]
        );
        assert_eq!(segment("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn decimal_points_are_not_sentence_ends() {
        let s = segment("Pi is 3.14159 roughly and e is 2.71828 roughly.", 30);
        assert!(s.iter().all(|x| !x.ends_with("3.")), "{s:?}");
    }

    #[test]
    fn segments_respect_limit_in_characters_not_bytes() {
        let text = "Grüße aus Köln. ".repeat(600);
        let segs = segment(&text, 4096);
        assert!(segs.len() > 1);
        for s in &segs {
            assert!(s.chars().count() <= 4096);
            assert!(
                s.ends_with('.'),
                "cut mid-sentence: …{}",
                &s[s.len().saturating_sub(20)..]
            );
        }
        let joined: String = segs.join(" ");
        assert_eq!(
            joined.split_whitespace().count(),
            text.split_whitespace().count()
        );
    }

    /// Text with words, sentence and clause marks, quotes, multi-byte letters and odd
    /// whitespace.
    fn texty() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::collection::vec(
            proptest::prop_oneof![
                "[a-zA-Z0-9]{1,12}",
                "[ÄöüßéÑ漢字🙂]{1,4}",
                proptest::sample::select(vec![
                    ".", "!", "?", "…", "。", ",", ";", ":", "—", "\"", "”", ")", " ", "  ", "\n",
                    "\t", "\u{a0}", "3.14",
                ])
                .prop_map(str::to_string),
            ],
            0..80,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        // Nothing is lost, reordered or cut inside a character, and every segment fits.
        #[test]
        fn segments_fit_and_keep_every_character(text in texty(), max in 1usize..40) {
            let segs = segment(&text, max);
            let visible = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            proptest::prop_assert_eq!(visible(&segs.concat()), visible(&text));
            for s in &segs {
                proptest::prop_assert!(!s.is_empty());
                proptest::prop_assert_eq!(s.trim(), s.as_str());
                proptest::prop_assert!(s.chars().count() <= max, "{:?} > {} chars", s, max);
            }
        }
    }

    #[test]
    fn validation_messages_say_what_is_allowed() {
        assert_eq!(validate(" \n\t", 10), Err(TextError::Empty));
        let e = validate("abcdefghijk", 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the text has 11 characters; at most 10 are allowed (max_text_chars)"
        );
        assert!(validate("hello", 10).is_ok());
    }

    #[test]
    fn duration_estimate_scales_with_length_and_speed() {
        let one = estimate_duration("Dinner is ready.", 1.0);
        assert!(
            one > Duration::from_millis(800) && one < Duration::from_secs(2),
            "{one:?}"
        );
        let fast = estimate_duration("Dinner is ready.", 2.0);
        assert!(fast < one);
    }
}
