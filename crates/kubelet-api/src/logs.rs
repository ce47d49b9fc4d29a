//! Container logs as the kubelet serves them: CRI log records (`<RFC3339Nano> <stream>
//! <F|P> <text>`) turned back into the container's plain output, with the kubelet's
//! options: tail (records from the end), since (time), timestamps (each line prefixed with
//! its fixed-width RFC3339Nano time), limitBytes, and follow (new records until the
//! container stops).

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// How often a follower looks for new records while the file does not grow.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    /// Records from the end; `None` for all.
    pub tail_lines: Option<u64>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
    pub previous: bool,
}

/// The query of `GET /containerLogs/...`, with the kubelet's checks.
pub fn parse_options(q: &crate::Query) -> Result<LogOptions, String> {
    let mut o = LogOptions {
        follow: q.flag("follow"),
        timestamps: q.flag("timestamps"),
        previous: q.flag("previous"),
        ..Default::default()
    };
    if let Some(t) = q.get("tailLines") {
        let n: i64 = t
            .parse()
            .map_err(|_| format!("invalid tailLines {t:?}: must be an integer"))?;
        // A negative tail means "all", as kubectl's default of -1.
        o.tail_lines = (n >= 0).then_some(n as u64);
    }
    if let Some(l) = q.get("limitBytes") {
        let n: i64 = l
            .parse()
            .map_err(|_| format!("invalid limitBytes {l:?}: must be an integer"))?;
        if n < 1 {
            return Err("limitBytes: Invalid value: must be greater than 0".into());
        }
        o.limit_bytes = Some(n as u64);
    }
    match (q.get("sinceSeconds"), q.get("sinceTime")) {
        (Some(_), Some(_)) => {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into())
        }
        (Some(s), None) => {
            let n: i64 = s
                .parse()
                .map_err(|_| format!("invalid sinceSeconds {s:?}: must be an integer"))?;
            if n < 1 {
                return Err("sinceSeconds: Invalid value: must be greater than 0".into());
            }
            o.since = Some(Utc::now() - chrono::Duration::seconds(n));
        }
        (None, Some(t)) => {
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?;
            o.since = Some(t.with_timezone(&Utc));
        }
        (None, None) => {}
    }
    Ok(o)
}

/// One parsed CRI record.
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    pub time: DateTime<Utc>,
    pub stream: &'a str,
    pub partial: bool,
    /// The text, with the newline restored for a full record.
    pub text: Vec<u8>,
}

/// Parses one line of a CRI log file (without or with its trailing newline).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tags = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    let time = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // Tags are `:`-separated; the first says full (F) or partial (P).
    let partial = tags.split(|b| *b == b':').next() == Some(b"P");
    let mut text = content.to_vec();
    if !partial {
        text.push(b'\n');
    }
    Some(Record {
        time,
        stream,
        partial,
        text,
    })
}

/// The kubelet's output time format: RFC3339 with exactly nine fractional digits.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Turns records into output: since filter, timestamp prefixes at line starts, byte limit.
struct Writer {
    opts: LogOptions,
    at_line_start: bool,
    written: u64,
}

impl Writer {
    /// The bytes to send for one record; `Err(bytes)` when the byte limit ends the output
    /// with those bytes.
    fn record(&mut self, rec: &Record) -> Result<Vec<u8>, Vec<u8>> {
        if self.opts.since.is_some_and(|s| rec.time < s) {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(rec.text.len() + 32);
        if self.opts.timestamps && self.at_line_start {
            out.extend_from_slice(format_time(&rec.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&rec.text);
        self.at_line_start = rec.text.last().is_none_or(|b| *b == b'\n');
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit - self.written;
            if out.len() as u64 >= left {
                out.truncate(left as usize);
                self.written = limit;
                return Err(out);
            }
        }
        self.written += out.len() as u64;
        Ok(out)
    }
}

/// Byte offset where the last `n` records of the file start.
async fn tail_offset(f: &mut tokio::fs::File, n: u64) -> io::Result<u64> {
    let len = f.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 8192;
    let mut end = len;
    let mut newlines = 0u64;
    // A final newline ends the last record rather than starting a new one.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut buf = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start)).await?;
        f.read_exact(&mut buf).await?;
        for (i, b) in buf.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last && start + i as u64 == len - 1 {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// Streams a log file's output into `tx` as chunks. With `follow`, waits for new records
/// until `stopped` resolves, then sends what is left and ends. Ends early when the receiver
/// goes away.
pub async fn stream(
    path: PathBuf,
    opts: LogOptions,
    mut stopped: Option<BoxFuture<'static, ()>>,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    if let Err(e) = stream_inner(path, opts, &mut stopped, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn stream_inner(
    path: PathBuf,
    opts: LogOptions,
    stopped: &mut Option<BoxFuture<'static, ()>>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let follow = opts.follow && stopped.is_some();
    let file = loop {
        match tokio::fs::File::open(&path).await {
            Ok(f) => break f,
            // A container that has not written yet has no file: nothing to show so far.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !follow || wait_stop(stopped).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    };
    let mut file = file;
    let start = match opts.tail_lines {
        Some(n) => tail_offset(&mut file, n).await?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start)).await?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut w = Writer {
        opts,
        at_line_start: true,
        written: 0,
    };
    let mut line = Vec::new();
    let mut draining = false;
    loop {
        let n = reader.read_until(b'\n', &mut line).await?;
        if n > 0 && line.ends_with(b"\n") {
            if let Some(rec) = parse_record(&line) {
                match w.record(&rec) {
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => {
                        if tx.send(Ok(Bytes::from(out))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(out) => {
                        let _ = tx.send(Ok(Bytes::from(out))).await;
                        return Ok(());
                    }
                }
            }
            line.clear();
            continue;
        }
        // End of what is written so far (a record may be half written: keep it).
        if !follow || draining {
            return Ok(());
        }
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            stop = wait_stop(stopped) => {
                if stop {
                    // Read once more: what the container wrote before it stopped.
                    draining = true;
                }
            }
        }
    }
}

/// Waits one poll period; true when the container has stopped.
async fn wait_stop(stopped: &mut Option<BoxFuture<'static, ()>>) -> bool {
    let Some(fut) = stopped.as_mut() else {
        return true;
    };
    tokio::select! {
        _ = fut => {
            *stopped = None;
            true
        }
        _ = tokio::time::sleep(FOLLOW_POLL) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_records() {
        let r = parse_record(b"2024-01-02T03:04:05.123456789Z stdout F hello world\n").unwrap();
        assert_eq!(r.stream, "stdout");
        assert!(!r.partial);
        assert_eq!(r.text, b"hello world\n");
        assert_eq!(format_time(&r.time), "2024-01-02T03:04:05.123456789Z");
        let p = parse_record(b"2024-01-02T03:04:05Z stderr P part").unwrap();
        assert!(p.partial);
        assert_eq!(p.text, b"part");
        assert_eq!(format_time(&p.time), "2024-01-02T03:04:05.000000000Z");
        let empty = parse_record(b"2024-01-02T03:04:05Z stdout F\n").unwrap();
        assert_eq!(empty.text, b"\n");
        assert!(parse_record(b"garbage\n").is_none());
        assert!(parse_record(b"2024-01-02T03:04:05Z other F x\n").is_none());
    }

    #[test]
    fn timestamps_only_at_line_starts_and_limit_truncates() {
        let mut w = Writer {
            opts: LogOptions {
                timestamps: true,
                limit_bytes: Some(45),
                ..Default::default()
            },
            at_line_start: true,
            written: 0,
        };
        let a = parse_record(b"2024-01-02T03:04:05Z stdout P ab").unwrap();
        let b = parse_record(b"2024-01-02T03:04:06Z stdout F cd").unwrap();
        let c = parse_record(b"2024-01-02T03:04:07Z stdout F efghij").unwrap();
        assert_eq!(w.record(&a).unwrap(), b"2024-01-02T03:04:05.000000000Z ab");
        assert_eq!(w.record(&b).unwrap(), b"cd\n");
        // 33 + 3 = 36 bytes so far; 9 are left of the limit.
        assert_eq!(w.record(&c).unwrap_err(), b"2024-01-0");
    }
}
