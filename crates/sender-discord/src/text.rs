//! What a job looks like as Discord messages: the subject as a bold first line, the text with
//! Discord's markdown escaped, split into messages of at most [`MAX_MESSAGE`] characters.
//!
//! Herald's texts are plain text (the same text goes to SMS and email), so characters that
//! Discord would read as markdown (`*bold*`, `_italic_`, `` `code` ``, `||spoiler||`,
//! `[label](url)`, `> quote`, `# heading`, `- list`) are escaped with a backslash and show as
//! written. Words that are links (`http://`, `https://`) are left alone: Discord does not
//! format inside them, and a backslash would become part of the address. Mentions are not
//! escaped here: the sender turns every mention off with `allowed_mentions` instead, so an
//! `@everyone` in a text shows but pings nobody.

/// Discord's limit for a message's content. Counted here in UTF-16 code units, as Discord's
/// clients count, which is never fewer than characters: a part that fits here fits there.
pub const MAX_MESSAGE: usize = 2000;

/// The messages for a job, in the order they must arrive. Empty when there is nothing to say.
pub fn render(subject: Option<&str>, text: &str) -> Vec<String> {
    let subject = subject.map(str::trim).filter(|s| !s.is_empty());
    let text = escape(text.trim_end());
    let whole = match subject {
        Some(subject) if text.trim().is_empty() => format!("**{}**", escape(subject)),
        Some(subject) => format!("**{}**\n{text}", escape(subject)),
        None => text,
    };
    split(&whole, MAX_MESSAGE)
}

/// Escapes Discord markdown so the text shows as written.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        escape_line(line, &mut out);
    }
    out
}

fn escape_line(line: &str, out: &mut String) {
    // Block syntax only counts at the start of a line (after indentation).
    let body = line.trim_start();
    out.push_str(&line[..line.len() - body.len()]);
    // `>` and `#` are escaped wherever they are (below); a `-` only starts a list here.
    if body.starts_with('-') {
        out.push('\\');
    } else if let Some(digits) = body.find(|c: char| !c.is_ascii_digit())
        && digits > 0
        && body[digits..].starts_with(". ")
    {
        // "1. item" is a numbered list.
        out.push_str(&body[..digits]);
        out.push('\\');
        escape_words(&body[digits..], out);
        return;
    }
    escape_words(body, out);
}

fn escape_words(text: &str, out: &mut String) {
    let mut rest = text;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        if word.starts_with("http://") || word.starts_with("https://") {
            out.push_str(word);
        } else {
            for c in word.chars() {
                if matches!(
                    c,
                    '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']' | '(' | ')' | '<' | '>' | '#'
                ) {
                    out.push('\\');
                }
                out.push(c);
            }
        }
        let space_end = tail
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(tail.len());
        out.push_str(&tail[..space_end]);
        rest = &tail[space_end..];
    }
}

/// Splits `text` into parts of at most `limit` UTF-16 units: at the last line break in the
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
    fn markdown_shows_as_written() {
        assert_eq!(
            escape("a *b* _c_ `d` ||e||"),
            r"a \*b\* \_c\_ \`d\` \|\|e\|\|"
        );
        assert_eq!(escape("[x](y) ~~z~~ 1\\2"), r"\[x\]\(y\) \~\~z\~\~ 1\\2");
        assert_eq!(
            escape("> quote\n# title\n- item\n2. step"),
            "\\> quote\n\\# title\n\\- item\n2\\. step"
        );
        assert_eq!(escape("a - b > c"), r"a - b \> c");
        assert_eq!(escape("10.5 euros"), "10.5 euros");
    }

    #[test]
    fn links_are_left_alone() {
        assert_eq!(
            escape("see https://example.com/a_b*c (or _this_)"),
            r"see https://example.com/a_b*c \(or \_this\_\)"
        );
    }

    #[test]
    fn the_subject_is_a_bold_first_line() {
        assert_eq!(
            render(Some("Order *42*"), "shipped"),
            ["**Order \\*42\\***\nshipped"]
        );
        assert_eq!(render(Some(" "), "shipped"), ["shipped"]);
        assert_eq!(render(Some("Only"), ""), ["**Only**"]);
        assert!(render(None, "  \n ").is_empty());
    }

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
