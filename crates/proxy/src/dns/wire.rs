//! DNS messages on the wire (RFC 1035, EDNS0 from RFC 6891), by hand: the server needs a
//! small subset (one question, a handful of record types) and must never panic on what a
//! client sends, which is easier to see in two hundred lines than in a resolver library.
//!
//! Parsing takes any bytes and returns a [`Message`] or a [`WireError`]; encoding compresses
//! names (RFC 1035 4.1.4) and, when a size limit is given, drops optional additional
//! records first and otherwise answers with TC=1 and the question alone, so a UDP client
//! retries over TCP (RFC 2181 9, RFC 7766).

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const NOERROR: u16 = 0;
pub const FORMERR: u16 = 1;
pub const SERVFAIL: u16 = 2;
pub const NXDOMAIN: u16 = 3;
pub const NOTIMP: u16 = 4;
pub const REFUSED: u16 = 5;
/// EDNS version not supported (RFC 6891 6.1.3): needs the OPT record's extended bits.
pub const BADVERS: u16 = 16;

pub const HEADER_LEN: usize = 12;
/// The UDP limit for clients that send no OPT record.
pub const MIN_UDP: usize = 512;
/// The most we ever send in one datagram, whatever a client advertises.
pub const MAX_UDP: usize = 4096;
/// What we advertise in our OPT record (the DNS flag day 2020 value: fits any path MTU).
pub const OUR_UDP_SIZE: u16 = 1232;
const MAX_NAME_WIRE: usize = 255;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message ends early")]
    Short,
    #[error("unsupported label type")]
    BadLabel,
    #[error("compression pointer does not point backwards")]
    BadPointer,
    #[error("name longer than 255 octets")]
    NameTooLong,
    #[error("label longer than 63 octets or empty")]
    BadLabelLength,
    #[error("record data does not match its type {0}")]
    BadRdata(u16),
    #[error("OPT record outside the additional section, not at the root, or repeated")]
    BadOpt,
}

/// A domain name as its labels, bytes as sent. Equality ignores ASCII case (RFC 4343); the
/// case a client used is kept so answers echo it.
#[derive(Clone, Default)]
pub struct Name {
    labels: Vec<Vec<u8>>,
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.labels.len() == other.labels.len()
            && self
                .labels
                .iter()
                .zip(&other.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl Eq for Name {}

impl Name {
    pub fn root() -> Name {
        Name::default()
    }

    pub fn from_labels(labels: Vec<Vec<u8>>) -> Result<Name, WireError> {
        let name = Name { labels };
        if name
            .labels
            .iter()
            .any(|l| l.is_empty() || l.len() > MAX_LABEL)
        {
            return Err(WireError::BadLabelLength);
        }
        if name.wire_len() > MAX_NAME_WIRE {
            return Err(WireError::NameTooLong);
        }
        Ok(name)
    }

    /// A name from its dotted text (`web.shop.svc.cluster.local`, trailing dot optional;
    /// `.` or empty is the root). No escapes: cluster names never need them.
    pub fn parse(s: &str) -> Result<Name, WireError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Ok(Name::root());
        }
        Name::from_labels(s.split('.').map(|l| l.as_bytes().to_vec()).collect())
    }

    pub fn labels(&self) -> &[Vec<u8>] {
        &self.labels
    }

    pub fn is_root(&self) -> bool {
        self.labels.is_empty()
    }

    /// Octets on the wire without compression.
    pub fn wire_len(&self) -> usize {
        self.labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1
    }

    /// Whether `suffix` is this name or one of its ancestors.
    pub fn ends_with(&self, suffix: &Name) -> bool {
        let (n, m) = (self.labels.len(), suffix.labels.len());
        n >= m
            && self.labels[n - m..]
                .iter()
                .zip(&suffix.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// `label.self`.
    pub fn child(&self, label: &str) -> Result<Name, WireError> {
        let mut labels = Vec::with_capacity(self.labels.len() + 1);
        labels.push(label.as_bytes().to_vec());
        labels.extend(self.labels.iter().cloned());
        Name::from_labels(labels)
    }

    /// The labels in lower case, or None when one is not printable ASCII (no cluster name
    /// ever is).
    pub fn lower_labels(&self) -> Option<Vec<String>> {
        self.labels
            .iter()
            .map(|l| {
                l.iter()
                    .all(|b| b.is_ascii_graphic())
                    .then(|| String::from_utf8_lossy(l).to_ascii_lowercase())
            })
            .collect()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            return f.write_str(".");
        }
        for l in &self.labels {
            for &b in l {
                match b {
                    b'.' | b'\\' => write!(f, "\\{}", b as char)?,
                    0x21..=0x7e => write!(f, "{}", b as char)?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// A response (true) or a query.
    pub qr: bool,
    pub opcode: u8,
    pub aa: bool,
    pub tc: bool,
    pub rd: bool,
    pub ra: bool,
    pub ad: bool,
    pub cd: bool,
    /// The low four bits of the response code; the rest live in the OPT record.
    pub rcode: u8,
}

impl Header {
    /// The header of any message of at least 12 bytes.
    pub fn peek(buf: &[u8]) -> Option<Header> {
        let b = buf.get(..HEADER_LEN)?;
        let flags = u16::from_be_bytes([b[2], b[3]]);
        Some(Header {
            id: u16::from_be_bytes([b[0], b[1]]),
            qr: flags & 0x8000 != 0,
            opcode: ((flags >> 11) & 0xf) as u8,
            aa: flags & 0x0400 != 0,
            tc: flags & 0x0200 != 0,
            rd: flags & 0x0100 != 0,
            ra: flags & 0x0080 != 0,
            ad: flags & 0x0020 != 0,
            cd: flags & 0x0010 != 0,
            rcode: (flags & 0xf) as u8,
        })
    }

    fn flags(&self) -> u16 {
        (self.qr as u16) << 15
            | ((self.opcode as u16) & 0xf) << 11
            | (self.aa as u16) << 10
            | (self.tc as u16) << 9
            | (self.rd as u16) << 8
            | (self.ra as u16) << 7
            | (self.ad as u16) << 5
            | (self.cd as u16) << 4
            | (self.rcode as u16 & 0xf)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// The EDNS0 pseudo-record (RFC 6891).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub ext_rcode: u8,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The options as sent (we act on none of them).
    pub options: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soa {
    pub mname: Name,
    pub rname: Name,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ns(Name),
    Cname(Name),
    Ptr(Name),
    Soa(Soa),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    Txt(Vec<Vec<u8>>),
    /// Any other type, its data as sent. Names inside may be compressed against the message
    /// they came in, so such data is only safe to re-send in that same message.
    Other {
        rtype: u16,
        data: Vec<u8>,
    },
}

impl RData {
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Ns(_) => TYPE_NS,
            RData::Cname(_) => TYPE_CNAME,
            RData::Ptr(_) => TYPE_PTR,
            RData::Soa(_) => TYPE_SOA,
            RData::Srv { .. } => TYPE_SRV,
            RData::Txt(_) => TYPE_TXT,
            RData::Other { rtype, .. } => *rtype,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub class: u16,
    pub ttl: u32,
    pub data: RData,
}

impl Record {
    pub fn new(name: Name, ttl: u32, data: RData) -> Record {
        Record {
            name,
            class: CLASS_IN,
            ttl,
            data,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// Without the OPT record, which is `edns`.
    pub additional: Vec<Record>,
    pub edns: Option<Edns>,
}

impl Message {
    /// The full response code, extended bits included.
    pub fn rcode(&self) -> u16 {
        let ext = self.edns.as_ref().map_or(0, |e| e.ext_rcode) as u16;
        ext << 4 | self.header.rcode as u16
    }

    /// Sets the response code; the bits above four go to the OPT record (which a reply to
    /// an EDNS query has).
    pub fn set_rcode(&mut self, rcode: u16) {
        self.header.rcode = (rcode & 0xf) as u8;
        if let Some(e) = &mut self.edns {
            e.ext_rcode = (rcode >> 4) as u8;
        }
    }

    /// The skeleton of a reply: same id, opcode, RD and CD, the question echoed, an OPT
    /// record if the query had one (with its DO bit copied, RFC 3225 3).
    pub fn reply_to(query: &Message) -> Message {
        Message {
            header: Header {
                id: query.header.id,
                qr: true,
                opcode: query.header.opcode,
                rd: query.header.rd,
                cd: query.header.cd,
                ra: true,
                ..Header::default()
            },
            questions: query.questions.clone(),
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            edns: query.edns.as_ref().map(|e| Edns {
                udp_size: OUR_UDP_SIZE,
                ext_rcode: 0,
                version: 0,
                dnssec_ok: e.dnssec_ok,
                options: Vec::new(),
            }),
        }
    }

    /// How large a UDP reply to this query may be (RFC 6891 6.2.5: at least 512).
    pub fn max_udp_reply(&self) -> usize {
        self.edns
            .as_ref()
            .map_or(MIN_UDP, |e| (e.udp_size as usize).clamp(MIN_UDP, MAX_UDP))
    }

    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        let header = Header::peek(buf).ok_or(WireError::Short)?;
        let count = |i: usize| u16::from_be_bytes([buf[4 + 2 * i], buf[5 + 2 * i]]);
        let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
        let mut r = Reader {
            buf,
            pos: HEADER_LEN,
            opt: None,
        };
        let mut msg = Message {
            header,
            ..Message::default()
        };
        for _ in 0..qd {
            let name = r.name()?;
            let qtype = r.u16()?;
            let qclass = r.u16()?;
            msg.questions.push(Question {
                name,
                qtype,
                qclass,
            });
        }
        for _ in 0..an {
            msg.answers.push(r.record()?.ok_or(WireError::BadOpt)?);
        }
        for _ in 0..ns {
            msg.authority.push(r.record()?.ok_or(WireError::BadOpt)?);
        }
        for _ in 0..ar {
            match r.record()? {
                Some(rec) => msg.additional.push(rec),
                None if msg.edns.is_none() => msg.edns = r.opt.take(),
                None => return Err(WireError::BadOpt),
            }
        }
        // Bytes after the last record are ignored, as most servers do.
        Ok(msg)
    }

    /// The message with no size limit (TCP: anything up to 65535 octets).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_limited(u16::MAX as usize).0
    }

    /// The message in at most `max` octets: additional records that do not fit are left
    /// out; if the answer or authority sections do not fit, the reply is the header with
    /// TC=1, the question and the OPT record. Returns whether it was truncated so.
    pub fn encode_limited(&self, max: usize) -> (Vec<u8>, bool) {
        let opt_len = self.edns.as_ref().map_or(0, |e| 11 + e.options.len());
        let budget = max.saturating_sub(opt_len);
        let mut e = Encoder::default();
        let mut header = self.header;
        e.header(&header);
        for q in &self.questions {
            e.name(&q.name, true);
            e.u16(q.qtype);
            e.u16(q.qclass);
        }
        let after_questions = e.buf.len();
        for r in self.answers.iter().chain(&self.authority) {
            e.record(r);
        }
        let (mut an, mut ns, mut ar) = (self.answers.len(), self.authority.len(), 0);
        let mut truncated = false;
        if e.buf.len() > budget {
            truncated = true;
            header.tc = true;
            e.rollback(after_questions);
            (an, ns) = (0, 0);
        } else {
            for r in &self.additional {
                let mark = e.buf.len();
                e.record(r);
                if e.buf.len() > budget {
                    e.rollback(mark);
                    break;
                }
                ar += 1;
            }
        }
        if let Some(opt) = &self.edns {
            e.opt(opt);
            ar += 1;
        }
        let counts = [self.questions.len(), an, ns, ar];
        e.buf[..HEADER_LEN].copy_from_slice(&header_bytes(&header, counts));
        (e.buf, truncated)
    }
}

fn header_bytes(h: &Header, counts: [usize; 4]) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[..2].copy_from_slice(&h.id.to_be_bytes());
    b[2..4].copy_from_slice(&h.flags().to_be_bytes());
    for (i, c) in counts.iter().enumerate() {
        b[4 + 2 * i..6 + 2 * i]
            .copy_from_slice(&((*c).min(u16::MAX as usize) as u16).to_be_bytes());
    }
    b
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The OPT record just read by `record` (which returns None for it).
    opt: Option<Edns>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Short)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self) -> Result<Name, WireError> {
        let (name, end) = read_name(self.buf, self.pos)?;
        self.pos = end;
        Ok(name)
    }

    /// One resource record; None for an OPT record, which is left in `self.opt`.
    fn record(&mut self) -> Result<Option<Record>, WireError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        let len = self.u16()? as usize;
        let start = self.pos;
        let data = self.take(len)?;
        let end = self.pos;
        if rtype == TYPE_OPT {
            if !name.is_root() {
                return Err(WireError::BadOpt);
            }
            self.opt = Some(Edns {
                udp_size: class,
                ext_rcode: (ttl >> 24) as u8,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
                options: data.to_vec(),
            });
            return Ok(None);
        }
        let bad = || WireError::BadRdata(rtype);
        // A name inside record data must end exactly where the data does.
        let name_at = |pos: usize| -> Result<(Name, usize), WireError> {
            let (n, e) = read_name(self.buf, pos)?;
            if e > end {
                return Err(bad());
            }
            Ok((n, e))
        };
        let whole_name = |pos: usize| -> Result<Name, WireError> {
            let (n, e) = name_at(pos)?;
            if e != end {
                return Err(bad());
            }
            Ok(n)
        };
        let data = match rtype {
            TYPE_A => RData::A(Ipv4Addr::from(
                <[u8; 4]>::try_from(data).map_err(|_| bad())?,
            )),
            TYPE_AAAA => RData::Aaaa(Ipv6Addr::from(
                <[u8; 16]>::try_from(data).map_err(|_| bad())?,
            )),
            TYPE_NS => RData::Ns(whole_name(start)?),
            TYPE_CNAME => RData::Cname(whole_name(start)?),
            TYPE_PTR => RData::Ptr(whole_name(start)?),
            TYPE_SOA => {
                let (mname, p) = name_at(start)?;
                let (rname, p) = name_at(p)?;
                let nums = self.buf.get(p..end).ok_or_else(bad)?;
                if nums.len() != 20 {
                    return Err(bad());
                }
                let n = |i: usize| {
                    u32::from_be_bytes([
                        nums[4 * i],
                        nums[4 * i + 1],
                        nums[4 * i + 2],
                        nums[4 * i + 3],
                    ])
                };
                RData::Soa(Soa {
                    mname,
                    rname,
                    serial: n(0),
                    refresh: n(1),
                    retry: n(2),
                    expire: n(3),
                    minimum: n(4),
                })
            }
            TYPE_SRV => {
                if data.len() < 7 {
                    return Err(bad());
                }
                RData::Srv {
                    priority: u16::from_be_bytes([data[0], data[1]]),
                    weight: u16::from_be_bytes([data[2], data[3]]),
                    port: u16::from_be_bytes([data[4], data[5]]),
                    target: whole_name(start + 6)?,
                }
            }
            TYPE_TXT => {
                let mut strings = Vec::new();
                let mut rest = data;
                while let Some((&n, tail)) = rest.split_first() {
                    let s = tail.get(..n as usize).ok_or_else(bad)?;
                    strings.push(s.to_vec());
                    rest = &tail[n as usize..];
                }
                RData::Txt(strings)
            }
            _ => RData::Other {
                rtype,
                data: data.to_vec(),
            },
        };
        Ok(Some(Record {
            name,
            class,
            ttl,
            data,
        }))
    }
}

/// Reads the name at `pos`; returns it and where the data after it starts. Every pointer
/// must point before the labels that led to it, so the walk always ends.
fn read_name(buf: &[u8], mut pos: usize) -> Result<(Name, usize), WireError> {
    let mut labels = Vec::new();
    let mut wire_len = 1;
    let mut end = None;
    let mut segment_start = pos;
    loop {
        let len = *buf.get(pos).ok_or(WireError::Short)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                pos += 1;
                break;
            }
            0x00 => {
                let l = len as usize;
                let label = buf.get(pos + 1..pos + 1 + l).ok_or(WireError::Short)?;
                wire_len += 1 + l;
                if wire_len > MAX_NAME_WIRE {
                    return Err(WireError::NameTooLong);
                }
                labels.push(label.to_vec());
                pos += 1 + l;
            }
            0xc0 => {
                let low = *buf.get(pos + 1).ok_or(WireError::Short)?;
                let target = ((len as usize & 0x3f) << 8) | low as usize;
                if target >= segment_start {
                    return Err(WireError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                pos = target;
                segment_start = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
    Ok((Name { labels }, end.unwrap_or(pos)))
}

#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
    /// Where each name suffix already written starts (its exact wire form as the key).
    names: HashMap<Vec<u8>, u16>,
}

impl Encoder {
    fn header(&mut self, h: &Header) {
        self.buf.extend_from_slice(&header_bytes(h, [0; 4]));
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn rollback(&mut self, len: usize) {
        self.buf.truncate(len);
        self.names.retain(|_, off| (*off as usize) < len);
    }

    /// Writes `name`, pointing at an earlier copy of its longest known suffix if `compress`.
    fn name(&mut self, name: &Name, compress: bool) {
        let labels = &name.labels;
        for i in 0..labels.len() {
            let mut key = Vec::new();
            for l in &labels[i..] {
                key.push(l.len() as u8);
                key.extend_from_slice(l);
            }
            if compress {
                if let Some(off) = self.names.get(&key) {
                    self.u16(0xc000 | off);
                    return;
                }
            }
            let here = self.buf.len();
            if here < 0x4000 {
                self.names.entry(key).or_insert(here as u16);
            }
            self.buf.push(labels[i].len() as u8);
            self.buf.extend_from_slice(&labels[i]);
        }
        self.buf.push(0);
    }

    fn record(&mut self, r: &Record) {
        self.name(&r.name, true);
        self.u16(r.data.rtype());
        self.u16(r.class);
        self.u32(r.ttl);
        let len_at = self.buf.len();
        self.u16(0);
        match &r.data {
            RData::A(ip) => self.buf.extend_from_slice(&ip.octets()),
            RData::Aaaa(ip) => self.buf.extend_from_slice(&ip.octets()),
            RData::Ns(n) | RData::Cname(n) | RData::Ptr(n) => self.name(n, true),
            RData::Soa(s) => {
                self.name(&s.mname, true);
                self.name(&s.rname, true);
                for v in [s.serial, s.refresh, s.retry, s.expire, s.minimum] {
                    self.u32(v);
                }
            }
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                self.u16(*priority);
                self.u16(*weight);
                self.u16(*port);
                // RFC 2782: the target is never compressed.
                self.name(target, false);
            }
            RData::Txt(strings) => {
                for s in strings {
                    let s = &s[..s.len().min(255)];
                    self.buf.push(s.len() as u8);
                    self.buf.extend_from_slice(s);
                }
            }
            RData::Other { data, .. } => self.buf.extend_from_slice(data),
        }
        let len = (self.buf.len() - len_at - 2).min(u16::MAX as usize) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    fn opt(&mut self, e: &Edns) {
        self.buf.push(0);
        self.u16(TYPE_OPT);
        self.u16(e.udp_size);
        self.u32(
            (e.ext_rcode as u32) << 24 | (e.version as u32) << 16 | (e.dnssec_ok as u32) << 15,
        );
        self.u16(e.options.len().min(u16::MAX as usize) as u16);
        self.buf.extend_from_slice(&e.options);
    }
}

/// What the server does with the bytes a client sent.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed standard query with one question.
    Query(Message),
    /// A readable header but a query we refuse: reply with this (FORMERR, NOTIMP, BADVERS).
    Reject(Message),
    /// Not even a header, or a response (answering those invites loops): say nothing.
    Drop,
}

/// Sorts a client's bytes into a query to answer, an error to reply with, or nothing.
pub fn classify(buf: &[u8]) -> Incoming {
    let Some(header) = Header::peek(buf) else {
        return Incoming::Drop;
    };
    if header.qr {
        return Incoming::Drop;
    }
    let bare = |rcode: u16| {
        let mut m = Message::reply_to(&Message {
            header,
            ..Message::default()
        });
        m.set_rcode(rcode);
        Incoming::Reject(m)
    };
    let msg = match Message::parse(buf) {
        Ok(m) => m,
        Err(_) => return bare(FORMERR),
    };
    if header.opcode != 0 {
        let mut m = Message::reply_to(&msg);
        m.set_rcode(NOTIMP);
        return Incoming::Reject(m);
    }
    if msg.questions.len() != 1 {
        return bare(FORMERR);
    }
    if msg.edns.as_ref().is_some_and(|e| e.version > 0) {
        let mut m = Message::reply_to(&msg);
        m.set_rcode(BADVERS);
        return Incoming::Reject(m);
    }
    Incoming::Query(msg)
}

/// The header and first question of a message, without decoding its records: enough to
/// match an upstream's reply to the query it answers.
pub fn peek_question(buf: &[u8]) -> Option<(Header, Option<Question>)> {
    let header = Header::peek(buf)?;
    let qd = u16::from_be_bytes([buf[4], buf[5]]);
    if qd == 0 {
        return Some((header, None));
    }
    let mut r = Reader {
        buf,
        pos: HEADER_LEN,
        opt: None,
    };
    let name = r.name().ok()?;
    let qtype = r.u16().ok()?;
    let qclass = r.u16().ok()?;
    Some((
        header,
        Some(Question {
            name,
            qtype,
            qclass,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn sample() -> Message {
        let q = name("web.shop.svc.cluster.local");
        Message {
            header: Header {
                id: 0x1234,
                qr: true,
                aa: true,
                rd: true,
                ra: true,
                ..Header::default()
            },
            questions: vec![Question {
                name: q.clone(),
                qtype: TYPE_SRV,
                qclass: CLASS_IN,
            }],
            answers: vec![
                Record::new(q.clone(), 5, RData::A(Ipv4Addr::new(10, 43, 0, 5))),
                Record::new(q.clone(), 5, RData::Aaaa("fd00::5".parse().unwrap())),
                Record::new(
                    q.clone(),
                    5,
                    RData::Srv {
                        priority: 0,
                        weight: 100,
                        port: 80,
                        target: name("web-0.web.shop.svc.cluster.local"),
                    },
                ),
                Record::new(q.clone(), 5, RData::Cname(name("example.org"))),
                Record::new(
                    name("5.0.43.10.in-addr.arpa"),
                    5,
                    RData::Ptr(name("web.shop.svc.cluster.local")),
                ),
                Record::new(
                    name("dns-version.cluster.local"),
                    5,
                    RData::Txt(vec![b"1.1.0".to_vec()]),
                ),
                Record::new(
                    name("cluster.local"),
                    5,
                    RData::Ns(name("ns.dns.cluster.local")),
                ),
            ],
            authority: vec![Record::new(
                name("cluster.local"),
                5,
                RData::Soa(Soa {
                    mname: name("ns.dns.cluster.local"),
                    rname: name("hostmaster.cluster.local"),
                    serial: 1,
                    refresh: 7200,
                    retry: 1800,
                    expire: 86400,
                    minimum: 5,
                }),
            )],
            additional: vec![Record::new(
                name("web-0.web.shop.svc.cluster.local"),
                5,
                RData::A(Ipv4Addr::new(10, 42, 0, 7)),
            )],
            edns: Some(Edns {
                udp_size: 1232,
                ext_rcode: 0,
                version: 0,
                dnssec_ok: true,
                options: vec![],
            }),
        }
    }

    #[test]
    fn round_trip_with_compression() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Message::parse(&bytes).unwrap(), m);
        // The zone's labels are written twice: in the question, and in the SRV target,
        // which RFC 2782 forbids compressing. Every other mention is a pointer.
        let zone = b"\x07cluster\x05local\x00";
        let copies = bytes.windows(zone.len()).filter(|w| w == zone).count();
        assert_eq!(copies, 2);
    }

    #[test]
    fn rcode_above_15_goes_to_opt() {
        let mut m = sample();
        m.set_rcode(BADVERS);
        let back = Message::parse(&m.encode()).unwrap();
        assert_eq!(back.rcode(), BADVERS);
        assert_eq!(back.header.rcode, 0);
    }

    #[test]
    fn truncation_keeps_question_and_opt() {
        let mut m = sample();
        let q = m.questions[0].name.clone();
        m.answers = (0..200)
            .map(|i| Record::new(q.clone(), 5, RData::A(Ipv4Addr::new(10, 42, 0, i as u8))))
            .collect();
        let (bytes, truncated) = m.encode_limited(512);
        assert!(truncated && bytes.len() <= 512);
        let back = Message::parse(&bytes).unwrap();
        assert!(back.header.tc);
        assert!(back.answers.is_empty());
        assert_eq!(back.questions, m.questions);
        assert!(back.edns.is_some());
        let (full, truncated) = m.encode_limited(65535);
        assert!(!truncated);
        assert_eq!(Message::parse(&full).unwrap().answers.len(), 200);
    }

    #[test]
    fn additional_records_are_dropped_before_truncating() {
        let mut m = sample();
        m.authority.clear();
        let extra = m.additional[0].clone();
        m.additional = vec![extra; 60];
        let (bytes, truncated) = m.encode_limited(512);
        assert!(!truncated && bytes.len() <= 512);
        let back = Message::parse(&bytes).unwrap();
        assert!(!back.header.tc);
        assert_eq!(back.answers.len(), m.answers.len());
        assert!(back.additional.len() < 60);
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_errors() {
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // points at itself
        assert_eq!(Message::parse(&q), Err(WireError::BadPointer));
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 40, 0, 1, 0, 1]); // forwards
        assert_eq!(Message::parse(&q), Err(WireError::BadPointer));
        let mut q = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]); // extended label type
        assert_eq!(Message::parse(&q), Err(WireError::BadLabel));
    }

    #[test]
    fn classify_rejects_cleanly() {
        assert!(matches!(classify(&[1, 2, 3]), Incoming::Drop));
        let mut resp = sample();
        resp.header.qr = true;
        assert!(matches!(classify(&resp.encode()), Incoming::Drop));
        // Two questions: FORMERR with the id kept.
        let mut q = sample();
        q.header = Header {
            id: 77,
            rd: true,
            ..Header::default()
        };
        q.answers.clear();
        q.authority.clear();
        q.additional.clear();
        q.questions.push(q.questions[0].clone());
        match classify(&q.encode()) {
            Incoming::Reject(m) => {
                assert_eq!((m.header.id, m.rcode(), m.header.qr), (77, FORMERR, true))
            }
            other => panic!("{other:?}"),
        }
        // EDNS version 1: BADVERS with an OPT record.
        q.questions.pop();
        q.edns.as_mut().unwrap().version = 1;
        match classify(&q.encode()) {
            Incoming::Reject(m) => {
                let back = Message::parse(&m.encode()).unwrap();
                assert_eq!(back.rcode(), BADVERS);
            }
            other => panic!("{other:?}"),
        }
        // A status query (opcode 2): NOTIMP.
        q.edns.as_mut().unwrap().version = 0;
        q.header.opcode = 2;
        match classify(&q.encode()) {
            Incoming::Reject(m) => assert_eq!(m.rcode(), NOTIMP),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_compare_without_case() {
        assert_eq!(
            name("WeB.Shop.SVC.cluster.local."),
            name("web.shop.svc.cluster.local")
        );
        assert!(name("a.b.cluster.local").ends_with(&name("CLUSTER.local")));
        assert!(!name("local").ends_with(&name("cluster.local")));
        assert!(Name::parse(&"a".repeat(64)).is_err());
        assert!(Name::parse(&["abcdefghi"; 26].join(".")).is_err());
        assert_eq!(name("x.y").to_string(), "x.y.");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::parse(&bytes);
            let _ = classify(&bytes);
            let _ = peek_question(&bytes);
            if let Ok(m) = Message::parse(&bytes) {
                // Whatever parses encodes, and within a limit.
                let (out, _) = m.encode_limited(512);
                prop_assert!(out.len() <= 512 || m.questions.iter().map(|q| q.name.wire_len() + 4).sum::<usize>() + 23 > 512);
            }
        }

        #[test]
        fn damaged_messages_never_panic(cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8)) {
            let mut bytes = sample().encode();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            bytes.truncate(cut);
            let _ = Message::parse(&bytes);
            let _ = classify(&bytes);
            let _ = peek_question(&bytes);
        }

        #[test]
        fn records_round_trip(labels in proptest::collection::vec("[a-zA-Z0-9-]{1,20}", 1..6),
                              ips in proptest::collection::vec(any::<u32>(), 0..40),
                              port in any::<u16>()) {
            let n = Name::from_labels(labels.iter().map(|l| l.as_bytes().to_vec()).collect()).unwrap();
            let mut m = Message::default();
            m.header.id = port;
            m.questions.push(Question { name: n.clone(), qtype: TYPE_A, qclass: CLASS_IN });
            for ip in &ips {
                m.answers.push(Record::new(n.clone(), 5, RData::A(Ipv4Addr::from(*ip))));
            }
            m.answers.push(Record::new(n.clone(), 5, RData::Srv { priority: 1, weight: 2, port, target: n.clone() }));
            let back = Message::parse(&m.encode()).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
