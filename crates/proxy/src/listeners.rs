//! Keeps one listening task per frontend address: starts those a new configuration adds,
//! stops those it drops (their connections go on), and retries binds that failed (an
//! address still held by another process, a port the node already uses).

use crate::frontends::{AppProtocol, Frontends, Listen};
use crate::stats::Stats;
use crate::view::Protocol;
use crate::{http, tcp, udp};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Listeners {
    running: HashMap<Listen, (AppProtocol, JoinHandle<()>)>,
    /// Binds that failed, with the error last logged, so a retry does not log again.
    failed: HashMap<Listen, String>,
    table: watch::Receiver<Arc<Frontends>>,
    upstreams: Arc<http::Upstreams>,
    stats: Arc<Stats>,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl Listeners {
    pub fn new(table: watch::Receiver<Arc<Frontends>>, stats: Arc<Stats>) -> Listeners {
        Listeners {
            running: HashMap::new(),
            failed: HashMap::new(),
            table,
            upstreams: Arc::new(http::Upstreams::new()),
            stats,
            telemetry: Default::default(),
        }
    }

    /// Listens on exactly the frontends in `fe`. Returns whether some bind failed.
    pub fn reconcile(&mut self, fe: &Frontends) -> bool {
        // A port whose protocol changed (TCP <-> HTTP) is served anew.
        self.running.retain(|listen, (app, task)| {
            let keep = fe.by_listen.get(listen).is_some_and(|f| f.app == *app);
            if !keep {
                task.abort();
            }
            keep
        });
        self.failed.retain(|l, _| fe.by_listen.contains_key(l));
        for listen in fe.by_listen.keys() {
            if self.running.contains_key(listen) {
                continue;
            }
            let app = fe.by_listen[listen].app;
            match self.start(*listen, app) {
                Ok(task) => {
                    if self.failed.remove(listen).is_some() {
                        tracing::info!(addr = %listen.addr, "service port now bound");
                    }
                    self.running.insert(*listen, (app, task));
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.failed.get(listen) != Some(&msg) {
                        let fe = &fe.by_listen[listen];
                        tracing::warn!(service = %fe.service, addr = %listen.addr,
                            protocol = ?listen.protocol, error = %msg,
                            "cannot bind a service port; retrying");
                    }
                    self.failed.insert(*listen, msg);
                }
            }
        }
        !self.failed.is_empty()
    }

    fn start(&self, listen: Listen, app: AppProtocol) -> std::io::Result<JoinHandle<()>> {
        let table = self.table.clone();
        let stats = self.stats.clone();
        Ok(match listen.protocol {
            Protocol::Udp => {
                let socket = udp::bind(listen.addr)?;
                tokio::spawn(udp::serve(socket, listen, table, stats))
            }
            _ if app != AppProtocol::Tcp => {
                let listener = tcp::bind(listen.addr)?;
                let upstreams = self.upstreams.clone();
                let telemetry = self.telemetry.clone();
                let tls = (app == AppProtocol::Https).then(|| {
                    tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                        table.clone(),
                        listen.addr.port(),
                    ))
                });
                tokio::spawn(http::serve(
                    listener, listen, table, upstreams, stats, telemetry, tls,
                ))
            }
            _ => {
                let listener = tcp::bind(listen.addr)?;
                let telemetry = self.telemetry.clone();
                tokio::spawn(tcp::serve(listener, listen, table, stats, telemetry))
            }
        })
    }

    pub fn stop_all(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}
