//! What a job looks like as Teams messages: HTML (`textFormat: xml`), the subject as a bold
//! first line, the text escaped (Herald's texts are plain text: `<`, `>` and `&` show as
//! written), line breaks as `<br>`.
//!
//! The plain text is split before it is escaped, so a split never falls inside an entity.
//! Teams takes about 28 KB per message; [`MAX_PART`] characters escape to at most five bytes
//! each (`&amp;` ...) or four (a character outside the basic plane), well below that.

use sender_runtime::text::split;

/// Characters of plain text per message.
pub const MAX_PART: usize = 4000;

/// The messages for a job, as HTML, in the order they must arrive. Empty when there is
/// nothing to say.
pub fn render(subject: Option<&str>, text: &str) -> Vec<String> {
    let subject = subject.map(str::trim).filter(|s| !s.is_empty());
    let mut parts: Vec<String> = split(text.trim_end(), MAX_PART)
        .iter()
        .map(|part| escape(part))
        .collect();
    match (subject, parts.first_mut()) {
        (Some(subject), Some(first)) => {
            *first = format!("<b>{}</b><br>{first}", escape(subject));
        }
        (Some(subject), None) => parts.push(format!("<b>{}</b>", escape(subject))),
        (None, _) => {}
    }
    parts
}

/// Plain text as HTML that shows it as written.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("<br>"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_the_subject_is_a_bold_first_line() {
        assert_eq!(
            render(Some("Order <7>"), "a < b & c\nnext"),
            ["<b>Order &lt;7&gt;</b><br>a &lt; b &amp; c<br>next"]
        );
        assert_eq!(render(None, "hello"), ["hello"]);
        assert_eq!(render(Some("Only"), "  "), ["<b>Only</b>"]);
        assert!(render(None, " \n ").is_empty());
    }

    #[test]
    fn a_long_text_is_split_before_escaping_in_order() {
        let line = "&".repeat(100);
        let text = [line.as_str(); 90].join("\n");
        let parts = render(None, &text);
        assert!(parts.len() >= 3, "{}", parts.len());
        for part in &parts {
            assert!(!part.ends_with('&'), "no entity cut");
            assert!(part.len() <= MAX_PART * 5 + 4 * MAX_PART / 100);
        }
        let back: String = parts.join("<br>");
        assert_eq!(back.matches("&amp;").count(), 9000, "nothing lost");
    }
}
