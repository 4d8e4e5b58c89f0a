//! Text a bot wrote (its agent's last words, an error it chose), made safe to store and to show: control
//! characters other than newline and tab are written out as `\u{..}` escapes, so NUL cannot break a
//! PostgreSQL text column and an escape sequence cannot reach an operator's terminal as one; and the
//! text is cut, on a character boundary, to a size the caller chooses.

use std::fmt::Write;

/// `text` with each control character but `\n` and `\t` (C0, DEL, C1) escaped, at most `max` bytes
/// (an escape is never cut). Showing it again changes nothing.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        if c.is_control() && c != '\n' && c != '\t' {
            let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
        } else {
            piece.push(c);
        }
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn controls_are_escaped_and_text_is_cut_whole() {
        assert_eq!(shown("a\0b\x1b[2J\tc\nd\u{9b}e\r", 100), "a\\u{0}b\\u{1b}[2J\tc\nd\\u{9b}e\\u{d}");
        assert_eq!(shown("plain é", 100), "plain é");
        // Cut on a character boundary, and never inside an escape.
        assert_eq!(shown("ééé", 5), "éé");
        assert_eq!(shown("ab\0", 5), "ab");
        let once = shown("x\0\x07y", 100);
        assert_eq!(shown(&once, 100), once);
    }
}
