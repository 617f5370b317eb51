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

use sender_runtime::text::split;

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
}
