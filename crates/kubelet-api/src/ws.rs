//! RFC 6455 websockets, just what the streaming protocols need: the server handshake
//! (accept key, subprotocol choice), reading masked client frames (fragments joined, control
//! frames answered by the caller) and writing unmasked server frames. The client side
//! (masked writes) is here too, for tests and tools that talk to this server.

use base64::Engine;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A message larger than this is refused: stdin chunks and SPDY frames are far smaller.
pub const MAX_MESSAGE: usize = 32 << 20;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether a request asks for a websocket upgrade.
pub fn is_upgrade(headers: &hyper::HeaderMap) -> bool {
    let has = |name: hyper::header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    has(hyper::header::CONNECTION, "upgrade") && has(hyper::header::UPGRADE, "websocket")
}

/// The subprotocols a client offers, in its order of preference.
pub fn offered_protocols(headers: &hyper::HeaderMap) -> Vec<String> {
    headers
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Binary(Vec<u8>),
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame; its status code when it carried one.
    Close(Option<u16>),
}

/// Reads messages; `masked` says whether incoming frames must be masked (a server reads
/// masked client frames, a client reads unmasked ones).
pub struct Reader<R> {
    r: R,
    expect_masked: bool,
    /// A fragmented message being joined (control frames may come between fragments).
    partial: Option<(u8, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R, expect_masked: bool) -> Self {
        Reader {
            r,
            expect_masked,
            partial: None,
        }
    }

    async fn frame(&mut self) -> io::Result<(bool, u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.r.read_exact(&mut h).await?;
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(proto("reserved bits set without an extension"));
        }
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(proto(if masked {
                "server frames must not be masked"
            } else {
                "client frames must be masked"
            }));
        }
        let len = match h[1] & 0x7f {
            126 => self.r.read_u16().await? as u64,
            127 => self.r.read_u64().await?,
            n => n as u64,
        };
        if len > MAX_MESSAGE as u64 {
            return Err(proto("message too large"));
        }
        let mut key = [0u8; 4];
        if masked {
            self.r.read_exact(&mut key).await?;
        }
        let mut data = vec![0u8; len as usize];
        self.r.read_exact(&mut data).await?;
        if masked {
            for (i, b) in data.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Ok((fin, op, data))
    }

    /// The next message; `None` when the connection ended without a close frame.
    pub async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            let (fin, op, data) = match self.frame().await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.partial.is_none() => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            match op {
                OP_PING => return Ok(Some(Message::Ping(data))),
                OP_PONG => return Ok(Some(Message::Pong(data))),
                OP_CLOSE => {
                    let code = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(proto("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok(Some(if op == OP_TEXT {
                            Message::Text(data)
                        } else {
                            Message::Binary(data)
                        }));
                    }
                    self.partial = Some((op, data));
                }
                OP_CONT => {
                    let Some((first, mut buf)) = self.partial.take() else {
                        return Err(proto("continuation frame without a message"));
                    };
                    if buf.len() + data.len() > MAX_MESSAGE {
                        return Err(proto("message too large"));
                    }
                    buf.extend_from_slice(&data);
                    if fin {
                        return Ok(Some(if first == OP_TEXT {
                            Message::Text(buf)
                        } else {
                            Message::Binary(buf)
                        }));
                    }
                    self.partial = Some((first, buf));
                }
                _ => return Err(proto("unknown opcode")),
            }
        }
    }
}

fn proto(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {msg}"))
}

/// Encodes one frame. A client masks with `mask` (any 4 bytes; they need not be secret
/// here, where no browser shares the connection).
pub fn encode(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | op);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Writes frames; a client (`mask`) masks each one.
pub struct Writer<W> {
    w: W,
    mask: bool,
    counter: u32,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(w: W, mask: bool) -> Self {
        Writer {
            w,
            mask,
            counter: 0x9e37_79b9,
        }
    }

    pub async fn send(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        let mask = self.mask.then(|| {
            self.counter = self
                .counter
                .wrapping_mul(1_664_525)
                .wrapping_add(1_013_904_223);
            self.counter.to_be_bytes()
        });
        self.w.write_all(&encode(op, payload, mask)).await?;
        self.w.flush().await
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.w.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn masked_fragments_round_trip() {
        let mut wire = Vec::new();
        // A fragmented binary message with a ping between its fragments.
        let mut first = encode(OP_BINARY, b"hel", Some([1, 2, 3, 4]));
        first[0] &= 0x7f;
        wire.extend(first);
        wire.extend(encode(OP_PING, b"p", Some([9, 9, 9, 9])));
        wire.extend(encode(OP_CONT, b"lo", Some([5, 6, 7, 8])));
        wire.extend(encode(OP_BINARY, &vec![7u8; 70_000], Some([1, 1, 1, 1])));
        wire.extend(encode(
            OP_CLOSE,
            &close_payload(1000, ""),
            Some([0, 0, 0, 1]),
        ));
        let mut r = Reader::new(&wire[..], true);
        assert_eq!(r.next().await.unwrap(), Some(Message::Ping(b"p".to_vec())));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Message::Binary(b"hello".to_vec()))
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Message::Binary(vec![7u8; 70_000]))
        );
        assert_eq!(r.next().await.unwrap(), Some(Message::Close(Some(1000))));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn unmasked_client_frame_is_refused() {
        let wire = encode(OP_BINARY, b"x", None);
        let mut r = Reader::new(&wire[..], true);
        assert!(r.next().await.is_err());
    }
}
