//! Benchmark of durable puts through the store API: C concurrent writers put 1 KiB values
//! for N seconds (or N ops), optionally at a fixed total rate and with W watchers on the
//! written prefix, and one JSON line reports throughput and put (and watch delivery)
//! latency percentiles. By default it measures the embedded store; with `--etcd URL` (and
//! `--features etcd`) the same workload runs against etcd through the etcd backend, which
//! is how bench/store.sh compares the two.
//!
//! cargo run --release -p corral-store --example store_bench -- --writers 100 --seconds 10
//! cargo run --release -p corral-store --example store_bench -- --writers 10 --rate 1000 --watchers 1000
//! cargo run --release -p corral-store --features etcd --example store_bench -- --etcd http://127.0.0.1:2379

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_store::{Compare, EmbeddedOptions, Store, WatchMessage};
use futures::StreamExt;

struct Args {
    writers: usize,
    seconds: Option<f64>,
    ops: Option<u64>,
    rate: Option<f64>,
    watchers: usize,
    value_size: usize,
    keys: usize,
    dir: Option<std::path::PathBuf>,
    quick_repair: bool,
    fsync: bool,
    etcd: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: store_bench [--writers C] [--seconds S | --ops N] [--rate OPS_PER_SEC] \
         [--watchers W] [--value-size BYTES] [--keys-per-writer K] [--dir PATH] \
         [--quick-repair] [--no-fsync] [--etcd URL]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        writers: 1,
        seconds: None,
        ops: None,
        rate: None,
        watchers: 0,
        value_size: 1024,
        keys: 1000,
        dir: None,
        quick_repair: false,
        fsync: true,
        etcd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--writers" | "-c" => a.writers = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => a.seconds = Some(val().parse().unwrap_or_else(|_| usage())),
            "--ops" | "-n" => a.ops = Some(val().parse().unwrap_or_else(|_| usage())),
            "--rate" => a.rate = Some(val().parse().unwrap_or_else(|_| usage())),
            "--watchers" => a.watchers = val().parse().unwrap_or_else(|_| usage()),
            "--value-size" => a.value_size = val().parse().unwrap_or_else(|_| usage()),
            "--keys-per-writer" => a.keys = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => a.dir = Some(val().into()),
            "--quick-repair" => a.quick_repair = true,
            // Only to see how much of the time is the disk; not a valid comparison.
            "--no-fsync" => a.fsync = false,
            "--etcd" => a.etcd = Some(val()),
            _ => usage(),
        }
    }
    if a.seconds.is_none() && a.ops.is_none() {
        a.seconds = Some(10.0);
    }
    a.writers = a.writers.max(1);
    a.value_size = a.value_size.max(8); // room for the timestamp watchers read
    a
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Microseconds since `base`, written at the start of each value so that watchers can
/// measure put-to-delivery latency.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A temporary directory (in $TMPDIR, else the current directory rather than /tmp, which
    // may be a tmpfs where fsync costs nothing) unless --dir is given.
    let tmp = match (&args.dir, &args.etcd) {
        (Some(_), _) | (_, Some(_)) => None,
        (None, None) => Some(
            tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| ".".into())).unwrap(),
        ),
    };
    let opening = Instant::now();
    let (store, kind) = match &args.etcd {
        Some(url) => (rt.block_on(connect_etcd(url)), "corral-etcd-backend"),
        None => {
            let dir = match (&args.dir, &tmp) {
                (Some(d), _) => d.clone(),
                (None, Some(t)) => t.path().to_path_buf(),
                (None, None) => unreachable!(),
            };
            let opts = EmbeddedOptions {
                quick_repair: args.quick_repair,
                fsync: args.fsync,
                ..Default::default()
            };
            (Store::open_embedded(&dir, opts).unwrap(), "corral-embedded")
        }
    };
    // Includes crash recovery when the directory was left by a killed process.
    let open_ms = opening.elapsed().as_secs_f64() * 1000.0;
    let base = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let final_rev = Arc::new(AtomicI64::new(0));
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let started = Instant::now();
    let (latencies, watch_latencies) = rt.block_on(async {
        let mut watchers = Vec::new();
        for _ in 0..args.watchers {
            let mut w = store.watch(b"/bench/", b"/bench0", 0).unwrap();
            let final_rev = final_rev.clone();
            watchers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seen = 0;
                loop {
                    let done = final_rev.load(Ordering::SeqCst);
                    if done > 0 && seen >= done {
                        break;
                    }
                    // Idle watchers get a progress mark every second, so this wakes up to
                    // see the end even with nothing left to deliver.
                    let msg = match w.next().await {
                        Some(Ok(m)) => m,
                        _ => break,
                    };
                    match msg {
                        WatchMessage::Event(ev) => {
                            let sent = u64::from_be_bytes(ev.kv.value[..8].try_into().unwrap());
                            lat.push(stamp(base).saturating_sub(sent));
                            seen = ev.revision();
                        }
                        WatchMessage::Progress(r) => seen = seen.max(r),
                    }
                }
                lat
            }));
        }
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let (store, issued, stop) = (store.clone(), issued.clone(), stop.clone());
            let (ops, keys, size) = (args.ops, args.keys.max(1), args.value_size);
            let period = args
                .rate
                .map(|r| Duration::from_secs_f64(args.writers as f64 / r.max(0.001)));
            tasks.push(tokio::spawn(async move {
                let mut ticker = period.map(|p| {
                    let mut t = tokio::time::interval(p);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let mut lat = Vec::new();
                let mut value = vec![b'x'; size];
                let mut i = 0usize;
                loop {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    if ops.is_some_and(|n| issued.fetch_add(1, Ordering::Relaxed) >= n) {
                        break;
                    }
                    let key = format!("/bench/{w}/{}", i % keys);
                    i += 1;
                    let t = Instant::now();
                    value[..8].copy_from_slice(&stamp(base).to_be_bytes());
                    let v = Bytes::copy_from_slice(&value);
                    if let Err(e) = store.put(key.as_bytes(), v, Compare::Any).await {
                        eprintln!("put failed: {e}");
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        final_rev.store(store.current_revision(), Ordering::SeqCst);
        let mut watched = Vec::new();
        for t in watchers {
            watched.extend(t.await.unwrap());
        }
        (all, watched)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut sorted = latencies;
    sorted.sort_unstable();
    let mut watch_sorted = watch_latencies;
    watch_sorted.sort_unstable();
    let stats = store.stats();
    rt.block_on(store.close());
    println!(
        concat!(
            "{{\"store\":\"{}\",\"writers\":{},\"value_bytes\":{},",
            "\"quick_repair\":{},\"fsync\":{},\"ops\":{},\"seconds\":{:.3},",
            "\"ops_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"commits\":{},",
            "\"writes_per_commit\":{:.2},\"open_ms\":{:.1},\"watchers\":{},",
            "\"watch_events\":{},\"watch_p50_ms\":{:.3},\"watch_p99_ms\":{:.3}}}"
        ),
        kind,
        args.writers,
        args.value_size,
        args.quick_repair,
        args.fsync,
        sorted.len(),
        elapsed,
        sorted.len() as f64 / elapsed,
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        stats.commits,
        stats.writes as f64 / stats.commits.max(1) as f64,
        open_ms,
        args.watchers,
        watch_sorted.len(),
        percentile(&watch_sorted, 0.50),
        percentile(&watch_sorted, 0.99),
    );
}

#[cfg(feature = "etcd")]
async fn connect_etcd(url: &str) -> Store {
    // The defaults keep periodic progress marks on: the watcher tasks above need them to
    // see the end of the run.
    Store::connect_etcd(&[url.to_string()], corral_store::EtcdOptions::default())
        .await
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        })
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_url: &str) -> Store {
    eprintln!("--etcd needs a build with --features etcd");
    std::process::exit(2)
}
