//! Routes to other nodes' pod ranges, synced in a network namespace this test makes (so the
//! host's routes and forwarding flags are never touched): installed via the peer's
//! address, forwarding turned on only for the bridge and the interface toward the peer,
//! someone else's route left alone, ours removed when no longer wanted, and a gateway
//! that is not on a connected network reported, not fatal.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use corral_runtime::node_routes::{sync_pod_routes, PodRoute};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread that has entered the network namespace `name`.
fn inside<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

fn read(ns: &str, path: &'static str) -> String {
    inside(ns, move || {
        std::fs::read_to_string(path).unwrap().trim().to_string()
    })
}

#[test]
fn routes_to_other_nodes_pods_are_synced_with_forwarding_only_where_needed() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (network namespaces)");
        return;
    }
    let ns = Netns(format!("crt-routes-{}", std::process::id()));
    let name = ns.0.clone();
    ip(&["netns", "add", &name]);
    let n = |args: &[&str]| ip(&[&["-n", name.as_str()], args].concat());
    n(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    n(&["addr", "add", "10.77.0.1/24", "dev", "up0"]);
    n(&["link", "set", "up0", "up"]);
    n(&["link", "set", "up1", "up"]);
    n(&["link", "add", "crt-rtbr", "type", "bridge"]);
    n(&[
        "route",
        "add",
        "10.43.0.0/24",
        "via",
        "10.77.0.9",
        "proto",
        "static",
    ]);

    let peer = |third: u8, via: [u8; 4]| PodRoute {
        dst: Ipv4Addr::new(10, 42, third, 0),
        prefix: 24,
        via: Ipv4Addr::from(via),
    };
    let want = vec![peer(1, [10, 77, 0, 2]), peer(2, [10, 77, 0, 3])];
    let report = inside(&name, move || sync_pod_routes("crt-rtbr", &want).unwrap());
    assert_eq!(
        (report.installed, report.failed.len()),
        (2, 0),
        "{report:?}"
    );
    assert!(report.bridge_forwarding);
    let routes = n(&["route", "show"]);
    assert!(
        routes.contains("10.42.1.0/24 via 10.77.0.2 dev up0 proto 196"),
        "{routes}"
    );
    assert!(
        routes.contains("10.42.2.0/24 via 10.77.0.3 dev up0 proto 196"),
        "{routes}"
    );
    assert_eq!(read(&name, "/proc/sys/net/ipv4/conf/up0/forwarding"), "1");
    assert_eq!(
        read(&name, "/proc/sys/net/ipv4/conf/crt-rtbr/forwarding"),
        "1"
    );
    assert_eq!(read(&name, "/proc/sys/net/ipv4/conf/up1/forwarding"), "0");
    assert_eq!(read(&name, "/proc/sys/net/ipv4/ip_forward"), "0");

    // A node that moved, one that left, one whose address is not on a connected network.
    let want = vec![peer(1, [10, 77, 0, 4]), peer(3, [192, 0, 2, 1])];
    let report = inside(&name, move || sync_pod_routes("crt-rtbr", &want).unwrap());
    assert_eq!((report.installed, report.removed), (1, 2), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0.via, Ipv4Addr::new(192, 0, 2, 1));
    let routes = n(&["route", "show"]);
    assert!(
        routes.contains("10.42.1.0/24 via 10.77.0.4 dev up0 proto 196"),
        "{routes}"
    );
    assert!(!routes.contains("10.42.2.0/24"), "{routes}");
    assert!(!routes.contains("10.42.3.0/24"), "{routes}");
    assert!(
        routes.contains("10.43.0.0/24 via 10.77.0.9"),
        "someone else's route: {routes}"
    );

    // The bridge comes with a node's first pod: until then the sync says it is missing.
    let want = vec![peer(1, [10, 77, 0, 4])];
    let report = inside(&name, move || sync_pod_routes("crt-nobr", &want).unwrap());
    assert!(
        !report.bridge_forwarding && report.installed == 1,
        "{report:?}"
    );

    // Nothing wanted: ours go, theirs stays.
    let report = inside(&name, || sync_pod_routes("crt-rtbr", &[]).unwrap());
    assert_eq!(report.removed, 1);
    let routes = n(&["route", "show"]);
    assert!(!routes.contains("proto 196"), "{routes}");
    assert!(routes.contains("10.43.0.0/24 via 10.77.0.9"), "{routes}");
}
