//! Crash safety: a child process (this test binary in helper mode) runs concurrent durable
//! writers and prints each write as soon as it is acknowledged; the parent kills it with
//! SIGKILL at a random moment, reopens the store and checks that every acknowledged write
//! is there, at its revision, and that the store is consistent. Repeated on the same store,
//! so later rounds also crash while the store is recovering from the previous crash.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_store::{Compare, EmbeddedOptions, Event, EventKind, Store, TxnOutcome, WatchMessage};
use futures::StreamExt;

const CHILD_ENV: &str = "CORRAL_STORE_CRASH_CHILD";
const ROUNDS: usize = 20;
const WRITERS: usize = 16;

fn child_opts() -> EmbeddedOptions {
    EmbeddedOptions {
        // Keep all history, so that every acknowledged write can be checked at its revision.
        retain_revisions: u64::MAX / 4,
        ..Default::default()
    }
}

/// Helper mode: does nothing unless spawned by `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: usize = std::env::var("CORRAL_STORE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open_embedded(Path::new(&dir), child_opts()).unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{w}/{}", i % 5);
                    let (line, outcome) = if i % 7 == 6 {
                        let o = store.delete(key.as_bytes(), Compare::Any).await.unwrap();
                        (format!("DEL {key} -"), o)
                    } else {
                        let value = format!("r{round}-w{w}-i{i}");
                        let o = store
                            .put(key.as_bytes(), Bytes::from(value.clone()), Compare::Any)
                            .await
                            .unwrap();
                        (format!("PUT {key} {value}"), o)
                    };
                    if let TxnOutcome::Committed { revision, .. } = outcome {
                        // One write call per line, under the lock: lines never interleave.
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {line} {revision}").unwrap();
                        out.flush().unwrap();
                    }
                }
            }));
        }
        // Never reached in practice: the parent kills us long before.
        tokio::time::sleep(Duration::from_secs(30)).await;
        std::process::exit(0);
    });
}

#[derive(Debug, Clone)]
struct Ack {
    put: bool,
    key: String,
    value: String,
    revision: i64,
}

fn parse(line: &str) -> Option<Ack> {
    let mut f = line.strip_prefix("ACK ")?.split(' ');
    let (kind, key, value, rev) = (f.next()?, f.next()?, f.next()?, f.next()?);
    Some(Ack {
        put: kind == "PUT",
        key: key.into(),
        value: value.into(),
        revision: rev.parse().ok()?,
    })
}

/// Tiny deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// All history, by revision, read back through a watch replay.
async fn history(store: &Store) -> HashMap<i64, Event> {
    let current = store.current_revision();
    let mut out = HashMap::new();
    if current <= 1 {
        return out;
    }
    let mut w = store.watch(b"", b"", 1).unwrap();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .unwrap()
    {
        if let WatchMessage::Event(ev) = msg.unwrap() {
            let rev = ev.revision();
            out.insert(rev, ev);
            if rev == current {
                break;
            }
        }
    }
    out
}

async fn check(dir: &Path, acks: &[Ack]) -> (i64, usize) {
    let store = Store::open_embedded(dir, child_opts()).unwrap();
    store.verify().await.unwrap();
    let history = history(&store).await;
    assert_eq!(
        history.len() as i64,
        store.current_revision() - 1,
        "history has gaps"
    );
    let mut latest: HashMap<&str, &Ack> = HashMap::new();
    for a in acks {
        assert!(
            a.revision <= store.current_revision(),
            "ack {a:?} beyond the store's revision"
        );
        // Every acknowledged write is in the history, exactly as acknowledged.
        let ev = history
            .get(&a.revision)
            .unwrap_or_else(|| panic!("acknowledged {a:?} is lost"));
        assert_eq!(String::from_utf8_lossy(&ev.kv.key), a.key, "{a:?}");
        if a.put {
            assert_eq!(ev.kind, EventKind::Put, "{a:?}");
            assert_eq!(String::from_utf8_lossy(&ev.kv.value), a.value, "{a:?}");
        } else {
            assert_eq!(ev.kind, EventKind::Delete, "{a:?}");
        }
        let l = latest.entry(a.key.as_str()).or_insert(a);
        if a.revision > l.revision {
            *l = a;
        }
    }
    // The latest value of each key is its last acknowledged write or a later one.
    for (key, a) in latest {
        match store.get(key.as_bytes()).await.unwrap() {
            Some(kv) => {
                assert!(
                    kv.mod_revision >= a.revision,
                    "{key}: {kv:?} older than {a:?}"
                );
                if kv.mod_revision == a.revision {
                    assert!(
                        a.put && kv.value == a.value.as_bytes(),
                        "{key}: {kv:?} vs {a:?}"
                    );
                }
            }
            None => {
                let deleted_since = history.values().any(|e| {
                    e.kind == EventKind::Delete
                        && e.kv.key == key.as_bytes()
                        && e.revision() >= a.revision
                });
                assert!(deleted_since, "{key} missing but last acknowledged {a:?}");
            }
        }
    }
    let rev = store.current_revision();
    store.close().await;
    (rev, history.len())
}

/// Runs the helper child on `dir`, kills it with SIGKILL after `delay`, and returns the
/// complete lines it printed (a line cut by the kill was not fully reported).
fn run_child(exe: &Path, dir: &Path, round: usize, delay: Duration) -> Vec<String> {
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("CORRAL_STORE_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            if buf.ends_with(b"\n") {
                lines.push(String::from_utf8_lossy(&buf).trim_end().to_string());
            }
            buf.clear();
        }
        lines
    });
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Kills in the first milliseconds, while the store file is being created: the next open
/// must find either no store or a complete one, never a half-written file.
#[test]
fn crash_while_creating_the_store() {
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (i, ms) in [2u64, 5, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let lines = run_child(&exe, dir.path(), i, Duration::from_millis(ms));
        let acks: Vec<Ack> = lines.iter().filter_map(|l| parse(l)).collect();
        rt.block_on(check(dir.path(), &acks));
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acks: Vec<Ack> = Vec::new();
    for round in 0..ROUNDS {
        let delay = Duration::from_millis(10 + rng.below(291));
        let started = Instant::now();
        let lines = run_child(&exe, dir.path(), round, delay);
        let before = acks.len();
        acks.extend(lines.iter().filter_map(|l| parse(l)));
        let (rev, hist) = rt.block_on(check(dir.path(), &acks));
        eprintln!(
            "round {round}: killed after {:?}, {} new acks, store at revision {rev} ({hist} revisions of history)",
            started.elapsed(),
            acks.len() - before
        );
    }
    assert!(
        acks.len() > 100,
        "the child hardly wrote anything: {} acks",
        acks.len()
    );
}
