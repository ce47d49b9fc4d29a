//! SPDY/3.1 as Kubernetes streams use it (moby/spdystream): frames, zlib-compressed header
//! blocks (one stream per direction, primed with the SPDY dictionary, sync-flushed per
//! block), and a session that turns a byte stream into many bidirectional streams. The peer
//! that opens streams (kubectl) uses odd ids; pings are echoed; there is no flow control,
//! as spdystream has none.

use crate::spdy_dict::DICTIONARY;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame accepted from a peer; a data frame that large would be a bug anyway.
const MAX_FRAME: usize = 16 << 20;
/// Largest data frame we send.
const MAX_DATA: usize = 32 * 1024;
/// Largest decompressed header block accepted.
const MAX_HEADERS: usize = 1 << 20;

pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// Header name/value pairs, names lowercase as SPDY requires.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Headers {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SETTINGS and frame types we have no use for (decoded only to stay in sync).
    Ignored,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spdy: {}", msg.into()))
}

/// The receiving side of header compression.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(Decompress::new(true))
    }
}

impl Inflater {
    pub fn inflate(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let (in0, out0) = (self.0.total_in(), out.len());
            match self
                .0
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    pos += (self.0.total_in() - in0) as usize;
                    self.0
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| bad(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(bad(format!("header block: {e}"))),
            }
            pos += (self.0.total_in() - in0) as usize;
            if out.len() > MAX_HEADERS {
                return Err(bad("header block too large"));
            }
            let room_left = out.len() < out.capacity();
            if pos >= input.len() && room_left {
                return Ok(out);
            }
            if self.0.total_in() == in0 && out.len() == out0 && room_left {
                return Err(bad("truncated header block"));
            }
        }
    }
}

/// The sending side of header compression.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(DICTIONARY)
            .expect("zlib-rs accepts a dictionary before the first byte");
        Deflater(c)
    }
}

impl Deflater {
    pub fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let in0 = self.0.total_in();
            let status = self
                .0
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
                .expect("deflate of a memory buffer");
            pos += (self.0.total_in() - in0) as usize;
            if pos >= input.len() && out.len() < out.capacity() || status == Status::StreamEnd {
                return out;
            }
        }
    }
}

fn encode_headers(h: &Headers) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(h.0.len() as u32).to_be_bytes());
    for (n, v) in &h.0 {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.to_ascii_lowercase().as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn decode_headers(b: &[u8]) -> io::Result<Headers> {
    struct Cursor<'a>(&'a [u8], usize);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> io::Result<&[u8]> {
            let s = self
                .0
                .get(self.1..self.1 + n)
                .ok_or_else(|| bad("short header block"))?;
            self.1 += n;
            Ok(s)
        }
        fn u32(&mut self) -> io::Result<u32> {
            Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
        }
        fn string(&mut self) -> io::Result<String> {
            let n = self.u32()? as usize;
            String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("header is not UTF-8"))
        }
    }
    let mut c = Cursor(b, 0);
    let n = c.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let name = c.string()?;
        let value = c.string()?;
        out.push((name, value));
    }
    Ok(Headers(out))
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// Encodes a frame (compressing its headers with the connection's deflater).
pub fn encode(frame: &Frame, z: &mut Deflater) -> Vec<u8> {
    match frame {
        Frame::SynStream { id, flags, headers } => {
            let mut b = Vec::new();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend(z.deflate(&encode_headers(headers)));
            control(SYN_STREAM, *flags, &b)
        }
        Frame::SynReply { id, flags, headers } | Frame::Headers { id, flags, headers } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            let mut b = id.to_be_bytes().to_vec();
            b.extend(z.deflate(&encode_headers(headers)));
            control(kind, *flags, &b)
        }
        Frame::RstStream { id, status } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &b)
        }
        Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => {
            let mut b = last.to_be_bytes().to_vec();
            b.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &b)
        }
        Frame::WindowUpdate { id, delta } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&delta.to_be_bytes());
            control(WINDOW_UPDATE, 0, &b)
        }
        Frame::Data { id, flags, data } => {
            let mut f = Vec::with_capacity(8 + data.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.push(*flags);
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            f
        }
        Frame::Ignored => Vec::new(),
    }
}

/// Reads the next frame; `None` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    z: &mut Inflater,
) -> io::Result<Option<Frame>> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if len > MAX_FRAME {
        return Err(bad("frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let word = |i: usize| -> io::Result<u32> {
        body.get(i..i + 4)
            .map(|v| u32::from_be_bytes(v.try_into().unwrap()))
            .ok_or_else(|| bad("short control frame"))
    };
    if h[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        return Ok(Some(Frame::Data {
            id,
            flags,
            data: Bytes::from(body),
        }));
    }
    let version = u16::from_be_bytes([h[0] & 0x7f, h[1]]);
    if version != VERSION {
        return Err(bad(format!("unsupported version {version}")));
    }
    let kind = u16::from_be_bytes([h[2], h[3]]);
    Ok(Some(match kind {
        SYN_STREAM => {
            if body.len() < 10 {
                return Err(bad("short SYN_STREAM"));
            }
            Frame::SynStream {
                id: word(0)? & 0x7fff_ffff,
                flags,
                headers: decode_headers(&z.inflate(&body[10..])?)?,
            }
        }
        SYN_REPLY | HEADERS => {
            let id = word(0)? & 0x7fff_ffff;
            let headers = decode_headers(&z.inflate(&body[4..])?)?;
            if kind == SYN_REPLY {
                Frame::SynReply { id, flags, headers }
            } else {
                Frame::Headers { id, flags, headers }
            }
        }
        RST_STREAM => Frame::RstStream {
            id: word(0)? & 0x7fff_ffff,
            status: word(4)?,
        },
        PING => Frame::Ping(word(0)?),
        GOAWAY => Frame::GoAway {
            last: word(0)? & 0x7fff_ffff,
            status: word(4).unwrap_or(0),
        },
        WINDOW_UPDATE => Frame::WindowUpdate {
            id: word(0)? & 0x7fff_ffff,
            delta: word(4)? & 0x7fff_ffff,
        },
        SETTINGS => Frame::Ignored,
        _ => Frame::Ignored,
    }))
}

/// What the session's writer puts on the wire.
pub enum Out {
    Frame(Frame),
    /// Answer a websocket ping (ignored on a raw connection).
    WsPong(Vec<u8>),
    /// Finish: flush, close the transport.
    Close,
}

/// Where encoded frames go: a raw upgraded connection, or binary websocket messages (the
/// `SPDY/3.1+portforward.k8s.io` tunnel, where the SPDY bytes ride inside websocket frames).
pub enum Transport {
    Raw(Box<dyn AsyncWrite + Send + Unpin>),
    Websocket(crate::ws::Writer<Box<dyn AsyncWrite + Send + Unpin>>),
}

impl Transport {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Raw(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
            Transport::Websocket(w) => w.send(crate::ws::OP_BINARY, bytes).await,
        }
    }
    async fn pong(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Raw(_) => Ok(()),
            Transport::Websocket(w) => w.send(crate::ws::OP_PONG, data).await,
        }
    }
    async fn close(&mut self) -> io::Result<()> {
        match self {
            Transport::Raw(w) => w.shutdown().await,
            Transport::Websocket(w) => {
                let _ = w
                    .send(crate::ws::OP_CLOSE, &crate::ws::close_payload(1000, ""))
                    .await;
                w.shutdown().await
            }
        }
    }
}

/// The writer task: encodes frames in order (header compression is order-dependent).
pub async fn write_loop(mut rx: mpsc::Receiver<Out>, mut t: Transport) {
    let mut z = Deflater::default();
    while let Some(out) = rx.recv().await {
        let r = match out {
            Out::Frame(f) => t.send(&encode(&f, &mut z)).await,
            Out::WsPong(d) => t.pong(&d).await,
            Out::Close => break,
        };
        if r.is_err() {
            // The peer is gone; readers notice on their side.
            return;
        }
    }
    let _ = t.close().await;
}

/// A stream's sending half.
#[derive(Clone)]
pub struct StreamWriter {
    pub id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(MAX_DATA);
            self.send(Frame::Data {
                id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(&data[..n]),
            })
            .await?;
            data = &data[n..];
        }
        Ok(())
    }
    /// Half-closes: no more data from this side.
    pub async fn close(&self) -> io::Result<()> {
        self.send(Frame::Data {
            id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }
    pub async fn reset(&self, status: u32) -> io::Result<()> {
        self.send(Frame::RstStream {
            id: self.id,
            status,
        })
        .await
    }
    async fn send(&self, f: Frame) -> io::Result<()> {
        self.out
            .send(Out::Frame(f))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "spdy connection closed"))
    }
}

/// One stream: its headers, what the peer sends (ends at its FIN or reset), and our half.
pub struct Stream {
    pub headers: Headers,
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

/// A session's handle: opens streams (client side) and closes the connection.
#[derive(Clone)]
pub struct Session {
    out: mpsc::Sender<Out>,
    streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>,
    next_id: Arc<std::sync::atomic::AtomicU32>,
}

impl Session {
    /// Starts a session over a transport. Streams the peer opens arrive on the returned
    /// receiver (after we have replied to them); `reader` is consumed by a reader task.
    pub fn start<R>(
        reader: R,
        transport: Transport,
        server: bool,
    ) -> (Session, mpsc::Receiver<Stream>)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::channel(64);
        tokio::spawn(write_loop(out_rx, transport));
        let (new_tx, new_rx) = mpsc::channel(16);
        let s = Session {
            out: out_tx,
            streams: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(std::sync::atomic::AtomicU32::new(if server {
                2
            } else {
                1
            })),
        };
        tokio::spawn(s.clone().read_loop(reader, new_tx));
        (s, new_rx)
    }

    pub fn sender(&self) -> mpsc::Sender<Out> {
        self.out.clone()
    }

    /// Opens a stream (as a client does).
    pub async fn open(&self, headers: Headers) -> io::Result<Stream> {
        let id = self
            .next_id
            .fetch_add(2, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(16);
        self.streams.lock().await.insert(id, tx);
        let w = StreamWriter {
            id,
            out: self.out.clone(),
        };
        w.send(Frame::SynStream {
            id,
            flags: 0,
            headers: headers.clone(),
        })
        .await?;
        Ok(Stream { headers, rx, tx: w })
    }

    /// Ends the connection after what was queued is written.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }

    async fn read_loop<R: AsyncRead + Unpin>(self, mut r: R, new: mpsc::Sender<Stream>) {
        let mut z = Inflater::default();
        loop {
            let frame = match read_frame(&mut r, &mut z).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy session ended");
                    break;
                }
            };
            match frame {
                Frame::SynStream { id, flags, headers } => {
                    let (tx, rx) = mpsc::channel(16);
                    let w = StreamWriter {
                        id,
                        out: self.out.clone(),
                    };
                    if w.send(Frame::SynReply {
                        id,
                        flags: 0,
                        headers: Headers::default(),
                    })
                    .await
                    .is_err()
                    {
                        break;
                    }
                    if flags & FLAG_FIN == 0 {
                        self.streams.lock().await.insert(id, tx);
                    }
                    let s = Stream { headers, rx, tx: w };
                    if new.send(s).await.is_err() {
                        break;
                    }
                }
                Frame::Data { id, flags, data } => {
                    let tx = self.streams.lock().await.get(&id).cloned();
                    if let Some(tx) = tx {
                        // A stream whose reader went away just drops what arrives.
                        if !data.is_empty() {
                            let _ = tx.send(data).await;
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        self.streams.lock().await.remove(&id);
                    }
                }
                Frame::SynReply { id, flags, .. } | Frame::Headers { id, flags, .. } => {
                    if flags & FLAG_FIN != 0 {
                        self.streams.lock().await.remove(&id);
                    }
                }
                Frame::RstStream { id, .. } => {
                    self.streams.lock().await.remove(&id);
                }
                Frame::Ping(id) => {
                    let _ = self.out.send(Out::Frame(Frame::Ping(id))).await;
                }
                Frame::GoAway { .. } => break,
                Frame::WindowUpdate { .. } | Frame::Ignored => {}
            }
        }
        // Every stream sees the end of its input.
        self.streams.lock().await.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_share_one_zlib_stream_each_way() {
        let mut d = Deflater::default();
        let mut i = Inflater::default();
        let h1 = Headers::default()
            .with("streamType", "data")
            .with("port", "8080")
            .with("requestID", "0");
        let h2 = Headers::default().with("streamType", "error").with("x", "");
        let b1 = d.deflate(&encode_headers(&h1));
        let b2 = d.deflate(&encode_headers(&h2));
        // The zlib header names the dictionary by its Adler-32.
        assert_eq!(b1[1] & 0x20, 0x20);
        assert_eq!(&b1[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        assert_eq!(
            decode_headers(&i.inflate(&b1).unwrap())
                .unwrap()
                .get("streamtype"),
            Some("data")
        );
        let got = decode_headers(&i.inflate(&b2).unwrap()).unwrap();
        assert_eq!(got.get("STREAMTYPE"), Some("error"));
        assert_eq!(got.get("x"), Some(""));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::SynStream {
                id: 1,
                flags: 0,
                headers: Headers::default().with("streamtype", "error"),
            },
            Frame::SynReply {
                id: 1,
                flags: 0,
                headers: Headers::default(),
            },
            Frame::Data {
                id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"payload"),
            },
            Frame::RstStream { id: 3, status: 5 },
            Frame::Ping(7),
            Frame::WindowUpdate { id: 1, delta: 100 },
            Frame::GoAway { last: 3, status: 0 },
        ];
        let mut z = Deflater::default();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f, &mut z));
        }
        let mut r = &wire[..];
        let mut iz = Inflater::default();
        for f in &frames {
            assert_eq!(read_frame(&mut r, &mut iz).await.unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut r, &mut iz).await.unwrap().is_none());
    }
}
