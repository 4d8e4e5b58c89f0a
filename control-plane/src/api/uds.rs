//! berthd's Unix-socket connections, made acceptable to the HTTP/2 server whatever `:authority` a gRPC
//! client sends. grpc-core (Python, Ruby, C++, PHP) sends the percent-encoded socket path
//! (`tmp%2Fberth.sock`), grpc-java and others the raw path; the `h2` server refuses both as malformed
//! and resets every stream (grpc/grpc#38142, hyperium/h2#442), so a user's first Python call failed with
//! no clue. The authority means nothing on a Unix socket, so each request header block is read as it
//! arrives and an `:authority` that is not a valid host gets its offending bytes replaced, in place and
//! at the same length (so HPACK's table stays in step on both sides), Huffman-coded or not. Everything
//! else passes untouched; a header block this cannot read (one split over CONTINUATION frames) passes as
//! it came.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// The HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest HEADERS frame rewritten (larger ones pass as they are; the server refuses them anyway).
const MAX_HEADERS: usize = 1 << 20;

/// Whether a rewrite has been logged (once per process).
static LOGGED: AtomicBool = AtomicBool::new(false);
/// Whether a request with a header HTTP/2 forbids has been logged (once per process).
static REFUSED: AtomicBool = AtomicBool::new(false);
/// Whether an authority that could not be fixed has been logged (once per process).
static CANNOT: AtomicBool = AtomicBool::new(false);

/// A client's connection on berthd's Unix socket, with its request headers fixed up.
pub struct UdsStream {
    inner: UnixStream,
    /// Bytes read and not yet processed.
    raw: BytesMut,
    /// Bytes processed, to hand to the server.
    ready: BytesMut,
    state: State,
    eof: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Preface {
        left: usize,
    },
    FrameHeader,
    /// A whole HEADERS frame of this many payload bytes is awaited.
    Headers {
        len: usize,
    },
    /// This many bytes of a frame pass untouched.
    Passing {
        left: usize,
    },
}

impl UdsStream {
    pub fn new(inner: UnixStream) -> UdsStream {
        UdsStream {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Preface { left: PREFACE_LEN },
            eof: false,
        }
    }

    /// Moves what can be processed from `raw` to `ready`; `false` when more input is needed.
    fn advance(&mut self) -> bool {
        match self.state {
            State::Preface { left } | State::Passing { left } => {
                let n = left.min(self.raw.len());
                if n == 0 && left > 0 {
                    return false;
                }
                self.ready.extend_from_slice(&self.raw.split_to(n));
                self.state = match (self.state, left - n) {
                    (_, 0) => State::FrameHeader,
                    (State::Preface { .. }, left) => State::Preface { left },
                    (_, left) => State::Passing { left },
                };
                true
            }
            State::FrameHeader => {
                if self.raw.len() < 9 {
                    return false;
                }
                let len = usize::from(self.raw[0]) << 16 | usize::from(self.raw[1]) << 8 | usize::from(self.raw[2]);
                let (kind, flags) = (self.raw[3], self.raw[4]);
                if kind == HEADERS && flags & END_HEADERS != 0 && len <= MAX_HEADERS {
                    self.state = State::Headers { len };
                } else {
                    self.ready.extend_from_slice(&self.raw.split_to(9));
                    self.state = State::Passing { left: len };
                }
                true
            }
            State::Headers { len } => {
                if self.raw.len() < 9 + len {
                    return false;
                }
                let mut frame = self.raw.split_to(9 + len);
                let flags = frame[4];
                fix_headers_frame(flags, &mut frame[9..]);
                self.ready.extend_from_slice(&frame);
                self.state = State::FrameHeader;
                true
            }
        }
    }
}

/// Fixes the `:authority` in one HEADERS frame's payload.
fn fix_headers_frame(flags: u8, payload: &mut [u8]) {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let Some(&pad) = payload.first() else { return };
        start = 1;
        end = match end.checked_sub(usize::from(pad)) {
            Some(e) if e >= start => e,
            _ => return,
        };
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    if start <= end {
        fix_block(&mut payload[start..end]);
    }
}

/// Walks an HPACK header block (RFC 7541 §6) and makes a literal `:authority` value valid. Returns
/// whether it changed anything. A block it cannot read is left alone.
fn fix_block(block: &mut [u8]) -> bool {
    let mut at = 0;
    let mut changed = false;
    while at < block.len() {
        let b = block[at];
        if b & 0x80 != 0 {
            // Indexed field: nothing literal here.
            let Some(next) = integer(block, at, 7) else { return changed };
            at = next.1;
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            let Some(next) = integer(block, at, 5) else { return changed };
            at = next.1;
            continue;
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 };
        let Some((index, next)) = integer(block, at, prefix) else { return changed };
        at = next;
        // Static table entry 1 is `:authority`.
        let mut authority = index == 1;
        if index == 0 {
            let Some((start, end, huffman)) = string(block, at) else { return changed };
            authority = !huffman && &block[start..end] == b":authority";
            if !huffman {
                refused_name(&block[start..end]);
            } else if let Some(name) = super::huffman::decode(&block[start..end]) {
                refused_name(&name);
            }
            at = end;
        }
        let Some((start, end, huffman)) = string(block, at) else { return changed };
        if authority && !huffman {
            changed |= sanitize(&mut block[start..end]);
        } else if authority {
            changed |= sanitize_huffman(&mut block[start..end]);
        }
        at = end;
    }
    changed
}

/// An HPACK integer with an `prefix`-bit prefix at `at`: its value and the offset after it.
fn integer(block: &[u8], at: usize, prefix: u32) -> Option<(u64, usize)> {
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(*block.get(at)?) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0;
    loop {
        let b = *block.get(at)?;
        at += 1;
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, at));
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// An HPACK string at `at`: its bytes' range and whether they are Huffman-coded.
fn string(block: &[u8], at: usize) -> Option<(usize, usize, bool)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= block.len()).then_some((start, end, huffman))
}

/// Makes an authority the HTTP/2 server accepts, keeping its length: a valid one is kept; in any other,
/// every byte but letters, digits, `.` and `-` becomes `-`.
fn sanitize(value: &mut [u8]) -> bool {
    if value.is_empty() || tonic::codegen::http::uri::Authority::try_from(&value[..]).is_ok() {
        return false;
    }
    let sent = String::from_utf8_lossy(value).into_owned();
    for b in value.iter_mut() {
        if !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-') {
            *b = b'-';
        }
    }
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            authority = %sent,
            "a client on the Unix socket sent a socket path as its :authority (grpc-core and grpc-java do); accepted \
             as a host name (logged once)"
        );
    }
    true
}

/// Says (once per process) why the HTTP/2 server is about to reset a request whose header `name` HTTP/2
/// forbids: the server resets such a stream with PROTOCOL_ERROR and logs nothing a user sees.
fn refused_name(name: &[u8]) {
    const CONNECTION_SPECIFIC: [&[u8]; 5] =
        [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"];
    let why = if name.iter().any(u8::is_ascii_uppercase) {
        "an upper-case header name"
    } else if CONNECTION_SPECIFIC.contains(&name) {
        "a connection-specific header, which HTTP/2 forbids"
    } else {
        return;
    };
    if !REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            header = %String::from_utf8_lossy(name),
            "a client on the Unix socket sent {why}; the HTTP/2 server resets its requests as malformed (logged once)"
        );
    }
}

/// [`sanitize`] for a Huffman-coded value: decoded, fixed, coded again and written back when that has the
/// same length (the bytes replaced, `/` `%` `_` and space, code in 6 bits like `-`: a socket path always
/// fits); otherwise left as it came, and said once.
fn sanitize_huffman(coded: &mut [u8]) -> bool {
    let Some(mut value) = super::huffman::decode(coded) else { return false };
    if !sanitize(&mut value) {
        return false;
    }
    let again = super::huffman::encode(&value);
    if again.len() != coded.len() {
        if !CANNOT.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                authority = %String::from_utf8_lossy(&value),
                "a client on the Unix socket sent an :authority that is not a host name and cannot be fixed at its \
                 length; the HTTP/2 server will refuse its requests (logged once)"
            );
        }
        return false;
    }
    coded.copy_from_slice(&again);
    true
}

impl AsyncRead for UdsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.advance() {
                continue;
            }
            if this.eof {
                // A frame cut short: what there is goes on as it came, for the server to judge.
                let rest = this.raw.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = rest;
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
            } else {
                this.raw.extend_from_slice(rb.filled());
            }
        }
    }
}

impl AsyncWrite for UdsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for UdsStream {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header block grpc-python 1.85 sends on `unix:/tmp/ag/d.sock` (captured).
    const GRPC_PYTHON: &[u8] = b"@\x05:path\x06/x.Y/Z@\n:authority\x11tmp%2Fag%2Fd.sock\x83\x86@\x0ccontent-type\x10application/grpc@\x02te\x08trailers";

    #[test]
    fn a_percent_encoded_socket_path_becomes_a_host_of_the_same_length() {
        let mut block = GRPC_PYTHON.to_vec();
        assert!(fix_block(&mut block));
        assert_eq!(block.len(), GRPC_PYTHON.len());
        let text = String::from_utf8_lossy(&block);
        assert!(text.contains("\x11tmp-2Fag-2Fd.sock"), "{text}");
        assert!(text.contains("application/grpc") && text.contains("/x.Y/Z"), "nothing else changes: {text}");
        // A raw path under static index 1 (literal without indexing), as grpc-java sends it.
        let mut java = b"\x01\x0f/run/berth.sock\x86".to_vec();
        assert!(fix_block(&mut java));
        assert_eq!(&java[2..17], b"-run-berth.sock");
    }

    #[test]
    fn a_huffman_coded_socket_path_is_fixed_in_the_same_bytes() {
        use super::super::huffman::{decode, encode};
        // As netty (grpc-java) sends it: literal without indexing, name index 1, Huffman-coded value.
        let path = b"/tmp/.tmpAb_9/run/berthd.sock";
        let coded = encode(path);
        let mut block = vec![0x01, 0x80 | coded.len() as u8];
        block.extend(&coded);
        block.push(0x86);
        assert!(fix_block(&mut block));
        assert_eq!(block.len(), coded.len() + 3);
        assert_eq!(decode(&block[2..2 + coded.len()]).unwrap(), b"-tmp-.tmpAb-9-run-berthd.sock");
        assert_eq!(block[block.len() - 1], 0x86, "the rest is untouched");
        // A character whose code is longer than `-`'s cannot be fixed at the same length: left as it came.
        let odd = encode(b"/run/a@b.sock");
        let mut block = vec![0x01, 0x80 | odd.len() as u8];
        block.extend(&odd);
        let before = block.clone();
        assert!(!fix_block(&mut block));
        assert_eq!(block, before);
    }

    #[test]
    fn valid_authorities_and_unreadable_blocks_are_left_alone() {
        for ok in [&b"@\n:authority\x09localhost"[..], b"\x41\x0flocalhost:50051", b"\x41\x00"] {
            let mut block = ok.to_vec();
            assert!(!fix_block(&mut block), "{ok:?}");
            assert_eq!(block, ok);
        }
        // A Huffman-coded valid host; bad Huffman (EOS inside); truncated; an endless integer: untouched, no panic.
        let coded = super::super::huffman::encode(b"localhost");
        let mut local = vec![0x41, 0x80 | coded.len() as u8];
        local.extend(coded);
        let bad_huffman = b"\x41\x84\xff\xff\xff\xff";
        for odd in [&local[..], bad_huffman, b"@\n:authority\x7f", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"] {
            let mut block = odd.to_vec();
            fix_block(&mut block);
            assert_eq!(block, odd);
        }
    }

    #[tokio::test]
    async fn frames_pass_through_whatever_their_chunking() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut headers = vec![0, 0, GRPC_PYTHON.len() as u8, HEADERS, END_HEADERS, 0, 0, 0, 1];
        headers.extend_from_slice(GRPC_PYTHON);
        let data = [0u8, 0, 3, 0, 1, 0, 0, 0, 1, b'a', b'b', b'c'];
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&data);
        input.extend_from_slice(&headers);
        input.extend_from_slice(&data);
        let (mut client, server) = UnixStream::pair().unwrap();
        let writer = tokio::spawn({
            let input = input.clone();
            async move {
                for chunk in input.chunks(5) {
                    client.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut got = Vec::new();
        UdsStream::new(server).read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), input.len());
        let expected = String::from_utf8_lossy(&input).replace("tmp%2Fag%2Fd.sock", "tmp-2Fag-2Fd.sock");
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
}
