//! Text a bot wrote (its agent's last words, a file name it chose, an error it made up), made safe to
//! store and to show: control characters are written out as `\u{..}` escapes, so NUL cannot break a
//! PostgreSQL text column, an escape sequence cannot reach an operator's terminal as one, and a newline
//! cannot start a forged line of berthd's log; text is cut, on a character boundary, to a size the
//! caller chooses. [`OneLine`] applies this to every record of berthd's text log.

use std::fmt::Write as _;
use std::io;

/// `text` with each control character but `\n` and `\t` (C0, DEL, C1) escaped, at most `max` bytes
/// (an escape is never cut). Showing it again changes nothing.
pub fn shown(text: &str, max: usize) -> String {
    escaped(text, max, |c| c == '\n' || c == '\t').0
}

/// `text` on one line: every control character escaped, newlines and tabs too (a name in a table, a
/// log record).
pub fn one_line(text: &str) -> String {
    escaped(text, usize::MAX, |_| false).0
}

/// `text` with the control characters `keep` refuses escaped, at most `max` bytes; and how many bytes of
/// `text` that took.
fn escaped(text: &str, max: usize, keep: impl Fn(char) -> bool) -> (String, usize) {
    let mut out = String::with_capacity(text.len().min(max));
    let mut piece = String::new();
    let mut taken = 0;
    for c in text.chars() {
        piece.clear();
        if c.is_control() && !keep(c) {
            let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
        } else {
            piece.push(c);
        }
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
        taken += c.len_utf8();
    }
    (out, taken)
}

/// The longest log record written whole; past it a record is cut and says how much was cut.
const RECORD_MAX: usize = 64 << 10;

/// A log writer that keeps each record on its line: a record (one `write` from the log formatter,
/// ending in a newline) is written with every control character before its newline escaped, so a
/// field that quotes a bot cannot forge a record or send escapes to whoever tails the log; and cut at
/// [`RECORD_MAX`], so one cannot fill the log's disk either.
#[derive(Debug)]
pub struct OneLine<W>(pub W);

impl<W: io::Write> io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        let text = String::from_utf8_lossy(body);
        let (mut line, taken) = escaped(&text, RECORD_MAX, |c| c == '\t');
        if taken < text.len() {
            let _ = write!(line, " [{} more bytes cut]", text.len() - taken);
        }
        line.push_str(end);
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_cut_whole() {
        assert_eq!(shown("a\0b\x1b[2J\tc\nd\u{9b}e\r", 100), "a\\u{0}b\\u{1b}[2J\tc\nd\\u{9b}e\\u{d}");
        assert_eq!(shown("plain é", 100), "plain é");
        // Cut on a character boundary, and never inside an escape.
        assert_eq!(shown("ééé", 5), "éé");
        assert_eq!(shown("ab\0", 5), "ab");
        let once = shown("x\0\x07y", 100);
        assert_eq!(shown(&once, 100), once);
        assert_eq!(one_line("a\nb\tc\x1b"), "a\\u{a}b\\u{9}c\\u{1b}");
    }

    #[test]
    fn a_log_record_stays_on_its_line() {
        use std::io::Write;
        let mut w = OneLine(Vec::new());
        w.write_all(b"INFO bot event reason=first\nFORGED record\x1b]0;t\x07\tend\n").unwrap();
        w.write_all(b"INFO next\n").unwrap();
        let text = String::from_utf8(w.0).unwrap();
        assert_eq!(text, "INFO bot event reason=first\\u{a}FORGED record\\u{1b}]0;t\\u{7}\tend\nINFO next\n");
        let mut w = OneLine(Vec::new());
        w.write_all(format!("WARN stderr={}\n", "x".repeat(1 << 20)).as_bytes()).unwrap();
        let text = String::from_utf8(w.0).unwrap();
        assert!(text.len() < (64 << 10) + 64 && text.ends_with(" more bytes cut]\n"), "{}", &text[text.len() - 40..]);
        assert_eq!(text.lines().count(), 1);
    }
}
