//! Container logs in the CRI format kubelet reads:
//! `2024-01-02T03:04:05.123456789Z stdout F text` per line, with `P` for the pieces of a line
//! longer than the buffer (and `F` on its last piece).

use chrono::{SecondsFormat, Utc};

/// The longest piece written as one record (containerd's default).
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Splits one stream's bytes into CRI records.
pub(crate) struct LineSplitter {
    stream: &'static str,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: &'static str) -> Self {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Appends the records completed by `data` to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut end = start + nl;
            while end - start > MAX_LINE {
                record(out, self.stream, 'P', &self.buf[start..start + MAX_LINE]);
                start += MAX_LINE;
            }
            let line_end = end;
            end = line_end + 1;
            record(out, self.stream, 'F', &self.buf[start..line_end]);
            start = end;
        }
        while self.buf.len() - start >= MAX_LINE {
            record(out, self.stream, 'P', &self.buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
    }

    /// At end of stream: the last line had no newline; it is still a whole line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            record(out, self.stream, 'F', &self.buf);
            self.buf.clear();
        }
    }
}

fn record(out: &mut Vec<u8>, stream: &str, tag: char, content: &[u8]) {
    let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(out: &[u8]) -> Vec<(String, String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let ts = p.next().unwrap();
                assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
                (
                    p.next().unwrap().to_string(),
                    p.next().unwrap().to_string(),
                    p.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_split_across_reads() {
        let mut s = LineSplitter::new("stdout");
        let mut out = Vec::new();
        s.push(b"hel", &mut out);
        assert!(out.is_empty());
        s.push(b"lo\nwor", &mut out);
        s.push(b"ld\n\nlast", &mut out);
        s.finish(&mut out);
        let r = parse(&out);
        let want = [("F", "hello"), ("F", "world"), ("F", ""), ("F", "last")];
        assert_eq!(r.len(), want.len());
        for (got, (tag, text)) in r.iter().zip(want) {
            assert_eq!(got.0, "stdout");
            assert_eq!(got.1, tag);
            assert_eq!(got.2, text);
        }
    }

    #[test]
    fn long_lines_become_partials() {
        let mut s = LineSplitter::new("stderr");
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        s.push(&long, &mut out);
        s.push(b"\n", &mut out);
        let r = parse(&out);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].1.as_str(), r[0].2.len()), ("P", MAX_LINE));
        assert_eq!((r[1].1.as_str(), r[1].2.len()), ("P", MAX_LINE));
        assert_eq!((r[2].1.as_str(), r[2].2.len()), ("F", 10));
        assert!(r.iter().all(|x| x.0 == "stderr"));
    }
}
