//! A job's content as Telegram messages: HTML parse mode, escaped, split to fit.
//!
//! Telegram takes at most 4096 characters per message, counted after its HTML is parsed, in
//! UTF-16 code units. The parts here are measured before parsing, tags and escapes included,
//! so a part never exceeds the limit however Telegram counts. Each part is escaped on its own,
//! so a split never falls inside an escape (`&amp;`) or a tag.

/// Telegram's limit for one message's text, in UTF-16 code units.
pub const MAX_UNITS: usize = 4096;

/// A subject longer than this (escaped, in UTF-16 units) is not made a bold heading: it stays
/// the first line of the text, so splitting never has to cut through a `<b>` element.
const MAX_HEADING_UNITS: usize = 1024;

/// Escapes what Telegram's HTML parse mode reads as markup: `<`, `>` and `&`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
    out
}

/// What `c` costs once escaped, in UTF-16 code units.
fn units(c: char) -> usize {
    match c {
        '<' | '>' => 4,
        '&' => 5,
        c => c.len_utf16(),
    }
}

fn text_units(text: &str) -> usize {
    text.chars().map(units).sum()
}

/// The messages for a job, in order, as HTML: the subject (if any) as a bold first line, then
/// the text, escaped and split at line breaks, else at spaces, else anywhere between two
/// characters. Empty when there is nothing to say.
pub fn render(subject: Option<&str>, text: &str) -> Vec<String> {
    let subject = subject.map(str::trim).filter(|s| !s.is_empty());
    let heading = subject.map(|s| format!("<b>{}</b>", escape(s)));
    match (subject, heading) {
        (Some(_), Some(heading)) if heading.encode_utf16().count() <= MAX_HEADING_UNITS => {
            let heading_units = heading.encode_utf16().count() + 1;
            let mut parts: Vec<String> = split(text, MAX_UNITS - heading_units, MAX_UNITS)
                .into_iter()
                .map(escape)
                .collect();
            match parts.first_mut() {
                // The first chunk was cut to leave room for the heading.
                Some(first) => *first = format!("{heading}\n{first}"),
                None => parts.push(heading),
            }
            parts
        }
        (Some(subject), _) => split(&format!("{subject}\n{text}"), MAX_UNITS, MAX_UNITS)
            .into_iter()
            .map(escape)
            .collect(),
        _ => split(text, MAX_UNITS, MAX_UNITS)
            .into_iter()
            .map(escape)
            .collect(),
    }
}

/// Plain text in chunks whose escaped form fits: the first within `first` units, the others
/// within `rest`. Chunks that are only whitespace are left out (Telegram refuses them).
fn split(text: &str, first: usize, rest: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut remaining = text;
    let mut budget = first.max(1);
    loop {
        if text_units(remaining) <= budget {
            if !remaining.trim().is_empty() {
                chunks.push(remaining);
            }
            return chunks;
        }
        // The longest prefix that fits.
        let mut used = 0;
        let mut end = 0;
        for (i, c) in remaining.char_indices() {
            used += units(c);
            if used > budget {
                break;
            }
            end = i + c.len_utf8();
        }
        if end == 0 {
            // A budget below one escaped character: cannot happen with Telegram's limit, but a
            // chunk of one character always makes progress.
            end = remaining
                .chars()
                .next()
                .map_or(remaining.len(), char::len_utf8);
        }
        let window = &remaining[..end];
        let last_line = window
            .rfind('\n')
            .filter(|&i| i > 0 && i >= window.len() / 2);
        let last_space = window
            .char_indices()
            .rev()
            .find(|(i, c)| *i > 0 && c.is_whitespace());
        let (chunk, next) = match (last_line, last_space) {
            (Some(i), _) => (&remaining[..i], &remaining[i + 1..]),
            (None, Some((i, c))) => (&remaining[..i], &remaining[i + c.len_utf8()..]),
            (None, None) => (window, &remaining[end..]),
        };
        if !chunk.trim().is_empty() {
            chunks.push(chunk);
        }
        remaining = next;
        budget = rest.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(part: &str) -> bool {
        part.encode_utf16().count() <= MAX_UNITS && part.chars().count() <= MAX_UNITS
    }

    #[test]
    fn markup_characters_are_escaped_and_the_subject_is_a_bold_first_line() {
        assert_eq!(
            render(Some("Order <1> & co"), "a < b && c > d"),
            ["<b>Order &lt;1&gt; &amp; co</b>\na &lt; b &amp;&amp; c &gt; d"]
        );
        assert_eq!(render(None, "plain"), ["plain"]);
        assert_eq!(render(Some("  "), "plain"), ["plain"]);
        assert_eq!(
            render(Some("Only a subject"), ""),
            ["<b>Only a subject</b>"]
        );
        assert!(render(None, " \n ").is_empty());
    }

    #[test]
    fn a_long_text_is_split_at_line_breaks_in_order() {
        let line = "x".repeat(99);
        let text = vec![line.as_str(); 60].join("\n"); // 5,999 characters
        let parts = render(None, &text);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| fits(p)));
        assert!(
            parts
                .iter()
                .all(|p| !p.starts_with('\n') && !p.ends_with('\n'))
        );
        assert_eq!(parts.join("\n"), text, "nothing lost, nothing reordered");
    }

    #[test]
    fn without_line_breaks_the_split_is_at_a_space() {
        let text = "word ".repeat(1_000); // 5,000 characters
        let parts = render(None, &text);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| fits(p) && !p.ends_with("wor")));
        assert_eq!(parts.join(" ").trim(), text.trim());
    }

    #[test]
    fn a_split_never_falls_inside_an_escape() {
        let text = "&".repeat(2_000); // 10,000 units escaped, no spaces
        let parts = render(None, &text);
        assert_eq!(parts.len(), 3);
        for part in &parts {
            assert!(fits(part));
            assert!(
                part.starts_with("&amp;") && part.ends_with("&amp;"),
                "{part:.20}"
            );
            assert_eq!(part.replace("&amp;", ""), "");
        }
        assert_eq!(
            parts
                .iter()
                .map(|p| p.matches("&amp;").count())
                .sum::<usize>(),
            2_000
        );
    }

    #[test]
    fn characters_outside_the_basic_plane_count_twice() {
        let text = "😀".repeat(3_000); // 3,000 chars, 6,000 UTF-16 units
        let parts = render(None, &text);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| fits(p)));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn the_heading_takes_room_from_the_first_part_only() {
        let text = "y".repeat(4_090);
        let parts = render(Some("Subject"), &text);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("<b>Subject</b>\n"));
        assert!(parts.iter().all(|p| fits(p)));
    }

    #[test]
    fn a_huge_subject_is_kept_as_plain_first_line() {
        let subject = "s".repeat(2_000);
        let parts = render(Some(&subject), "body");
        assert_eq!(parts, [format!("{subject}\nbody")]);
    }
}
