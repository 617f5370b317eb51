//! Text helpers the chat channels share.

/// Splits `text` into parts of at most `limit` UTF-16 units (what Discord and Teams count;
/// never fewer than characters): at the last line break in the
/// second half of the window, else at the last space, else (one very long word) anywhere but
/// between an escaping backslash and what it escapes. The break itself is dropped; nothing
/// else is lost, and parts come in order.
pub fn split(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > limit {
        let window_end = byte_index_at(rest, limit);
        let window = &rest[..window_end];
        let half = byte_index_at(rest, limit / 2);
        let at_line = window.rfind('\n').filter(|&i| i >= half);
        let at_space = || window.rfind(char::is_whitespace).filter(|&i| i > 0);
        let (part, next) = match at_line.or_else(at_space) {
            Some(i) => {
                let width = rest[i..].chars().next().map_or(1, char::len_utf8);
                (&rest[..i], &rest[i + width..])
            }
            None => {
                let mut cut = window_end;
                if ends_with_escape(&rest[..cut]) {
                    cut -= 1; // the backslash is one byte
                }
                (&rest[..cut], &rest[cut..])
            }
        };
        if !part.trim().is_empty() {
            parts.push(part.trim_end().to_owned());
        }
        rest = next;
    }
    if !rest.trim().is_empty() {
        parts.push(rest.trim_end().to_owned());
    }
    parts
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The byte index after as many characters as fit in `units` UTF-16 units.
fn byte_index_at(s: &str, units: usize) -> usize {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += c.len_utf16();
        if used > units {
            return i;
        }
    }
    s.len()
}

/// An odd run of backslashes at the end: the last one escapes the character after the cut.
fn ends_with_escape(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_splits_on_line_breaks_in_order() {
        let line = "x".repeat(1500);
        let text = format!("{line}\n{line}\n{line}");
        let parts = split(&text, 2000);
        assert_eq!(parts, [line.clone(), line.clone(), line]);
    }

    #[test]
    fn a_long_line_splits_between_words() {
        let text = "word ".repeat(500); // 2500 characters
        let parts = split(&text, 2000);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 2000 && !p.ends_with(' ')));
        assert_eq!(parts.join(" ").split_whitespace().count(), 500);
        assert!(parts[0].ends_with("word") && parts[1].starts_with("word"));
    }

    #[test]
    fn a_huge_word_is_cut_but_never_inside_an_escape() {
        let text = format!("{}\\*{}", "a".repeat(1999), "b".repeat(10));
        let parts = split(&text, 2000);
        assert_eq!(parts[0], "a".repeat(1999));
        assert_eq!(parts[1], format!("\\*{}", "b".repeat(10)));
    }

    #[test]
    fn the_limit_counts_utf16_units() {
        let text = "😀".repeat(1500); // 3000 units
        let parts = split(&text, 2000);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].chars().count(), 1000);
        assert_eq!(parts.concat(), text);
    }
}
