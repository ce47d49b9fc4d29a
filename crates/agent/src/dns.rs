//! A pod's /etc/resolv.conf as the kubelet composes it (pkg/kubelet/network/dns): the pod's
//! dnsPolicy picks a base (the cluster DNS Service with the cluster search path, the host's
//! own file, or nothing), pod.spec.dnsConfig is merged in, and the result is cut to what
//! resolvers accept. Written the way containerd writes it: search, nameservers, options.

use k8s_openapi::api::core::v1::PodSpec;
use std::net::IpAddr;

/// validation.MaxDNSNameservers: resolvers read no more than three.
const MAX_NAMESERVERS: usize = 3;
/// validation.MaxDNSSearchPaths and MaxDNSSearchListChars.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;
/// A search domain longer than a DNS-1123 subdomain makes some glibc versions abort.
const MAX_SEARCH_LEN: usize = 253;

/// What a resolv.conf says, in the parts the kubelet keeps.
#[derive(Clone, Debug, Default, PartialEq)]
struct ResolvConf {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl ResolvConf {
    /// As the kubelet's parseResolvConf: nameservers accumulate, the last `search` line
    /// wins (trailing dots dropped, `.` skipped), options accumulate with a later value of
    /// the same option replacing the earlier one.
    fn parse(text: &str) -> ResolvConf {
        let mut rc = ResolvConf::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => rc.nameservers.extend(fields.next().map(String::from)),
                Some("search") => {
                    rc.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    for o in fields {
                        set_option(&mut rc.options, o.to_string());
                    }
                }
                _ => {}
            }
        }
        rc
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn option_name(o: &str) -> &str {
    o.split_once(':').map_or(o, |(n, _)| n)
}

/// Adds an option, replacing one of the same name where it stands.
fn set_option(options: &mut Vec<String>, o: String) {
    match options
        .iter_mut()
        .find(|e| option_name(e) == option_name(&o))
    {
        Some(e) => *e = o,
        None => options.push(o),
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// The resolv.conf for a pod in `namespace`. `host` is the node's own resolv.conf (None
/// when it could not be read); `cluster_dns` the cluster DNS Service address, without which
/// ClusterFirst falls back to the host's file as the kubelet does. None: no file of our
/// own (the pod gets what its image has).
pub(crate) fn resolv_conf(
    spec: &PodSpec,
    namespace: &str,
    cluster_dns: Option<IpAddr>,
    cluster_domain: &str,
    host: Option<&str>,
) -> Option<String> {
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "Default" => Some(false),
        // ClusterFirst, and anything the API should have refused.
        _ => Some(!host_network),
    };
    let dns_config = spec.dns_config.as_ref();
    let mut rc = match cluster {
        None => ResolvConf::default(),
        Some(true) if cluster_dns.is_some() => {
            let host = ResolvConf::parse(host.unwrap_or(""));
            let domain = cluster_domain.trim_end_matches('.');
            let mut searches = Vec::new();
            if !domain.is_empty() {
                searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
            }
            push_unique(&mut searches, host.searches);
            ResolvConf {
                nameservers: cluster_dns.iter().map(|ip| ip.to_string()).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // The host's file: as it is when nothing is merged into it (what the node itself
        // uses, comments and all), else parsed.
        Some(_) => match (host, dns_config) {
            (None, None) => return None,
            (Some(text), None) => return Some(text.to_string()),
            (host, Some(_)) => ResolvConf::parse(host.unwrap_or("")),
        },
    };
    if let Some(c) = dns_config {
        let mut nameservers = rc.nameservers.clone();
        push_unique(&mut nameservers, c.nameservers.iter().flatten().cloned());
        rc.nameservers = nameservers;
        let mut searches = rc.searches.clone();
        push_unique(&mut searches, c.searches.iter().flatten().cloned());
        rc.searches = searches;
        for o in c.options.iter().flatten() {
            let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            set_option(
                &mut rc.options,
                match o.value.as_deref() {
                    Some(v) if !v.is_empty() => format!("{name}:{v}"),
                    _ => name.to_string(),
                },
            );
        }
    }
    rc.nameservers.truncate(MAX_NAMESERVERS);
    rc.searches = fit_searches(rc.searches);
    Some(rc.render())
}

/// The kubelet's formDNSSearchFitsLimits: at most 32 domains, none longer than 253, and a
/// search line of at most 2048 characters (cut from the end).
fn fit_searches(mut s: Vec<String>) -> Vec<String> {
    s.truncate(MAX_SEARCHES);
    s.retain(|d| d.len() <= MAX_SEARCH_LEN);
    while !s.is_empty() && s.join(" ").len() > MAX_SEARCH_CHARS {
        s.pop();
    }
    s
}

/// The pod's /etc/hosts as the kubelet writes it (managedHostsFileContent).
pub(crate) fn hosts_file(
    spec: &PodSpec,
    namespace: &str,
    hostname: &str,
    ip: IpAddr,
    cluster_domain: &str,
) -> String {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let domain = cluster_domain.trim_end_matches('.');
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(sub) => hosts.push_str(&format!(
            "{ip}\t{hostname}.{sub}.{namespace}.svc.{domain}\t{hostname}\n"
        )),
        None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
    }
    for a in spec.host_aliases.iter().flatten() {
        hosts.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{}\n",
            a.ip,
            a.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# host\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example. lab.example\noptions edns0 ndots:2\n";
    const DNS: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 43, 0, 10)));

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns() {
        let rc = resolv_conf(&spec(json!({})), "shop", DNS, "cluster.local", Some(HOST));
        assert_eq!(
            rc.as_deref(),
            Some(
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\n\
                 nameserver 10.43.0.10\n\
                 options ndots:5\n"
            )
        );
        let explicit = resolv_conf(
            &spec(json!({"dnsPolicy": "ClusterFirst"})),
            "shop",
            DNS,
            "cluster.local",
            Some(HOST),
        );
        assert_eq!(explicit, rc);
    }

    #[test]
    fn host_network_and_default_get_the_host_file() {
        for s in [
            json!({"hostNetwork": true}),
            json!({"hostNetwork": true, "dnsPolicy": "ClusterFirst"}),
            json!({"dnsPolicy": "Default"}),
        ] {
            let rc = resolv_conf(&spec(s.clone()), "shop", DNS, "cluster.local", Some(HOST));
            assert_eq!(rc.as_deref(), Some(HOST), "{s}");
        }
        let rc = resolv_conf(
            &spec(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            "shop",
            DNS,
            "cluster.local",
            Some(HOST),
        )
        .unwrap();
        assert!(rc.contains("nameserver 10.43.0.10\n"), "{rc}");
    }

    #[test]
    fn no_cluster_dns_keeps_the_host_file() {
        let rc = resolv_conf(&spec(json!({})), "shop", None, "cluster.local", Some(HOST));
        assert_eq!(rc.as_deref(), Some(HOST));
        assert_eq!(
            resolv_conf(&spec(json!({})), "shop", None, "cluster.local", None),
            None
        );
    }

    #[test]
    fn none_takes_only_dns_config() {
        let s = spec(json!({
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["192.0.2.1"],
                "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]
            }
        }));
        assert_eq!(
            resolv_conf(&s, "shop", DNS, "cluster.local", Some(HOST)).as_deref(),
            Some(
                "search ns1.svc.cluster-domain.example my.dns.search.suffix\n\
                 nameserver 192.0.2.1\n\
                 options ndots:2 edns0\n"
            )
        );
        let empty = spec(json!({"dnsPolicy": "None"}));
        assert_eq!(
            resolv_conf(&empty, "shop", DNS, "cluster.local", Some(HOST)).as_deref(),
            Some("")
        );
    }

    #[test]
    fn dns_config_merges_and_limits() {
        let s = spec(json!({
            "dnsConfig": {
                "nameservers": ["10.43.0.10", "192.0.2.1", "192.0.2.2", "192.0.2.3"],
                "searches": ["extra.example", "svc.cluster.local"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}]
            }
        }));
        let rc = resolv_conf(&s, "shop", DNS, "cluster.local", Some(HOST)).unwrap();
        assert_eq!(
            rc,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example extra.example\n\
             nameserver 10.43.0.10\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n\
             options ndots:1 single-request-reopen\n"
        );
        // Default with a dnsConfig: the host's file parsed, the pod's options win.
        let s = spec(json!({
            "dnsPolicy": "Default",
            "dnsConfig": {"options": [{"name": "ndots", "value": "3"}]}
        }));
        let rc = resolv_conf(&s, "shop", DNS, "cluster.local", Some(HOST)).unwrap();
        assert_eq!(
            rc,
            "search corp.example lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions edns0 ndots:3\n"
        );
        // Search limits: 32 domains at most, none over 253 characters, 2048 in all.
        let long: Vec<String> = (0..40)
            .map(|i| format!("{i}.{}", "d".repeat(100)))
            .collect();
        let mut searches = long.clone();
        searches.insert(0, "x".repeat(300));
        let s = spec(json!({"dnsPolicy": "None", "dnsConfig": {"searches": searches}}));
        let rc = resolv_conf(&s, "shop", DNS, "cluster.local", Some(HOST)).unwrap();
        let line = rc.lines().next().unwrap().strip_prefix("search ").unwrap();
        assert!(line.len() <= 2048, "{}", line.len());
        let kept: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            kept,
            long[..kept.len()]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        assert!(kept.len() < 32);
    }

    #[test]
    fn hosts_file_names_the_pod_under_its_subdomain() {
        let s = spec(json!({"hostname": "web-0", "subdomain": "web",
                            "hostAliases": [{"ip": "192.0.2.9", "hostnames": ["a", "b"]}]}));
        let h = hosts_file(
            &s,
            "shop",
            "web-0",
            "10.42.0.7".parse().unwrap(),
            "corp.local",
        );
        assert!(
            h.contains("10.42.0.7\tweb-0.web.shop.svc.corp.local\tweb-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n192.0.2.9\ta\tb\n"),
            "{h}"
        );
        let h = hosts_file(
            &spec(json!({})),
            "shop",
            "p",
            "10.42.0.8".parse().unwrap(),
            "cluster.local",
        );
        assert!(h.ends_with("10.42.0.8\tp\n"), "{h}");
    }
}
