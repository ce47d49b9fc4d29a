//! Benchmark of durable puts on the embedded store: C concurrent writers put 1 KiB values
//! for N seconds (or N ops) and one JSON line reports throughput and latency percentiles,
//! for comparison with etcd measured the same way.
//!
//! cargo run --release -p corral-store --example store_bench -- --writers 100 --seconds 10

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_store::{Compare, EmbeddedOptions, Store};

struct Args {
    writers: usize,
    seconds: Option<f64>,
    ops: Option<u64>,
    value_size: usize,
    keys: usize,
    dir: Option<std::path::PathBuf>,
    quick_repair: bool,
    fsync: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: store_bench [--writers C] [--seconds S | --ops N] [--value-size BYTES] \
         [--keys-per-writer K] [--dir PATH] [--quick-repair] [--no-fsync]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        writers: 1,
        seconds: None,
        ops: None,
        value_size: 1024,
        keys: 1000,
        dir: None,
        quick_repair: false,
        fsync: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--writers" | "-c" => a.writers = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => a.seconds = Some(val().parse().unwrap_or_else(|_| usage())),
            "--ops" | "-n" => a.ops = Some(val().parse().unwrap_or_else(|_| usage())),
            "--value-size" => a.value_size = val().parse().unwrap_or_else(|_| usage()),
            "--keys-per-writer" => a.keys = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => a.dir = Some(val().into()),
            "--quick-repair" => a.quick_repair = true,
            // Only to see how much of the time is the disk; not a valid comparison.
            "--no-fsync" => a.fsync = false,
            _ => usage(),
        }
    }
    if a.seconds.is_none() && a.ops.is_none() {
        a.seconds = Some(10.0);
    }
    a.writers = a.writers.max(1);
    a
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A temporary directory unless one is given: the numbers are for this disk either way.
    let tmp =
        tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| ".".into())).unwrap();
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = EmbeddedOptions {
        quick_repair: args.quick_repair,
        fsync: args.fsync,
        ..Default::default()
    };
    let opening = Instant::now();
    let store = Store::open_embedded(&dir, opts).unwrap();
    // Includes crash recovery when the directory was left by a killed process.
    let open_ms = opening.elapsed().as_secs_f64() * 1000.0;
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let started = Instant::now();
    let latencies: Vec<u64> = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let (store, value, issued, stop) =
                (store.clone(), value.clone(), issued.clone(), stop.clone());
            let (ops, keys) = (args.ops, args.keys.max(1));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0usize;
                loop {
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
                    if let Err(e) = store.put(key.as_bytes(), value.clone(), Compare::Any).await {
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
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut sorted = latencies;
    sorted.sort_unstable();
    let stats = store.stats();
    rt.block_on(store.close());
    println!(
        "{{\"store\":\"corral-embedded\",\"writers\":{},\"value_bytes\":{},\"quick_repair\":{},\"fsync\":{},\"ops\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"commits\":{},\"writes_per_commit\":{:.2},\"open_ms\":{:.1}}}",
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
    );
}
