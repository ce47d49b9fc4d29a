//! The cluster IPs this node has put on `lo`. They are recorded in a file so that a proxy
//! restarted after a crash removes the addresses of Services deleted meanwhile, and only
//! those it added itself (other servers on the same host may own other ranges).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub struct LocalIps {
    file: PathBuf,
    have: BTreeSet<Ipv4Addr>,
    /// Adding addresses needs CAP_NET_ADMIN; without it the proxy only logs once.
    enabled: bool,
    warned: bool,
}

impl LocalIps {
    pub fn open(state_dir: PathBuf) -> LocalIps {
        let file = state_dir.join("local-ips");
        let have = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let _ = std::fs::create_dir_all(&state_dir);
        LocalIps {
            file,
            have,
            enabled: unsafe { libc::geteuid() } == 0,
            warned: false,
        }
    }

    /// Makes the addresses on `lo` exactly `want` (of those this proxy manages).
    pub fn reconcile(&mut self, want: &BTreeSet<Ipv4Addr>) {
        if !self.enabled {
            if !want.is_empty() && !self.warned {
                tracing::warn!(
                    "not running as root: Service cluster IPs cannot be added to lo, so only \
                     NodePorts and LoadBalancer ports are answered"
                );
                self.warned = true;
            }
            return;
        }
        for ip in want.difference(&self.have.clone()) {
            match corral_runtime::local_address::add(*ip) {
                Ok(()) => {
                    self.have.insert(*ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "cannot add a cluster IP to lo"),
            }
        }
        // Record additions before anything listens on them, and removals after.
        self.save();
        for ip in self.have.difference(want).copied().collect::<Vec<_>>() {
            match corral_runtime::local_address::remove(ip) {
                Ok(()) => {
                    self.have.remove(&ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "cannot remove a cluster IP from lo"),
            }
        }
        self.save();
    }

    fn save(&self) {
        let body: String = self.have.iter().map(|ip| format!("{ip}\n")).collect();
        let tmp = self.file.with_extension("tmp");
        if std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .is_err()
        {
            tracing::warn!(file = %self.file.display(), "cannot record the proxy's local addresses");
        }
    }
}
