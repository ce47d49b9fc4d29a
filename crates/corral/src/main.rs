//! The `corral` binary: command line, configuration, and the wiring of store, API server and
//! (in later parts) controllers, scheduler, agent and proxy into one process.

mod join;
mod leader;
mod pki;
mod serve;
mod tokens;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "A Kubernetes-compatible platform in one binary"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and, in later releases, the rest of the control plane).
    Server(ServerArgs),
    /// Run a node agent that joins a corral server (token from `corral token create`).
    Agent(JoinArgs),
    /// Join tokens for `corral agent` on other machines.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The node's local images: import OCI layouts or `docker save` tarballs, list, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The per-container shim the node agent starts (internal).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import images from OCI image layouts (directory or tar) or `docker save` archives.
    Import {
        #[arg(long, default_value = "./corral-data")]
        data_dir: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the images on this node.
    #[command(alias = "list")]
    Ls {
        #[arg(long, default_value = "./corral-data")]
        data_dir: PathBuf,
    },
    /// Remove images by reference (`busybox:1`, `docker.io/library/busybox:1`, `sha256:<id>`).
    #[command(alias = "remove")]
    Rm {
        #[arg(long, default_value = "./corral-data")]
        data_dir: PathBuf,
        #[arg(required = true)]
        references: Vec<String>,
    },
}

/// `corral image ...`: works while a server uses the same data dir (the store has a lock).
fn image_command(cmd: ImageCommand) -> Result<()> {
    let open = |d: &PathBuf| {
        let dir = d.join("images");
        corral_images::ImageStore::open(&dir)
            .with_context(|| format!("opening the image store {}", dir.display()))
    };
    match cmd {
        ImageCommand::Import { data_dir, files } => {
            let store = open(&data_dir)?;
            for f in files {
                let names = store
                    .import(&f)
                    .with_context(|| format!("importing {}", f.display()))?;
                for n in names {
                    println!("imported {n}");
                }
            }
        }
        ImageCommand::Ls { data_dir } => {
            let store = open(&data_dir)?;
            print!("{}", corral_images::ImageTable(&store.list()?));
        }
        ImageCommand::Rm {
            data_dir,
            references,
        } => {
            let store = open(&data_dir)?;
            for r in references {
                let removed = store.remove(&r).with_context(|| format!("removing {r}"))?;
                if removed.is_empty() {
                    bail!("no image {r:?} on this node");
                }
                for n in removed {
                    println!("untagged {n}");
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token (printed on stdout); needs the server of --data-dir running.
    Create {
        #[arg(long, default_value = "./corral-data")]
        data_dir: PathBuf,
        /// How long the token works, e.g. 24h, 30m, 3600s (default: until deleted).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "corral agent join token")]
        description: String,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?}: want seconds, e.g. 40s"))
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("bad duration {s:?}: use a number with s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

async fn token_command(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            data_dir,
            ttl,
            description,
        } => {
            let ttl = ttl.as_deref().map(parse_duration).transpose()?;
            println!(
                "{}",
                join::create_token(&data_dir, ttl, &description).await?
            );
            Ok(())
        }
    }
}

#[derive(Parser)]
struct ServerArgs {
    /// Where state, certificates and the kubeconfig live.
    #[arg(long, default_value = "./corral-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// HTTPS port of the Kubernetes API.
    #[arg(long, default_value_t = 6443)]
    https_port: u16,
    /// Use an etcd cluster (v3 API) instead of the embedded store, e.g. http://127.0.0.1:2379
    /// (several URLs: comma-separated). Needs a build with `--features etcd`.
    #[arg(long)]
    datastore_endpoint: Option<String>,
    /// Extra names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// How many revisions of history the store keeps for watches (with etcd: compacts it to).
    #[arg(long, default_value_t = 10_000)]
    history_revisions: u64,
    /// Serve the API only: no controllers (Deployments then create no ReplicaSets).
    #[arg(long)]
    disable_controllers: bool,
    /// Do not run the scheduler (pods then stay Pending unless they name a node).
    #[arg(long)]
    disable_scheduler: bool,
    /// A scheduling profile for pods with this spec.schedulerName, as
    /// <schedulerName>=<default|least-loaded|round-robin> (repeatable). Built in:
    /// default-scheduler=default, corral-least-loaded=least-loaded,
    /// corral-round-robin=round-robin.
    #[arg(long = "scheduler-profile")]
    scheduler_profiles: Vec<corral_scheduler::Profile>,
    /// How long a node may stay silent (no Lease renewal) before it is marked Unknown and
    /// its pods are evicted, e.g. 40s.
    #[arg(long, default_value = "40s", value_parser = parse_secs)]
    node_monitor_grace_period: Duration,
    /// The cluster's pod range: each node without one gets a /24 of it (this server's
    /// node the first, unless --pod-cidr says otherwise).
    #[arg(long, default_value = "10.42.0.0/16", value_parser = corral_controllers::nodeipam::Cidr::parse)]
    cluster_cidr: corral_controllers::nodeipam::Cidr,
    /// Terminated pods (Succeeded or Failed) kept before the pod garbage collector deletes
    /// the oldest; 0 keeps them all.
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: usize,
    /// How long a node must be gone before the pod garbage collector deletes its pods
    /// (it also looks this often, at most every 20s), e.g. 40s.
    #[arg(long, default_value = "40s", value_parser = parse_secs)]
    pod_gc_quarantine: Duration,
    /// Run no node agent: this server then runs no pods.
    #[arg(long)]
    disable_agent: bool,
    /// The range Service cluster IPs come from (IPv4); its first address is the
    /// `kubernetes` Service's, its tenth the cluster DNS's.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = corral_controllers::nodeipam::Cidr::parse)]
    service_cidr: corral_controllers::nodeipam::Cidr,
    #[command(flatten)]
    node: NodeArgs,
}

/// `corral agent`: a node of the cluster served at --server.
#[derive(Parser)]
struct JoinArgs {
    /// The corral server to join, e.g. https://10.0.0.1:6443 (its CA is checked against
    /// the token's hash before anything is sent).
    #[arg(long)]
    server: String,
    /// A join token from `corral token create` (K10<ca hash>::<id>.<secret>).
    #[arg(long)]
    token: String,
    /// Where this node's images, containers and logs live.
    #[arg(long, default_value = "./corral-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// The node a server or an agent runs.
#[derive(clap::Args)]
struct NodeArgs {
    /// Name of the Node (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's pod address range (IPv4); its first address goes to the bridge.
    /// Default: the one the server assigns from its --cluster-cidr.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The bridge pods are attached to (created when missing).
    #[arg(long, default_value = "corral0")]
    bridge: String,
    /// Port of the node's kubelet API (logs, exec, port-forward), advertised in its Node.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// The node's InternalIP (default: the host's primary address).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Run no service proxy on this node: Service addresses and cluster DNS are then not
    /// answered here.
    #[arg(long)]
    disable_proxy: bool,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where cluster DNS forwards names outside the cluster (host:port, repeatable;
    /// default: the nameservers of the host's /etc/resolv.conf).
    #[arg(long = "cluster-dns-upstream")]
    cluster_dns_upstreams: Vec<SocketAddr>,
    /// The node's Ingress HTTP port (IngressClass corral); 0 serves none.
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The node's Ingress HTTPS port; 0 serves none.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// Port of the proxy's Istio metrics (/stats/prometheus) on the node's address; 0
    /// serves none.
    #[arg(long, default_value_t = 15020)]
    proxy_metrics_port: u16,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl NodeArgs {
    fn agent_config(&self, data_dir: &std::path::Path) -> corral_agent::AgentConfig {
        let mut cfg = corral_agent::AgentConfig::new(
            self.node_name.clone().unwrap_or_else(hostname),
            data_dir,
        );
        cfg.pod_cidr = self.pod_cidr.clone();
        cfg.bridge = self.bridge.clone();
        cfg.kubelet_port = self.kubelet_port;
        cfg.node_ip = self.node_ip;
        cfg.cluster_domain = self.cluster_domain.clone();
        cfg
    }

    /// Starts this node's service proxy, unless disabled.
    fn spawn_proxy(
        &self,
        data_dir: &std::path::Path,
        cluster_dns: Option<IpAddr>,
        mesh: corral_proxy::MeshTls,
        client: kube::Client,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.disable_proxy {
            return None;
        }
        let node_ip = self.node_ip.unwrap_or_else(corral_agent::detect_node_ip);
        let cfg = corral_proxy::ProxyConfig {
            node_name: self.node_name.clone().unwrap_or_else(hostname),
            node_ip,
            metrics_addr: (self.proxy_metrics_port != 0)
                .then(|| SocketAddr::new(node_ip, self.proxy_metrics_port)),
            state_dir: data_dir.join("proxy"),
            cluster_dns,
            cluster_domain: self.cluster_domain.clone(),
            dns_upstreams: self.cluster_dns_upstreams.clone(),
            ingress_http_port: (self.ingress_http_port != 0).then_some(self.ingress_http_port),
            ingress_https_port: (self.ingress_https_port != 0).then_some(self.ingress_https_port),
            bridge: Some(self.bridge.clone()),
            mesh: Some(mesh),
        };
        Some(tokio::spawn(corral_proxy::run(client, cfg, async move {
            let _ = stop.wait_for(|s| *s).await;
        })))
    }
}

/// The cluster DNS address: the service range's tenth (kube-system/kube-dns's).
fn cluster_dns(args: &ServerArgs) -> std::net::Ipv4Addr {
    corral_api::Ranges {
        service_net: args.service_cidr.addr.into(),
        service_prefix: args.service_cidr.len,
        ..Default::default()
    }
    .cluster_dns()
}

/// Starts the node agent for this server's own node.
fn spawn_agent(
    args: &ServerArgs,
    data_dir: &std::path::Path,
    pki: &pki::Pki,
    client: kube::Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut cfg = args.node.agent_config(data_dir);
    if !args.node.disable_proxy {
        cfg.cluster_dns = Some(IpAddr::V4(cluster_dns(args)));
    }
    // The server's node takes the cluster range's first block unless told otherwise, so it
    // never waits for the node IPAM controller (which may be disabled).
    if cfg.pod_cidr.is_none() {
        cfg.pod_cidr = corral_controllers::nodeipam::first_free(args.cluster_cidr, 24, &[])
            .map(|c| c.to_string());
    }
    cfg.kubelet_tls = corral_agent::KubeletTls::SignWith {
        ca_pem: pki.ca_pem.clone(),
        ca_key_pem: pki.ca_key_pem.clone(),
    };
    cfg.node_labels.insert(
        "node-role.kubernetes.io/control-plane".into(),
        "true".into(),
    );
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = corral_agent::run(client, cfg, stopped).await {
            tracing::error!(error = %e, "node agent stopped");
        }
    })
}

/// Runs a control-plane component until shutdown: at once, or (`elect`) only while this
/// server holds the component's leader Lease.
fn spawn_component<F, Fut>(
    elect: bool,
    client: &kube::Client,
    lease: &'static str,
    identity: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(tokio::sync::watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if elect {
        let (client, identity, stop) = (client.clone(), identity.to_string(), stop.clone());
        tokio::spawn(async move {
            leader::run_while_leading(client, lease, &identity, stop, work).await
        })
    } else {
        tokio::spawn(work(stop.clone()))
    }
}

/// A Kubernetes client wired straight to the API router: no socket, no TLS, but the same
/// handlers, validation and admission as any remote request (DESIGN.md). The layer in
/// front gives its requests the identity of the control plane.
fn in_process_client(router: axum::Router) -> kube::Client {
    let svc = tower::ServiceBuilder::new()
        .map_request(|mut req: axum::http::Request<kube::client::Body>| {
            req.extensions_mut().insert(corral_api::Identity {
                user: "system:corral-controller-manager".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            });
            req
        })
        .service(router);
    kube::Client::new(svc, "default")
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly where the OS overcommits (Linux) and then keeps
/// freed pages resident: that was ~25 MB more idle RSS than glibc. Committing on demand
/// gives memory back, at no measured cost in speed. It must be set before the first
/// allocation reserves the first arena, so this runs as a constructor: after mimalloc's
/// own (priority 101, which reads the MIMALLOC_* environment) and before Rust's runtime
/// starts allocating; a MIMALLOC_ARENA_EAGER_COMMIT in the environment still wins.
#[used]
#[link_section = ".init_array"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

extern "C" fn configure_allocator() {
    /// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (mimalloc 3.3).
    const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
    }
    // SAFETY: runs single-threaded before main; getenv reads a NUL-terminated literal and
    // allocates nothing, mi_option_set only stores the value.
    unsafe {
        if getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

fn main() -> Result<()> {
    // The shim forks and detaches: it must run before any thread (tokio's) exists.
    if std::env::args().nth(1).as_deref() == Some("shim") {
        corral_runtime::shim::main();
    }
    let cli = Cli::parse();
    init_logging(cli.log_json);
    if let Command::Image(cmd) = cli.command {
        return image_command(cmd);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("corral")
        .build()?;
    match cli.command {
        Command::Server(args) => rt.block_on(server(args)),
        Command::Token(cmd) => rt.block_on(token_command(cmd)),
        Command::Agent(args) => rt.block_on(agent(args)),
        Command::Image(_) | Command::Shim { .. } => unreachable!("handled before the runtime"),
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// `corral agent`: joins the server with the token and runs this node until SIGTERM.
/// Containers keep running when it stops; the next start adopts them.
async fn agent(args: JoinArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let (client, ca_pem) = join::agent_client(&args.server, &args.token).await?;
    let mut cfg = args.node.agent_config(&data_dir);
    // Fail now, clearly, if the token is refused, rather than retrying registration forever
    // (/version would not tell: it is public).
    kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get_opt(&cfg.node_name)
        .await
        .with_context(|| format!("the server at {} refused the token", args.server))?;
    let mesh = corral_proxy::MeshTls {
        ca_pem: ca_pem.clone(),
        issuer: corral_proxy::mtls::identities::Issuer::RequestFromServer {
            client: client.clone(),
        },
    };
    cfg.kubelet_tls = corral_agent::KubeletTls::RequestFromServer { ca_pem };
    tracing::info!(server = %args.server, node = %cfg.node_name, "joining");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let cluster_dns = cluster_dns_address(&client).await;
    if !args.node.disable_proxy {
        cfg.cluster_dns = cluster_dns;
    }
    let proxy = args.node.spawn_proxy(
        &data_dir,
        cluster_dns,
        mesh,
        client.clone(),
        stop_rx.clone(),
    );
    let run = tokio::spawn(corral_agent::run(client, cfg, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tokio::select! {
        r = run => {
            r.context("node agent task")??;
            bail!("the node agent stopped");
        }
        _ = wait_for_signal() => {}
    }
    tracing::info!("stopping the node agent (containers keep running)");
    let _ = stop_tx.send(true);
    if let Some(p) = proxy {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    Ok(())
}

/// The cluster DNS address a joining node serves and gives its pods: the clusterIP of
/// the server's kube-system/kube-dns Service.
async fn cluster_dns_address(client: &kube::Client) -> Option<IpAddr> {
    let api =
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "kube-system");
    let svc = api.get_opt("kube-dns").await.ok().flatten()?;
    svc.spec?.cluster_ip?.parse().ok()
}

async fn server(args: ServerArgs) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let store = match &args.datastore_endpoint {
        Some(ep) => connect_etcd(ep, &args).await?,
        None => {
            let opts = corral_store::EmbeddedOptions {
                retain_revisions: args.history_revisions,
                ..Default::default()
            };
            let path = data_dir.join("state.redb");
            match corral_store::Store::open_embedded(&path, opts) {
                Ok(s) => s,
                Err(corral_store::Error::Locked { .. }) => bail!(
                    "data dir {} is in use by another corral server (the store is locked); stop it first or use another --data-dir",
                    data_dir.display()
                ),
                Err(e) => return Err(e).context("opening the embedded store"),
            }
        }
    };
    let mut sans = args.tls_san.clone();
    if !args.bind.is_unspecified() && !args.bind.is_loopback() {
        sans.push(args.bind.to_string());
    }
    let pki = pki::ensure(&data_dir, &sans)?;
    let addr = SocketAddr::new(args.bind, args.https_port);
    let listener = serve::bind(addr).await?;
    let local = listener.local_addr()?;
    let host = if args.bind.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match args.bind {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        }
    };
    let url = format!("https://{host}:{}", local.port());
    let kubeconfig = pki::write_kubeconfig(&data_dir, &pki, &url)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = corral_api::Config {
        advertise: SocketAddr::new(
            if args.bind.is_unspecified() {
                "127.0.0.1".parse()?
            } else {
                args.bind
            },
            local.port(),
        ),
        kubelet_client: Some(serve::kubelet_client_config(&pki)?),
        ranges: corral_api::Ranges {
            service_net: args.service_cidr.addr.into(),
            service_prefix: args.service_cidr.len,
            ..Default::default()
        },
    };
    let state = corral_api::start(store.clone(), config, stop_rx.clone())
        .await
        .map_err(|e| anyhow::anyhow!("starting the API: {e}"))?;
    let router = corral_api::router(state);
    let client = in_process_client(router.clone());
    // Servers sharing an etcd elect one leader each for the controllers and the scheduler
    // (Leases kube-controller-manager and kube-scheduler in kube-system, as Kubernetes); a
    // server on its own embedded store is alone by construction (the store is locked).
    let elect = args.datastore_endpoint.is_some();
    let identity = format!("{}_{}", hostname(), uuid::Uuid::new_v4());
    let scheduler = (!args.disable_scheduler).then(|| {
        let config =
            corral_scheduler::SchedulerConfig::default().with_profiles(&args.scheduler_profiles);
        let c = client.clone();
        let work = move |mut rx: tokio::sync::watch::Receiver<bool>| {
            let (client, config) = (c.clone(), config.clone());
            async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = corral_scheduler::run(client, config, stop).await {
                    tracing::error!(error = %e, "scheduler stopped");
                }
            }
        };
        spawn_component(elect, &client, "kube-scheduler", &identity, &stop_rx, work)
    });
    let controllers = (!args.disable_controllers).then(|| {
        let config = corral_controllers::Config {
            root_ca_pem: Some(pki.ca_pem.clone()),
            volumes_dir: Some(data_dir.join("volumes")),
            node_monitor_grace: args.node_monitor_grace_period,
            cluster_cidr: Some(args.cluster_cidr),
            node_cidr_mask_size: 24,
            pod_gc: corral_controllers::podgc::Settings {
                terminated_threshold: args.terminated_pod_gc_threshold,
                quarantine: args.pod_gc_quarantine,
                period: args
                    .pod_gc_quarantine
                    .clamp(Duration::from_secs(1), Duration::from_secs(20)),
            },
        };
        let c = client.clone();
        let work = move |mut rx: tokio::sync::watch::Receiver<bool>| {
            corral_controllers::run(c.clone(), config.clone(), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
        };
        spawn_component(
            elect,
            &client,
            "kube-controller-manager",
            &identity,
            &stop_rx,
            work,
        )
    });
    let agent = (!args.disable_agent)
        .then(|| spawn_agent(&args, &data_dir, &pki, client.clone(), stop_rx.clone()));
    let cluster_dns = IpAddr::V4(cluster_dns(&args));
    let proxy = if args.disable_agent {
        None
    } else {
        let mesh = corral_proxy::MeshTls {
            ca_pem: pki.ca_pem.clone(),
            issuer: corral_proxy::mtls::identities::Issuer::SignWith {
                ca_key_pem: pki.ca_key_pem.clone(),
            },
        };
        args.node.spawn_proxy(
            &data_dir,
            Some(cluster_dns),
            mesh,
            client.clone(),
            stop_rx.clone(),
        )
    };
    let tls = serve::tls_config(&serve::TlsFiles {
        ca_pem: &pki.ca_pem,
        cert_pem: &pki.server_cert_pem,
        key_pem: &pki.server_key_pem,
    })?;
    tracing::info!(
        url = %url,
        kubeconfig = %kubeconfig.display(),
        ready_ms = started.elapsed().as_millis() as u64,
        "corral server ready"
    );
    println!("corral is serving {url}");
    println!("kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    let tokens = Arc::new(tokens::Tokens::new(pki.admin_token.clone()));
    tokio::spawn(tokens.clone().follow(client.clone(), stop_rx.clone()));
    let server = tokio::spawn(serve::run(
        listener,
        tls,
        router,
        serve::Auth {
            tokens,
            ca_pem: Arc::new(pki.ca_pem.clone()),
            ca_key_pem: Arc::new(pki.ca_key_pem.clone()),
            trust_domain: args.node.cluster_domain.as_str().into(),
            client: client.clone(),
        },
        stop_rx,
    ));
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    for task in [controllers, scheduler, agent, proxy].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Connects to the etcd cluster at `endpoint` (comma-separated URLs).
#[cfg(feature = "etcd")]
async fn connect_etcd(endpoint: &str, args: &ServerArgs) -> Result<corral_store::Store> {
    let endpoints: Vec<String> = endpoint
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let opts = corral_store::EtcdOptions {
        retain_revisions: args.history_revisions,
        ..Default::default()
    };
    corral_store::Store::connect_etcd(&endpoints, opts)
        .await
        .map_err(|e| anyhow::anyhow!("--datastore-endpoint {endpoint}: {e}"))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(endpoint: &str, _args: &ServerArgs) -> Result<corral_store::Store> {
    bail!("--datastore-endpoint {endpoint}: this build has no etcd backend (build with --features etcd)")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
