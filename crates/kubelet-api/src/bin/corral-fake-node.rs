//! A node agent stand-in for end-to-end tests of the API server's pod streams: serves the
//! real kubelet API over TLS (serving certificate signed by the cluster CA in `--pki`),
//! with a backend made of files and host processes: a container `c` of pod `p` in
//! namespace `n` logs to `<dir>/n_p_c.log` (CRI format; `n_p_c.previous.log` for
//! `--previous`), counts as stopped once `<dir>/n_p_c.stopped` exists, runs exec commands as
//! host processes, and forwards ports to 127.0.0.1. Prints `port <N>` when listening and
//! stops when its stdin closes.

use corral_kubelet_api::{Backend, BackendError, ContainerInfo, ExecSession};
use futures::future::BoxFuture;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

struct Files {
    dir: PathBuf,
}

impl Backend for Files {
    fn container<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        c: &'a str,
    ) -> BoxFuture<'a, Result<ContainerInfo, BackendError>> {
        Box::pin(async move {
            let id = format!("{ns}_{pod}_{c}");
            let log = self.dir.join(format!("{id}.log"));
            if !log.exists() {
                return Err(BackendError::NotFound(format!(
                    "container {c:?} in pod {pod:?} is not available"
                )));
            }
            let prev = self.dir.join(format!("{id}.previous.log"));
            Ok(ContainerInfo {
                running: !self.dir.join(format!("{id}.stopped")).exists(),
                previous_log_path: prev.exists().then_some(prev),
                log_path: log,
                id,
            })
        })
    }

    fn wait_stopped(&self, id: &str) -> BoxFuture<'static, ()> {
        let marker = self.dir.join(format!("{id}.stopped"));
        Box::pin(async move {
            while !marker.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    }

    fn exec<'a>(
        &'a self,
        _id: &'a str,
        argv: Vec<String>,
        _tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| BackendError::Internal(format!("cannot start {argv:?}: {e}")))?;
            Ok(ExecSession {
                stdin: child.stdin.take().map(|w| Box::pin(w) as _),
                stdout: child.stdout.take().map(|r| Box::pin(r) as _),
                stderr: child.stderr.take().map(|r| Box::pin(r) as _),
                resize: None,
                exit: Box::pin(async move { child.wait().await.map(|s| s.code().unwrap_or(128)) }),
            })
        })
    }

    fn port_forward<'a>(
        &'a self,
        _ns: &'a str,
        _pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<TcpStream>> {
        Box::pin(async move { TcpStream::connect(("127.0.0.1", port)).await })
    }
}

fn tls(pki: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error>> {
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
    let ca_key = std::fs::read_to_string(pki.join("ca.key"))?;
    Ok(corral_kubelet_api::certs::node_server_config(
        &ca_pem,
        &ca_key,
        "fake-node",
        &["127.0.0.1".parse()?],
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!(
                    "usage: {} --pki <dir with ca.crt, ca.key> --dir <dir>",
                    args[0]
                )
            })
    };
    let (pki, dir) = (arg("--pki")?, arg("--dir")?);
    let cfg = tls(&pki)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("port {}", listener.local_addr()?.port());
        io::stdout().flush()?;
        let stop = async {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        corral_kubelet_api::serve(listener, cfg, Arc::new(Files { dir }), stop).await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
