//! corral-loadgen: the load generator behind `bench/api.sh`.
//!
//! Subcommands (each prints one JSON line on stdout; progress goes to stderr):
//!   creates       POST ConfigMaps (1 KiB data each) from N concurrent keep-alive clients
//!   etcd-puts     the same load as raw `POST /v3/kv/put` on etcd's HTTP/JSON gateway (peer)
//!   watch-fanout  W watches on one namespace, PATCHes at R/s, delivery latency + exactness
//!   etcd-watch    the same fan-out against etcd's gateway `POST /v3/watch` (peer)
//!   list          create N ConfigMaps, then time full and paginated LISTs, report server RSS
//!   etcd-list     put N keys, then time full and paginated ranges (peer)
//!   wait-ready    poll GET PATH until 200 and print how long it took
//!
//! Flags are `--name value`; see `usage()`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

type AnyErr = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, AnyErr>;

fn usage() -> ! {
    eprintln!(
        "usage: corral-loadgen SUBCOMMAND [flags]
  creates      --server URL --kubeconfig F [--token-file F] --count 10000 --concurrency 50 [--proto h1|h2] [--namespace NS] [--value-size 1024]
  etcd-puts    --server http://127.0.0.1:2379 --count 10000 --concurrency 50 [--value-size 1024]
  watch-fanout --server URL --kubeconfig F --watchers 1000 --rate 1000 --seconds 10 [--objects 10] [--proto h1|h2] [--streams-per-conn 100] [--drain-seconds 20]
  etcd-watch   --server http://127.0.0.1:2379 --watchers 1000 --rate 1000 --seconds 10 [--objects 10] [--drain-seconds 20]
  list         --server URL --kubeconfig F --count 100000 [--concurrency 50] [--proto h1|h2] [--pid PID] [--page 500] [--repeat 3]
  etcd-list    --server http://127.0.0.1:2379 --count 100000 [--concurrency 50] [--pid PID] [--page 500] [--repeat 3]
  wait-ready   --server URL [--path /readyz] [--timeout-ms 10000]
--server defaults to the kubeconfig's server; --token-file uses that bearer token instead of the client certificate."
    );
    std::process::exit(2)
}

// ---------------------------------------------------------------- flags

struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut m = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let Some(name) = args[i].strip_prefix("--") else {
                eprintln!("unexpected argument {:?}", args[i]);
                usage()
            };
            if let Some((k, v)) = name.split_once('=') {
                m.insert(k.to_string(), v.to_string());
                i += 1;
            } else if i + 1 < args.len() {
                m.insert(name.to_string(), args[i + 1].clone());
                i += 2;
            } else {
                eprintln!("flag --{name} needs a value");
                usage()
            }
        }
        Flags(m)
    }
    fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    fn u64(&self, k: &str, default: u64) -> u64 {
        match self.0.get(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k}: not a number: {v}");
                usage()
            }),
        }
    }
}

// ---------------------------------------------------------------- clock

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

/// Microseconds since the process's base instant (monotonic, shared by writers and readers).
fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

// ---------------------------------------------------------------- target and connections

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn parse(s: Option<&str>) -> Proto {
        match s.unwrap_or("h1") {
            "h1" | "http1" => Proto::H1,
            "h2" | "http2" => Proto::H2,
            other => {
                eprintln!("--proto: h1 or h2, not {other}");
                usage()
            }
        }
    }
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "http/1.1",
            Proto::H2 => "h2",
        }
    }
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    tls_h1: Option<Arc<rustls::ClientConfig>>,
    tls_h2: Option<Arc<rustls::ClientConfig>>,
    bearer: Option<String>,
}

fn kubeconfig_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("- ");
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

fn pem_certs(pem: &[u8]) -> Res<Vec<rustls::pki_types::CertificateDer<'static>>> {
    Ok(rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>()?)
}

impl Target {
    fn from_flags(f: &Flags) -> Res<Target> {
        let kc = f.str("kubeconfig").map(std::fs::read_to_string).transpose()?;
        let server = match (f.str("server"), &kc) {
            (Some(s), _) => s.to_string(),
            (None, Some(k)) => kubeconfig_field(k, "server").ok_or("no server in kubeconfig")?,
            (None, None) => return Err("--server or --kubeconfig is required".into()),
        };
        let (https, rest) = if let Some(r) = server.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = server.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("server URL must start with http:// or https://: {server}").into());
        };
        let authority = rest.trim_end_matches('/').to_string();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.parse()?),
            None => (authority.clone(), if https { 443 } else { 80 }),
        };
        let bearer = match f.str("token-file") {
            Some(p) => Some(std::fs::read_to_string(p)?.trim().to_string()),
            None => None,
        };
        let (mut tls_h1, mut tls_h2) = (None, None);
        if https {
            let kc = kc.as_ref().ok_or("https needs --kubeconfig (for the CA and client certificate)")?;
            let field = |name: &str| -> Res<Vec<u8>> {
                let v = kubeconfig_field(kc, name).ok_or_else(|| format!("kubeconfig has no {name}"))?;
                Ok(B64.decode(v)?)
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(&field("certificate-authority-data")?)? {
                roots.add(c)?;
            }
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
            let cfg = if bearer.is_some() {
                builder.with_no_client_auth()
            } else {
                let certs = pem_certs(&field("client-certificate-data")?)?;
                let key = rustls_pemfile::private_key(&mut &field("client-key-data")?[..])?
                    .ok_or("no private key in client-key-data")?;
                builder.with_client_auth_cert(certs, key)?
            };
            let mut c1 = cfg.clone();
            c1.alpn_protocols = vec![b"http/1.1".to_vec()];
            let mut c2 = cfg;
            c2.alpn_protocols = vec![b"h2".to_vec()];
            tls_h1 = Some(Arc::new(c1));
            tls_h2 = Some(Arc::new(c2));
        }
        Ok(Target { https, host, port, authority, tls_h1, tls_h2, bearer })
    }

    async fn connect(&self, proto: Proto) -> Res<Sender> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        if self.https {
            let cfg = match proto {
                Proto::H1 => self.tls_h1.clone(),
                Proto::H2 => self.tls_h2.clone(),
            }
            .expect("tls config");
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
            handshake(TokioIo::new(tls), proto).await
        } else {
            handshake(TokioIo::new(tcp), proto).await
        }
    }

    fn request(&self, proto: Proto, method: Method, path: &str, ctype: Option<&str>, body: Bytes) -> Request<Full<Bytes>> {
        let uri = match proto {
            Proto::H1 => path.to_string(),
            Proto::H2 => format!("{}://{}{}", if self.https { "https" } else { "http" }, self.authority, path),
        };
        let mut b = Request::builder().method(method).uri(uri).header("accept", "application/json");
        if proto == Proto::H1 {
            b = b.header("host", self.authority.as_str());
        }
        if let Some(c) = ctype {
            b = b.header("content-type", c);
        }
        if let Some(t) = &self.bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Full::new(body)).expect("request")
    }
}

async fn handshake<T>(io: TokioIo<T>, proto: Proto) -> Res<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Ok(match proto {
        Proto::H1 => {
            let (s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            Sender::H1(s)
        }
        Proto::H2 => {
            let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(1 << 20)
                .handshake::<_, Full<Bytes>>(io)
                .await?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            Sender::H2(s)
        }
    })
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Res<Response<Incoming>> {
        Ok(match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }
    fn try_clone(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }
}

/// Send a request and read the whole response body.
async fn call(s: &mut Sender, req: Request<Full<Bytes>>, timeout: Duration) -> Res<(StatusCode, Bytes)> {
    let fut = async {
        let resp = s.send(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, AnyErr>((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("request timed out after {timeout:?}").into()),
    }
}

// ---------------------------------------------------------------- stats

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// p50/p99/max in milliseconds of latencies in microseconds.
fn lat_json(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    json!({"p50_ms": ms(pct(&v, 0.50)), "p99_ms": ms(pct(&v, 0.99)), "max_ms": ms(v.last().copied().unwrap_or(0)), "n": v.len()})
}

fn rss_kb(pid: Option<u64>, field: &str) -> Option<u64> {
    let pid = pid?;
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mem_json(pid: Option<u64>) -> Value {
    json!({"rss_mb": rss_kb(pid, "VmRSS").map(|k| (k as f64 / 102.4).round() / 10.0),
           "hwm_mb": rss_kb(pid, "VmHWM").map(|k| (k as f64 / 102.4).round() / 10.0)})
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------- bodies

fn payload(size: usize, seed: u64) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

fn configmap_body(name: &str, value: &str) -> Bytes {
    Bytes::from(
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "labels": {"app": "corral-bench"}},
               "data": {"payload": value}})
        .to_string(),
    )
}

fn unique_suffix() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{}", std::process::id(), t.as_millis() % 1_000_000)
}

/// Find `"key":"` in `s` from `from` and parse the digits after it.
fn scan_num(s: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let pos = find(&s[from..], key)? + from + key.len();
    let mut n: u64 = 0;
    let mut i = pos;
    while i < s.len() && s[i].is_ascii_digit() {
        n = n * 10 + (s[i] - b'0') as u64;
        i += 1;
    }
    (i > pos).then_some((n, i))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if i + needle.len() <= hay.len() && &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

fn snippet(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

// ---------------------------------------------------------------- create load (shared by creates/etcd-puts/list)

struct LoadResult {
    seconds: f64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    lat_us: Vec<u64>,
}

/// Run `count` requests from `concurrency` clients, each with its own keep-alive connection
/// (h1) or all multiplexed on one connection (h2). `make(i)` builds request i.
async fn run_load<F>(t: Arc<Target>, proto: Proto, count: u64, concurrency: u64, expect: StatusCode, make: F) -> Res<LoadResult>
where
    F: Fn(u64) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut senders = Vec::new();
    if proto == Proto::H2 {
        let s = t.connect(proto).await?;
        for _ in 0..concurrency {
            senders.push(s.try_clone().unwrap());
        }
    } else {
        for _ in 0..concurrency {
            senders.push(t.connect(proto).await?);
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut s in senders {
        let (next, make, t) = (next.clone(), make.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity((count / concurrency + 1) as usize);
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let req = make(i);
                let t0 = Instant::now();
                match call(&mut s, req, Duration::from_secs(60)).await {
                    Ok((st, body)) => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        if st == expect {
                            ok += 1;
                        } else {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("HTTP {st}: {}", snippet(&body)));
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("transport: {e}"));
                        // Reconnect a broken keep-alive connection.
                        if let Ok(n) = t.connect(proto).await {
                            s = n;
                        }
                    }
                }
            }
            (lat, ok, errors, first_error)
        }));
    }
    let mut r = LoadResult { seconds: 0.0, ok: 0, errors: 0, first_error: None, lat_us: Vec::with_capacity(count as usize) };
    for task in tasks {
        let (lat, ok, errors, fe) = task.await?;
        r.lat_us.extend(lat);
        r.ok += ok;
        r.errors += errors;
        if r.first_error.is_none() {
            r.first_error = fe;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

fn load_json(bench: &str, proto: Proto, count: u64, concurrency: u64, value_size: usize, r: LoadResult) -> Value {
    let per_sec = r.ok as f64 / r.seconds;
    let mut v = json!({
        "bench": bench, "proto": proto.name(), "count": count, "concurrency": concurrency,
        "value_bytes": value_size, "ok": r.ok, "errors": r.errors, "seconds": round2(r.seconds),
        "per_sec": per_sec.round(), "first_error": r.first_error,
    });
    let lat = lat_json(r.lat_us);
    for k in ["p50_ms", "p99_ms", "max_ms"] {
        v[k] = lat[k].clone();
    }
    v
}

async fn ensure_namespace(t: &Target, proto: Proto, ns: &str) -> Res<()> {
    let mut s = t.connect(proto).await?;
    let body = Bytes::from(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string());
    let (st, b) = call(&mut s, t.request(proto, Method::POST, "/api/v1/namespaces", Some("application/json"), body), Duration::from_secs(30)).await?;
    if st != StatusCode::CREATED && st != StatusCode::CONFLICT {
        return Err(format!("creating namespace {ns}: HTTP {st}: {}", snippet(&b)).into());
    }
    Ok(())
}

/// POST `count` 1 KiB ConfigMaps into `ns`.
async fn create_configmaps(t: Arc<Target>, proto: Proto, ns: &str, prefix: &str, count: u64, concurrency: u64, value_size: usize) -> Res<LoadResult> {
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    let value = Arc::new(payload(value_size, 1));
    let prefix = prefix.to_string();
    let tt = t.clone();
    run_load(t, proto, count, concurrency, StatusCode::CREATED, move |i| {
        let name = format!("{prefix}{i:07}");
        tt.request(proto, Method::POST, &path, Some("application/json"), configmap_body(&name, &value))
    })
    .await
}

/// POST `count` small Pods (one container with requests, as the scheduler bench makes).
async fn create_pods(t: Arc<Target>, proto: Proto, ns: &str, prefix: &str, count: u64, concurrency: u64) -> Res<LoadResult> {
    let path = format!("/api/v1/namespaces/{ns}/pods");
    let prefix = prefix.to_string();
    let tt = t.clone();
    run_load(t, proto, count, concurrency, StatusCode::CREATED, move |i| {
        let name = format!("{prefix}{i:07}");
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:test",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
        });
        tt.request(proto, Method::POST, &path, Some("application/json"), Bytes::from(body.to_string()))
    })
    .await
}

async fn cmd_creates(f: &Flags) -> Res<Value> {
    let t = Arc::new(Target::from_flags(f)?);
    let proto = Proto::parse(f.str("proto"));
    let (count, conc) = (f.u64("count", 10_000), f.u64("concurrency", 50));
    let value_size = f.u64("value-size", 1024) as usize;
    let ns = f.str("namespace").map(String::from).unwrap_or_else(|| format!("bench-create-{}", unique_suffix()));
    ensure_namespace(&t, proto, &ns).await?;
    let pods = f.str("kind") == Some("pod");
    let r = if pods {
        create_pods(t, proto, &ns, "pod-", count, conc).await?
    } else {
        create_configmaps(t, proto, &ns, "cm-", count, conc, value_size).await?
    };
    let mut v = load_json(if pods { "corral-pod-creates" } else { "corral-creates" }, proto, count, conc, value_size, r);
    v["namespace"] = json!(ns);
    Ok(v)
}

fn etcd_put_request(t: &Target, key: &str, value: &[u8]) -> Request<Full<Bytes>> {
    let body = json!({"key": B64.encode(key), "value": B64.encode(value)}).to_string();
    t.request(Proto::H1, Method::POST, "/v3/kv/put", Some("application/json"), Bytes::from(body))
}

async fn etcd_puts(t: Arc<Target>, prefix: &str, count: u64, conc: u64, value_size: usize) -> Res<LoadResult> {
    let value = Arc::new(payload(value_size, 1));
    let prefix = prefix.to_string();
    let tt = t.clone();
    run_load(t, Proto::H1, count, conc, StatusCode::OK, move |i| {
        // The value is the same ConfigMap JSON corral stores, so both sides move as many bytes.
        let name = format!("cm-{i:07}");
        etcd_put_request(&tt, &format!("{prefix}{name}"), &configmap_body(&name, &value))
    })
    .await
}

async fn cmd_etcd_puts(f: &Flags) -> Res<Value> {
    let t = Arc::new(Target::from_flags(f)?);
    let (count, conc) = (f.u64("count", 10_000), f.u64("concurrency", 50));
    let value_size = f.u64("value-size", 1024) as usize;
    let prefix = format!("/bench/puts-{}/", unique_suffix());
    let r = etcd_puts(t, &prefix, count, conc, value_size).await?;
    Ok(load_json("etcd-puts", Proto::H1, count, conc, value_size, r))
}

// ---------------------------------------------------------------- watch fan-out

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Corral,
    Etcd,
}

#[derive(Default)]
struct WatcherLog {
    rvs: Vec<u64>,
    lat_us: Vec<u64>,
    errors: Vec<String>,
    ended_early: Option<String>,
}

/// Parse one newline-delimited watch message into (resourceVersion, send-timestamp) pairs.
fn parse_watch_line(flavor: Flavor, line: &[u8], out: &mut Vec<(u64, u64)>, log: &mut WatcherLog) {
    match flavor {
        Flavor::Corral => {
            // {"type":"MODIFIED","object":{..."resourceVersion":"N"...,"data":{"seq":"..","ts":"T"}}}
            if !line.starts_with(b"{\"type\":\"MODIFIED\"") {
                log.errors.push(format!("unexpected event: {}", snippet(line)));
                return;
            }
            let rv = scan_num(line, b"\"resourceVersion\":\"", 0);
            let ts = find(line, b"\"data\":{").and_then(|d| scan_num(line, b"\"ts\":\"", d));
            match (rv, ts) {
                (Some((rv, _)), Some((ts, _))) => out.push((rv, ts)),
                _ => log.errors.push(format!("unparsable event: {}", snippet(line))),
            }
        }
        Flavor::Etcd => {
            // {"result":{"header":{..},"events":[{"kv":{..."mod_revision":"N",...,"value":"B64"}}]}}
            if find(line, b"\"error\"").is_some() {
                log.errors.push(format!("error message: {}", snippet(line)));
                return;
            }
            let mut from = 0;
            while let Some(k) = find(&line[from..], b"\"kv\":{") {
                let start = from + k;
                let Some((rv, _)) = scan_num(line, b"\"mod_revision\":\"", start) else { break };
                let Some(vpos) = find(&line[start..], b"\"value\":\"").map(|p| p + start + 9) else { break };
                let vend = line[vpos..].iter().position(|&b| b == b'"').map(|p| p + vpos).unwrap_or(line.len());
                let ts = B64.decode(&line[vpos..vend]).ok().and_then(|v| {
                    let s = String::from_utf8(v).ok()?;
                    s.split_whitespace().next()?.parse::<u64>().ok()
                });
                match ts {
                    Some(ts) => out.push((rv, ts)),
                    None => log.errors.push(format!("unparsable kv: {}", snippet(&line[start..]))),
                }
                from = vend;
            }
        }
    }
}

struct WatchSetup {
    flavor: Flavor,
    ns: String, // corral namespace or etcd key prefix
    start_rv: u64,
    objects: u64,
}

impl WatchSetup {
    fn watch_request(&self, t: &Target, proto: Proto) -> Request<Full<Bytes>> {
        match self.flavor {
            Flavor::Corral => t.request(
                proto,
                Method::GET,
                &format!("/api/v1/namespaces/{}/configmaps?watch=true&resourceVersion={}", self.ns, self.start_rv),
                None,
                Bytes::new(),
            ),
            Flavor::Etcd => {
                let key = self.ns.as_bytes();
                let mut end = key.to_vec();
                *end.last_mut().unwrap() += 1;
                let body = json!({"create_request": {"key": B64.encode(key), "range_end": B64.encode(&end), "start_revision": self.start_rv + 1}});
                t.request(Proto::H1, Method::POST, "/v3/watch", Some("application/json"), Bytes::from(body.to_string()))
            }
        }
    }
    fn write_request(&self, t: &Target, proto: Proto, obj: u64, seq: u64, ts: u64) -> Request<Full<Bytes>> {
        match self.flavor {
            Flavor::Corral => {
                let body = json!({"data": {"ts": ts.to_string(), "seq": seq.to_string()}}).to_string();
                t.request(
                    proto,
                    Method::PATCH,
                    &format!("/api/v1/namespaces/{}/configmaps/w-{obj}", self.ns),
                    Some("application/merge-patch+json"),
                    Bytes::from(body),
                )
            }
            Flavor::Etcd => etcd_put_request(t, &format!("{}w-{obj}", self.ns), format!("{ts} {seq}").as_bytes()),
        }
    }
    /// The revision a successful write produced.
    fn written_rv(&self, body: &[u8]) -> Option<u64> {
        match self.flavor {
            Flavor::Corral => scan_num(body, b"\"resourceVersion\":\"", 0).map(|x| x.0),
            Flavor::Etcd => scan_num(body, b"\"revision\":\"", 0).map(|x| x.0),
        }
    }
}

async fn watch_setup(t: &Target, flavor: Flavor, proto: Proto, objects: u64) -> Res<WatchSetup> {
    let mut s = t.connect(if flavor == Flavor::Etcd { Proto::H1 } else { proto }).await?;
    match flavor {
        Flavor::Corral => {
            let ns = format!("bench-watch-{}", unique_suffix());
            ensure_namespace(t, proto, &ns).await?;
            for k in 0..objects {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w-{k}")}, "data": {"ts": "0", "seq": "0"}});
                let req = t.request(proto, Method::POST, &format!("/api/v1/namespaces/{ns}/configmaps"), Some("application/json"), Bytes::from(body.to_string()));
                let (st, b) = call(&mut s, req, Duration::from_secs(30)).await?;
                if st != StatusCode::CREATED {
                    return Err(format!("creating w-{k}: HTTP {st}: {}", snippet(&b)).into());
                }
            }
            let req = t.request(proto, Method::GET, &format!("/api/v1/namespaces/{ns}/configmaps"), None, Bytes::new());
            let (st, b) = call(&mut s, req, Duration::from_secs(30)).await?;
            let v: Value = serde_json::from_slice(&b)?;
            let rv = v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok());
            match (st, rv) {
                (StatusCode::OK, Some(rv)) => Ok(WatchSetup { flavor, ns, start_rv: rv, objects }),
                _ => Err(format!("listing {ns}: HTTP {st}: {}", snippet(&b)).into()),
            }
        }
        Flavor::Etcd => {
            let ns = format!("/bench/watch-{}/", unique_suffix());
            let mut rev = 0;
            for k in 0..objects {
                let (st, b) = call(&mut s, etcd_put_request(t, &format!("{ns}w-{k}"), b"0 0"), Duration::from_secs(30)).await?;
                if st != StatusCode::OK {
                    return Err(format!("etcd put: HTTP {st}: {}", snippet(&b)).into());
                }
                rev = scan_num(&b, b"\"revision\":\"", 0).ok_or("no revision in put response")?.0;
            }
            Ok(WatchSetup { flavor, ns, start_rv: rev, objects })
        }
    }
}

async fn cmd_watch(f: &Flags, flavor: Flavor) -> Res<Value> {
    let t = Arc::new(Target::from_flags(f)?);
    let proto = if flavor == Flavor::Etcd { Proto::H1 } else { Proto::parse(f.str("proto")) };
    let watchers = f.u64("watchers", 1000);
    let rate = f.u64("rate", 1000).max(1);
    let seconds = f.u64("seconds", 10);
    let objects = f.u64("objects", 10).max(1);
    let per_conn = f.u64("streams-per-conn", 100).max(1);
    let drain = Duration::from_secs(f.u64("drain-seconds", 20));
    let total_writes = rate * seconds;
    base();

    let setup = Arc::new(watch_setup(&t, flavor, proto, objects).await?);
    eprintln!("watch: {} watchers on {} from rv {} ({:?})", watchers, setup.ns, setup.start_rv, proto);

    // Open the watches: one connection each (h1), or `per_conn` streams per connection (h2).
    let open_start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut h2_conns: Vec<Sender> = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut openers = Vec::new();
    for w in 0..watchers {
        let sender = if proto == Proto::H2 {
            if w % per_conn == 0 {
                h2_conns.push(t.connect(proto).await?);
            }
            Some(h2_conns.last().unwrap().try_clone().unwrap())
        } else {
            None
        };
        let (t, setup, sem) = (t.clone(), setup.clone(), sem.clone());
        openers.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut s = match sender {
                Some(s) => s,
                None => t.connect(proto).await?,
            };
            let resp = tokio::time::timeout(Duration::from_secs(30), s.send(setup.watch_request(&t, proto))).await.map_err(|_| "watch open timed out")??;
            if resp.status() != StatusCode::OK {
                let st = resp.status();
                let b = resp.into_body().collect().await?.to_bytes();
                return Err(format!("watch: HTTP {st}: {}", snippet(&b)).into());
            }
            Ok::<_, AnyErr>((s, resp))
        }));
    }
    let mut streams = Vec::new();
    for o in openers {
        streams.push(o.await??);
    }
    let open_ms = open_start.elapsed().as_millis() as u64;
    eprintln!("watch: {} watches open in {} ms", streams.len(), open_ms);

    let mut readers = Vec::new();
    for (sender, resp) in streams {
        let (received, mut stop) = (received.clone(), stop_rx.clone());
        readers.push(tokio::spawn(async move {
            let _keep = sender; // keeps the connection (h1) alive
            let mut log = WatcherLog { rvs: Vec::with_capacity(total_writes as usize), lat_us: Vec::with_capacity(total_writes as usize), ..Default::default() };
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
            let mut parsed = Vec::new();
            loop {
                let frame = tokio::select! {
                    biased;
                    f = body.frame() => f,
                    _ = stop.changed() => break,
                };
                let data = match frame {
                    None => {
                        log.ended_early = Some("stream ended".into());
                        break;
                    }
                    Some(Err(e)) => {
                        log.ended_early = Some(format!("stream error: {e}"));
                        break;
                    }
                    Some(Ok(fr)) => match fr.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                let now = now_us();
                buf.extend_from_slice(&data);
                let mut start = 0;
                while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                    let line = &buf[start..start + nl];
                    if !line.iter().all(|b| b.is_ascii_whitespace()) {
                        parse_watch_line(flavor, line, &mut parsed, &mut log);
                    }
                    start += nl + 1;
                }
                buf.drain(..start);
                if flavor == Flavor::Etcd && !buf.is_empty() && buf[0] == b'{' && serde_json::from_slice::<Value>(&buf).is_ok() {
                    // A complete message without a trailing newline.
                    let line = std::mem::take(&mut buf);
                    parse_watch_line(flavor, &line, &mut parsed, &mut log);
                }
                received.fetch_add(parsed.len() as u64, Ordering::Relaxed);
                for (rv, ts) in parsed.drain(..) {
                    log.rvs.push(rv);
                    log.lat_us.push(now.saturating_sub(ts));
                }
            }
            log
        }));
    }

    // Writers: one lane (and keep-alive connection) per object; write g is due at start + g/rate.
    let write_start = Instant::now() + Duration::from_millis(200);
    let write_end = write_start + Duration::from_secs(seconds);
    let writes_done = Arc::new(AtomicU64::new(0));
    let progress = {
        let (received, writes_done, mut stop) = (received.clone(), writes_done.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                eprintln!(
                    "watch: t={:.0}s writes={} events={}",
                    write_start.elapsed().as_secs_f64(),
                    writes_done.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed)
                );
            }
        })
    };
    let wrote = Arc::new(Mutex::new((Vec::<u64>::new(), Vec::<u64>::new(), 0u64, None::<String>)));
    let mut lanes = Vec::new();
    for k in 0..objects {
        let (t, setup, wrote, writes_done) = (t.clone(), setup.clone(), wrote.clone(), writes_done.clone());
        let mut s = t.connect(proto).await?;
        lanes.push(tokio::spawn(async move {
            let (mut rvs, mut lat, mut errors, mut first_err) = (Vec::new(), Vec::new(), 0u64, None);
            let mut g = k;
            while g < total_writes {
                let due = write_start + Duration::from_nanos(g * 1_000_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                if Instant::now() >= write_end {
                    // Behind schedule at the end of the run: the rest is counted as not sent.
                    break;
                }
                let ts = now_us();
                let t0 = Instant::now();
                match call(&mut s, setup.write_request(&t, proto, k, g, ts), Duration::from_secs(30)).await {
                    Ok((st, b)) if st == StatusCode::OK => match setup.written_rv(&b) {
                        Some(rv) => {
                            rvs.push(rv);
                            lat.push(t0.elapsed().as_micros() as u64);
                        }
                        None => {
                            errors += 1;
                            first_err.get_or_insert_with(|| format!("no revision in: {}", snippet(&b)));
                        }
                    },
                    Ok((st, b)) => {
                        errors += 1;
                        first_err.get_or_insert_with(|| format!("HTTP {st}: {}", snippet(&b)));
                    }
                    Err(e) => {
                        errors += 1;
                        first_err.get_or_insert_with(|| format!("transport: {e}"));
                        if let Ok(n) = t.connect(proto).await {
                            s = n;
                        }
                    }
                }
                g += setup.objects;
                writes_done.fetch_add(1, Ordering::Relaxed);
            }
            let mut w = wrote.lock().unwrap();
            w.0.extend(rvs);
            w.1.extend(lat);
            w.2 += errors;
            if w.3.is_none() {
                w.3 = first_err;
            }
        }));
    }
    for l in lanes {
        l.await?;
    }
    let write_secs = write_start.elapsed().as_secs_f64().max(seconds as f64);
    let (mut expected, write_lat, write_errors, write_err) = std::mem::take(&mut *wrote.lock().unwrap());
    expected.sort_unstable();
    let writes_ok = expected.len() as u64;
    eprintln!("watch: {writes_ok} writes in {write_secs:.2} s ({write_errors} errors); draining");

    // Drain: wait until every watcher has every event, or the drain time is up.
    let want = writes_ok * watchers;
    let drain_start = Instant::now();
    while received.load(Ordering::Relaxed) < want && drain_start.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_ms = drain_start.elapsed().as_millis() as u64;
    // A short grace to catch duplicates or stray events arriving after the last expected one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let _ = progress.await;

    let (mut complete, mut missing, mut dups, mut out_of_order, mut unexpected, mut ended_early) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut lat_all: Vec<u64> = Vec::with_capacity(want as usize);
    let mut errs: Vec<String> = Vec::new();
    let mut delivered = 0u64;
    for r in readers {
        let log = r.await?;
        delivered += log.rvs.len() as u64;
        if log.rvs == expected {
            complete += 1;
        } else {
            let mut prev = 0;
            for &rv in &log.rvs {
                if rv <= prev {
                    if rv == prev { dups += 1 } else { out_of_order += 1 }
                }
                prev = prev.max(rv);
            }
            let mut seen = log.rvs.clone();
            seen.sort_unstable();
            seen.dedup();
            missing += expected.iter().filter(|rv| seen.binary_search(rv).is_err()).count() as u64;
            unexpected += seen.iter().filter(|rv| expected.binary_search(rv).is_err()).count() as u64;
        }
        if let Some(e) = &log.ended_early {
            ended_early += 1;
            if errs.len() < 3 {
                errs.push(e.clone());
            }
        }
        for e in log.errors.iter().take(1) {
            if errs.len() < 3 {
                errs.push(e.clone());
            }
        }
        lat_all.extend(log.lat_us);
    }
    let lat = lat_json(lat_all);
    let mut v = json!({
        "bench": if flavor == Flavor::Corral { "corral-watch-fanout" } else { "etcd-watch-fanout" },
        "proto": proto.name(),
        "watchers": watchers,
        "connections": if proto == Proto::H2 { h2_conns.len() as u64 } else { watchers },
        "objects": objects,
        "target_rate": rate, "seconds": seconds,
        "writes_offered": total_writes, "writes_ok": writes_ok, "write_errors": write_errors, "first_write_error": write_err,
        "achieved_rate": (writes_ok as f64 / write_secs).round(),
        "write_latency": lat_json(write_lat),
        "watch_open_ms": open_ms,
        "events_expected": want, "events_delivered": delivered,
        "watchers_exact_in_order": complete,
        "missing": missing, "duplicates": dups, "out_of_order": out_of_order, "unexpected": unexpected,
        "streams_ended_early": ended_early, "watch_errors": errs,
        "drain_ms": drain_ms,
    });
    for k in ["p50_ms", "p99_ms", "max_ms"] {
        v[k] = lat[k].clone();
    }
    v["all_exact"] = json!(complete == watchers && writes_ok == total_writes);
    Ok(v)
}

// ---------------------------------------------------------------- list

async fn timed_call(s: &mut Sender, req: Request<Full<Bytes>>) -> Res<(u64, StatusCode, Bytes)> {
    let t0 = Instant::now();
    let (st, b) = call(s, req, Duration::from_secs(600)).await?;
    Ok((t0.elapsed().as_micros() as u64, st, b))
}

async fn cmd_list(f: &Flags) -> Res<Value> {
    let t = Arc::new(Target::from_flags(f)?);
    let proto = Proto::parse(f.str("proto"));
    let (count, conc) = (f.u64("count", 100_000), f.u64("concurrency", 50));
    let pid = f.str("pid").and_then(|p| p.parse().ok());
    let page = f.u64("page", 500);
    let repeat = f.u64("repeat", 3).max(1);
    let value_size = f.u64("value-size", 1024) as usize;
    let ns = format!("bench-list-{}", unique_suffix());
    let mem_before = mem_json(pid);
    ensure_namespace(&t, proto, &ns).await?;
    eprintln!("list: creating {count} ConfigMaps in {ns}");
    let created = create_configmaps(t.clone(), proto, &ns, "cm-", count, conc, value_size).await?;
    let create_json = load_json("corral-list-setup", proto, count, conc, value_size, created);
    eprintln!("list: setup {create_json}");
    let mem_after_create = mem_json(pid);

    let mut s = t.connect(proto).await?;
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    // Full list, no limit.
    let mut full = Vec::new();
    let mut full_bytes = 0;
    let mut full_items = 0;
    for _ in 0..repeat {
        let (us, st, b) = timed_call(&mut s, t.request(proto, Method::GET, &path, None, Bytes::new())).await?;
        if st != StatusCode::OK {
            return Err(format!("list: HTTP {st}: {}", snippet(&b)).into());
        }
        let v: Value = serde_json::from_slice(&b)?;
        full_items = created_items(&v);
        full_bytes = b.len();
        full.push(us);
    }
    let mem_after_full = mem_json(pid);
    // Paginated with limit=page.
    let mut walks = Vec::new();
    let mut pages_lat = Vec::new();
    let mut paged_items = 0;
    let mut pages = 0;
    for _ in 0..repeat {
        let t0 = Instant::now();
        let mut cont: Option<String> = None;
        paged_items = 0;
        pages = 0;
        loop {
            let mut p = format!("{path}?limit={page}");
            if let Some(c) = &cont {
                p.push_str("&continue=");
                p.push_str(&urlencode(c));
            }
            let (us, st, b) = timed_call(&mut s, t.request(proto, Method::GET, &p, None, Bytes::new())).await?;
            if st != StatusCode::OK {
                return Err(format!("paged list: HTTP {st}: {}", snippet(&b)).into());
            }
            pages_lat.push(us);
            pages += 1;
            let v: Value = serde_json::from_slice(&b)?;
            paged_items += created_items(&v);
            cont = v["metadata"]["continue"].as_str().filter(|c| !c.is_empty()).map(String::from);
            if cont.is_none() {
                break;
            }
        }
        walks.push(t0.elapsed().as_micros() as u64);
    }
    let mem_after_paged = mem_json(pid);
    full.sort_unstable();
    walks.sort_unstable();
    Ok(json!({
        "bench": "corral-list", "proto": proto.name(), "count": count, "namespace": ns,
        "setup": create_json,
        "full_list": {"items": full_items, "bytes": full_bytes, "runs_ms": full.iter().map(|&u| ms(u)).collect::<Vec<_>>(), "median_ms": ms(full[full.len() / 2])},
        "paged_list": {"limit": page, "pages": pages, "items": paged_items, "walk_runs_ms": walks.iter().map(|&u| ms(u)).collect::<Vec<_>>(), "walk_median_ms": ms(walks[walks.len() / 2]), "page_latency": lat_json(pages_lat)},
        "items_ok": full_items as u64 == count && paged_items as u64 == count,
        "memory": {"before": mem_before, "after_create": mem_after_create, "after_full_lists": mem_after_full, "after_paged_lists": mem_after_paged},
    }))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn cmd_etcd_list(f: &Flags) -> Res<Value> {
    let t = Arc::new(Target::from_flags(f)?);
    let (count, conc) = (f.u64("count", 100_000), f.u64("concurrency", 50));
    let pid = f.str("pid").and_then(|p| p.parse().ok());
    let page = f.u64("page", 500);
    let repeat = f.u64("repeat", 3).max(1);
    let value_size = f.u64("value-size", 1024) as usize;
    let prefix = format!("/bench/list-{}/", unique_suffix());
    let mem_before = mem_json(pid);
    eprintln!("etcd-list: putting {count} keys under {prefix}");
    let r = etcd_puts(t.clone(), &prefix, count, conc, value_size).await?;
    let setup = load_json("etcd-list-setup", Proto::H1, count, conc, value_size, r);
    eprintln!("etcd-list: setup {setup}");
    let mem_after_create = mem_json(pid);
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let mut s = t.connect(Proto::H1).await?;
    let range = |key: &[u8], limit: u64| {
        let mut body = json!({"key": B64.encode(key), "range_end": B64.encode(&end)});
        if limit > 0 {
            body["limit"] = json!(limit);
        }
        t.request(Proto::H1, Method::POST, "/v3/kv/range", Some("application/json"), Bytes::from(body.to_string()))
    };
    let mut full = Vec::new();
    let (mut full_items, mut full_bytes, mut full_err) = (0usize, 0usize, None);
    for _ in 0..repeat {
        let (us, st, b) = timed_call(&mut s, range(prefix.as_bytes(), 0)).await?;
        if st != StatusCode::OK {
            full_err = Some(format!("HTTP {st}: {}", snippet(&b)));
            break;
        }
        let v: Value = serde_json::from_slice(&b)?;
        full_items = v["kvs"].as_array().map(|a| a.len()).unwrap_or(0);
        full_bytes = b.len();
        full.push(us);
    }
    let mut walks = Vec::new();
    let mut pages_lat = Vec::new();
    let (mut paged_items, mut pages) = (0, 0);
    for _ in 0..repeat {
        let t0 = Instant::now();
        let mut key = prefix.as_bytes().to_vec();
        paged_items = 0;
        pages = 0;
        loop {
            let (us, st, b) = timed_call(&mut s, range(&key, page)).await?;
            if st != StatusCode::OK {
                return Err(format!("etcd paged range: HTTP {st}: {}", snippet(&b)).into());
            }
            pages_lat.push(us);
            pages += 1;
            let v: Value = serde_json::from_slice(&b)?;
            let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
            paged_items += kvs.len();
            let more = v["more"].as_bool().unwrap_or(false);
            match kvs.last().and_then(|kv| kv["key"].as_str()).and_then(|k| B64.decode(k).ok()) {
                Some(mut last) if more => {
                    last.push(0);
                    key = last;
                }
                _ => break,
            }
        }
        walks.push(t0.elapsed().as_micros() as u64);
    }
    full.sort_unstable();
    walks.sort_unstable();
    Ok(json!({
        "bench": "etcd-list", "count": count, "setup": setup,
        "full_list": {"items": full_items, "bytes": full_bytes, "error": full_err, "runs_ms": full.iter().map(|&u| ms(u)).collect::<Vec<_>>(), "median_ms": full.get(full.len() / 2).map(|&u| ms(u))},
        "paged_list": {"limit": page, "pages": pages, "items": paged_items, "walk_runs_ms": walks.iter().map(|&u| ms(u)).collect::<Vec<_>>(), "walk_median_ms": ms(walks[walks.len() / 2]), "page_latency": lat_json(pages_lat)},
        "memory": {"before": mem_before, "after_create": mem_after_create, "after_lists": mem_json(pid)},
    }))
}

// ---------------------------------------------------------------- ready

/// Poll `path` until it answers 200. With `--since-ns` (a `date +%s%N` taken just before the
/// server was spawned) the reported time runs from then, not from this process's start. The
/// kubeconfig (for the CA) may not exist yet when polling begins: it is re-read until usable.
async fn cmd_wait_ready(f: &Flags) -> Res<Value> {
    let start = Instant::now();
    let epoch_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let since_ns = f.u64("since-ns", 0);
    let path = f.str("path").unwrap_or("/readyz").to_string();
    let timeout = Duration::from_millis(f.u64("timeout-ms", 10_000));
    let mut target: Option<Target> = None;
    let mut attempts = 0u64;
    let mut last = String::from("nothing tried");
    loop {
        attempts += 1;
        if target.is_none() {
            match Target::from_flags(f) {
                Ok(t) => target = Some(t),
                Err(e) => last = format!("target: {e}"),
            }
        }
        if let Some(t) = &target {
            let r = async {
                let mut s = t.connect(Proto::H1).await?;
                call(&mut s, t.request(Proto::H1, Method::GET, &path, None, Bytes::new()), Duration::from_secs(2)).await
            }
            .await;
            match r {
                Ok((StatusCode::OK, _)) => {
                    let ms = if since_ns > 0 {
                        (epoch_ns().saturating_sub(since_ns) as f64 / 1e6).round() as u64
                    } else {
                        start.elapsed().as_millis() as u64
                    };
                    return Ok(json!({"bench": "wait-ready", "path": path, "ms": ms, "attempts": attempts}));
                }
                Ok((st, _)) => last = format!("HTTP {st}"),
                Err(e) => {
                    last = format!("{e}");
                    // A TLS failure may be a kubeconfig from a previous start: re-read it.
                    if f.str("kubeconfig").is_some() && !last.contains("refused") {
                        target = None;
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(format!("{path} not ready after {timeout:?}: last {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else { usage() };
    let flags = Flags::parse(&args[1..]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let r = rt.block_on(async {
        match cmd.as_str() {
            "creates" => cmd_creates(&flags).await,
            "etcd-puts" => cmd_etcd_puts(&flags).await,
            "watch-fanout" => cmd_watch(&flags, Flavor::Corral).await,
            "etcd-watch" => cmd_watch(&flags, Flavor::Etcd).await,
            "list" => cmd_list(&flags).await,
            "etcd-list" => cmd_etcd_list(&flags).await,
            "wait-ready" => cmd_wait_ready(&flags).await,
            "-h" | "--help" | "help" => usage(),
            other => {
                eprintln!("unknown subcommand {other}");
                usage()
            }
        }
    });
    match r {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("corral-loadgen {cmd}: error: {e}");
            std::process::exit(1);
        }
    }
}

/// The items of a list page that the benchmark created: every namespace also holds the
/// cluster CA's ConfigMap (kube-root-ca.crt), which is not counted.
fn created_items(list: &Value) -> usize {
    list["items"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
            .count()
    })
}
