//! Resource quantities as the scheduler counts them: parsing `resource.Quantity` strings,
//! a pod's effective requests (containers summed, init containers as a maximum, sidecars,
//! overhead) and a node's allocatable, following kube-scheduler's `framework.Resource`.

use k8s_openapi::api::core::v1::{Node, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// kube-scheduler's non-zero defaults for scoring when a container has no request.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A parsed quantity: `value = mantissa * 10^exp10 * 1024^bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    bin: u32,
}

fn parse(s: &str) -> Option<Parsed> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let mut mantissa: u128 = 0;
    let mut exp10: i32 = 0;
    let mut after_dot = false;
    for c in num.chars() {
        if c == '.' {
            after_dot = true;
            continue;
        }
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(c.to_digit(10)? as u128)?;
        if after_dot {
            exp10 -= 1;
        }
    }
    let (extra10, bin) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        other if other.starts_with('e') || other.starts_with('E') => {
            (other[1..].parse::<i32>().ok().filter(|e| e.abs() <= 40)?, 0)
        }
        _ => return None,
    };
    Some(Parsed {
        negative,
        mantissa,
        exp10: exp10 + extra10,
        bin,
    })
}

/// `value * 10^scale`, rounded up (away from zero for positives), as Kubernetes'
/// `Quantity.Value()` (scale 0) and `MilliValue()` (scale 3) do; saturates at i64 bounds.
fn scaled(p: Parsed, scale: i32) -> i64 {
    let mut num: u128 = p.mantissa;
    for _ in 0..p.bin {
        num = match num.checked_mul(1024) {
            Some(n) => n,
            None => return if p.negative { i64::MIN } else { i64::MAX },
        };
    }
    let exp = p.exp10 + scale;
    let v: u128 = if exp >= 0 {
        let mut v = num;
        for _ in 0..exp {
            v = match v.checked_mul(10) {
                Some(n) => n,
                None => return if p.negative { i64::MIN } else { i64::MAX },
            };
        }
        v
    } else {
        let div = 10u128.checked_pow((-exp) as u32).unwrap_or(u128::MAX);
        if p.negative {
            num / div
        } else {
            num.div_ceil(div)
        }
    };
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    if p.negative {
        -v
    } else {
        v
    }
}

/// The quantity in whole units, rounded up; unparsable quantities count as 0 (the API server
/// validates them, so this only guards against a misbehaving server).
pub fn value(q: &Quantity) -> i64 {
    parse(&q.0).map(|p| scaled(p, 0)).unwrap_or(0)
}

/// The quantity in thousandths, rounded up.
pub fn milli_value(q: &Quantity) -> i64 {
    parse(&q.0).map(|p| scaled(p, 3)).unwrap_or(0)
}

/// Resource names the scheduler tracks beyond cpu, memory, ephemeral-storage and pods:
/// extended resources (`example.com/gpu`), hugepages and attachable volumes.
pub fn is_scalar_resource_name(name: &str) -> bool {
    if name.starts_with("hugepages-") || name.starts_with("attachable-volumes-") {
        return true;
    }
    match name.split_once('/') {
        Some((domain, _)) => {
            !(domain == "kubernetes.io"
                || domain.ends_with(".kubernetes.io")
                || name.starts_with("requests."))
        }
        None => false,
    }
}

/// A vector of resource amounts (cpu in millicores, the rest in units).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub allowed_pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resource {
        let mut r = Resource::default();
        r.add_list(list);
        r
    }

    pub fn add_list(&mut self, list: Option<&BTreeMap<String, Quantity>>) {
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => self.milli_cpu += milli_value(q),
                "memory" => self.memory += value(q),
                "ephemeral-storage" => self.ephemeral_storage += value(q),
                "pods" => self.allowed_pods += value(q),
                n if is_scalar_resource_name(n) => {
                    *self.scalar.entry(n.to_string()).or_default() += value(q)
                }
                _ => {}
            }
        }
    }

    pub fn add(&mut self, other: &Resource) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.allowed_pods += other.allowed_pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, other: &Resource) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.allowed_pods -= other.allowed_pods;
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e -= v;
            if *e == 0 {
                self.scalar.remove(k);
            }
        }
    }

    fn set_max(&mut self, other: &Resource) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

fn container_requests(list: Option<&BTreeMap<String, Quantity>>, non_missing: bool) -> Resource {
    let mut r = Resource::from_list(list);
    if non_missing {
        let has = |k: &str| list.is_some_and(|l| l.contains_key(k));
        if !has("cpu") {
            r.milli_cpu += DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has("memory") {
            r.memory += DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

/// A pod's requests as kube-scheduler computes them (component-helpers `PodRequests`):
/// regular containers summed; restartable init containers (sidecars) added to that sum and
/// to every later init container; the maximum with any init container; plus overhead.
/// With `non_missing`, a container without a cpu/memory request counts the scoring defaults
/// (100m, 200Mi), which is what the scoring plugins use.
pub fn pod_requests(spec: &PodSpec, non_missing: bool) -> Resource {
    let mut reqs = Resource::default();
    for c in &spec.containers {
        reqs.add(&container_requests(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            non_missing,
        ));
    }
    let mut sidecars = Resource::default();
    let mut init_max = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let mut creqs = container_requests(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            non_missing,
        );
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&creqs);
            sidecars.add(&creqs);
            creqs = sidecars.clone();
        } else {
            creqs.add(&sidecars);
        }
        init_max.set_max(&creqs);
    }
    reqs.set_max(&init_max);
    reqs.add_list(spec.overhead.as_ref());
    reqs
}

/// A node's allocatable resources (status.allocatable).
pub fn node_allocatable(node: &Node) -> Resource {
    Resource::from_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ResourceRequirements};

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn quantities_round_up_like_kubernetes() {
        assert_eq!(milli_value(&q("100m")), 100);
        assert_eq!(milli_value(&q("1")), 1000);
        assert_eq!(milli_value(&q("0.5")), 500);
        assert_eq!(milli_value(&q("1.5")), 1500);
        assert_eq!(milli_value(&q("2500u")), 3); // 2.5m rounds up
        assert_eq!(value(&q("1Gi")), 1 << 30);
        assert_eq!(value(&q("128Gi")), 128i64 << 30);
        assert_eq!(value(&q("1G")), 1_000_000_000);
        assert_eq!(value(&q("1.5Ki")), 1536);
        assert_eq!(value(&q("1e3")), 1000);
        assert_eq!(value(&q("1E3")), 1000);
        assert_eq!(value(&q("500m")), 1); // Value() rounds up
        assert_eq!(value(&q("110")), 110);
        assert_eq!(value(&q("12Q")), 0);
        assert_eq!(value(&q("")), 0);
        assert_eq!(value(&q("99999Ei")), i64::MAX);
    }

    fn container(reqs: &[(&str, &str)], restart: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            restart_policy: restart.map(String::from),
            resources: Some(ResourceRequirements {
                requests: Some(reqs.iter().map(|(k, v)| (k.to_string(), q(v))).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_sum_containers_max_init_plus_overhead() {
        // kube-scheduler's own example: init 2cpu/1G and 2cpu/3G, containers 2cpu/1G and
        // 1cpu/1G -> 3 cpu, 3G.
        let spec = PodSpec {
            init_containers: Some(vec![
                container(&[("cpu", "2"), ("memory", "1G")], None),
                container(&[("cpu", "2"), ("memory", "3G")], None),
            ]),
            containers: vec![
                container(&[("cpu", "2"), ("memory", "1G")], None),
                container(&[("cpu", "1"), ("memory", "1G")], None),
            ],
            overhead: Some([("cpu".to_string(), q("250m"))].into()),
            ..Default::default()
        };
        let r = pod_requests(&spec, false);
        assert_eq!(r.milli_cpu, 3250);
        assert_eq!(r.memory, 3_000_000_000);
    }

    #[test]
    fn sidecars_add_to_the_sum_and_to_later_init_containers() {
        let spec = PodSpec {
            init_containers: Some(vec![
                container(&[("cpu", "1")], Some("Always")),
                container(&[("cpu", "3")], None),
            ]),
            containers: vec![container(&[("cpu", "1")], None)],
            ..Default::default()
        };
        // sum = 1 (container) + 1 (sidecar) = 2; init phase: 3 + 1 sidecar = 4 -> 4.
        assert_eq!(pod_requests(&spec, false).milli_cpu, 4000);
    }

    #[test]
    fn non_missing_defaults_apply_per_container() {
        let spec = PodSpec {
            containers: vec![
                container(&[("cpu", "1")], None),
                Container {
                    name: "b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = pod_requests(&spec, true);
        assert_eq!(r.milli_cpu, 1100);
        assert_eq!(r.memory, 2 * DEFAULT_MEMORY_REQUEST);
        let r = pod_requests(&spec, false);
        assert_eq!((r.milli_cpu, r.memory), (1000, 0));
    }

    #[test]
    fn scalar_resources() {
        assert!(is_scalar_resource_name("example.com/gpu"));
        assert!(is_scalar_resource_name("hugepages-2Mi"));
        assert!(!is_scalar_resource_name("kubernetes.io/foo"));
        assert!(!is_scalar_resource_name("cpu"));
        let spec = PodSpec {
            containers: vec![container(&[("example.com/gpu", "2")], None)],
            ..Default::default()
        };
        assert_eq!(
            pod_requests(&spec, false).scalar.get("example.com/gpu"),
            Some(&2)
        );
    }
}
