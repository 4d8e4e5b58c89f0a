//! MCP stdio framing: one message per line, split on the byte `\n` only (never on Unicode line
//! separators), with a trailing `\r` stripped, bytes passed through untouched, and a hard size cap.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a line could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("message exceeds the limit of {limit} bytes")]
    TooLong { limit: usize },
    #[error("reading the server's output failed")]
    Io(#[source] std::io::Error),
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for '\n'.
    scanned: usize,
    max: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader { inner, buf: Vec::with_capacity(64 << 10), scanned: 0, max, eof: false }
    }

    /// The next line without its terminator; `None` at end of stream. A final unterminated line is
    /// returned as a line.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                if line.len() > self.max {
                    return Err(LineError::TooLong { limit: self.max });
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(LineError::TooLong { limit: self.max });
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let len = self.buf.len();
            self.buf.resize(len + (64 << 10), 0);
            let n = self.inner.read(&mut self.buf[len..]).await.map_err(LineError::Io)?;
            self.buf.truncate(len + n);
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next_line().await {
                Ok(Some(l)) => out.push(Ok(l)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_on_newline_byte_only() {
        let input = "{\"a\":\"x\u{2028}y\u{2029}z\"}\r\n{\"b\":1}\n{\"c\":2}".as_bytes();
        let got = lines(input, 1024).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap(), "{\"a\":\"x\u{2028}y\u{2029}z\"}".as_bytes());
        assert_eq!(got[1].as_ref().unwrap(), b"{\"b\":1}");
        assert_eq!(got[2].as_ref().unwrap(), b"{\"c\":2}");
    }

    #[tokio::test]
    async fn enforces_the_cap() {
        let mut input = vec![b'x'; 300_000];
        input.push(b'\n');
        let got = lines(&input, 200_000).await;
        assert_eq!(got, vec![Err("message exceeds the limit of 200000 bytes".to_string())]);
        let got = lines(&input, 300_000).await;
        assert_eq!(got[0].as_ref().unwrap().len(), 300_000);
    }
}
