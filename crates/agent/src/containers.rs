//! From a pod's container to what the runtime runs: the command (image entrypoint/cmd vs
//! command/args, as Kubernetes combines them), the environment (image, envFrom, env with
//! ConfigMap/Secret/field/resource references, `$(VAR)` expansion), the user, the working
//! directory, volume mounts and cgroup limits.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use corral_images::Image;
use corral_runtime::{ContainerSpec, Mount, Resources, Rootfs};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

use crate::expand::expand;
use crate::quantity;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a container could not be made; the first is the pod author's to fix
/// (`CreateContainerConfigError`), the second the node's (`CreateContainerError`).
#[derive(Debug)]
pub enum BuildError {
    Config(String),
    Create(String),
}

/// ConfigMaps and Secrets of the pod's namespace, fetched once per build.
pub struct Objects {
    client: Client,
    namespace: String,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Objects {
    pub fn new(client: Client, namespace: &str) -> Objects {
        Objects {
            client,
            namespace: namespace.to_string(),
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    pub async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, String> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| format!("get configmap {name:?}: {e}"))?;
            self.config_maps.insert(name.to_string(), got);
        }
        Ok(self.config_maps[name].as_ref())
    }

    pub async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, String> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| format!("get secret {name:?}: {e}"))?;
            self.secrets.insert(name.to_string(), got);
        }
        Ok(self.secrets[name].as_ref())
    }
}

/// Every key of a ConfigMap with its bytes.
pub fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// Every key of a Secret with its (decoded) bytes.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// What a pod field reference (`fieldRef.fieldPath`) reads.
pub fn field_value(
    pod: &Pod,
    path: &str,
    pod_ip: Option<IpAddr>,
    host_ip: IpAddr,
) -> Result<String, String> {
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
        rest.strip_suffix("']").map(str::to_string)
    };
    if let Some(k) = subscript("metadata.labels") {
        return Ok(pod.labels().get(&k).cloned().unwrap_or_default());
    }
    if let Some(k) = subscript("metadata.annotations") {
        return Ok(pod.annotations().get(&k).cloned().unwrap_or_default());
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "metadata.labels" => format_map(pod.labels()),
        "metadata.annotations" => format_map(pod.annotations()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.map(|i| i.to_string()).unwrap_or_default(),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Node capacity used when a container sets no limit (as kubelet does for resourceFieldRef).
#[derive(Clone, Copy, Debug)]
pub struct NodeAllocatable {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
}

/// What a `resourceFieldRef` reads: the value divided by the divisor, rounded up.
pub fn resource_value(
    pod: &Pod,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
    node: NodeAllocatable,
) -> Result<String, String> {
    let c = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container {container:?} not found"))?;
    let (kind, res) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let get = |kind: &str| {
        let r = c.resources.as_ref()?;
        let m = if kind == "limits" {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        }?;
        quantity::parse(&m.get(res)?.0)
    };
    let node_value = match res {
        "cpu" => node.cpus as f64,
        "memory" => node.memory_bytes as f64,
        "ephemeral-storage" => node.ephemeral_bytes as f64,
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let value = match kind {
        "limits" => get("limits").unwrap_or(node_value),
        "requests" => get("requests").or_else(|| get("limits")).unwrap_or(0.0),
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let div = match divisor {
        Some(d) => quantity::parse(d)
            .filter(|d| *d > 0.0)
            .ok_or("bad divisor")?,
        None => 1.0,
    };
    Ok(((value / div) - 1e-9)
        .ceil()
        .max(if value > 0.0 { 1.0 } else { 0.0 })
        .to_string())
}

/// The argv Kubernetes runs: `command` replaces the entrypoint (and drops the image's cmd),
/// `args` replaces the cmd.
pub fn argv(image: &corral_images::ImageConfig, c: &Container) -> Vec<String> {
    let command = c.command.as_ref().filter(|v| !v.is_empty());
    let args = c.args.as_ref().filter(|v| !v.is_empty());
    match (command, args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// Looks a user or group name up in the image's passwd/group file (topmost layer first).
fn lookup_name(layers: &[PathBuf], file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    for dir in layers.iter().rev() {
        let Ok(text) = std::fs::read_to_string(dir.join("etc").join(file)) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 3 && f[0] == name {
                let id = f[2].parse().ok()?;
                let gid = f.get(3).and_then(|g| g.parse().ok());
                return Some((id, gid));
            }
        }
        return None;
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The user a container runs as: securityContext (container, then pod), else the image's
/// USER; with runAsNonRoot, refuses root as kubelet does.
pub fn user(pod: &Pod, c: &Container, image: &Image) -> Result<User, String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let image_user = image.config.user.clone().unwrap_or_default();
    let (img_u, img_g) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.clone(), None),
    };
    let (uid, passwd_gid) = match run_as_user {
        Some(u) => (u as u32, None),
        None if img_u.is_empty() => (0, None),
        None => match img_u.parse::<u32>() {
            Ok(u) => (u, None),
            Err(_) => {
                if non_root {
                    return Err(format!(
                        "container has runAsNonRoot and image has non-numeric user ({img_u}), cannot verify user is non-root (pod: \"{}_{}({})\", container: {})",
                        pod.name_any(),
                        pod.namespace().unwrap_or_default(),
                        pod.uid().unwrap_or_default(),
                        c.name
                    ));
                }
                let (u, g) = lookup_name(&image.layers, "passwd", &img_u).ok_or_else(|| {
                    format!("unable to find user {img_u}: no matching entries in passwd file")
                })?;
                (u, g)
            }
        },
    };
    if non_root && uid == 0 {
        let msg = if run_as_user.is_some() {
            "container's runAsUser breaks non-root policy".to_string()
        } else {
            "container has runAsNonRoot and image will run as root".to_string()
        };
        return Err(format!(
            "{msg} (pod: \"{}_{}({})\", container: {})",
            pod.name_any(),
            pod.namespace().unwrap_or_default(),
            pod.uid().unwrap_or_default(),
            c.name
        ));
    }
    let gid = match (run_as_group, img_g) {
        (Some(g), _) => g as u32,
        (None, Some(g)) => match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup_name(&image.layers, "group", &g)
                .map(|x| x.0)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        (None, None) => passwd_gid.unwrap_or(0),
    };
    let mut groups: Vec<u32> = psc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    if let Some(fs) = psc.and_then(|s| s.fs_group) {
        groups.push(fs as u32);
    }
    groups.sort_unstable();
    groups.dedup();
    Ok(User { uid, gid, groups })
}

/// Cgroup limits from the container's resources.
pub fn resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let limit = |k: &str| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(k));
    let request = |k: &str| r.and_then(|r| r.requests.as_ref()).and_then(|m| m.get(k));
    Resources {
        cpu_millis_limit: limit("cpu").and_then(|q| quantity::cpu_millis(&q.0)),
        cpu_millis_request: request("cpu")
            .or_else(|| limit("cpu"))
            .and_then(|q| quantity::cpu_millis(&q.0)),
        memory_limit_bytes: limit("memory").and_then(|q| quantity::bytes(&q.0)),
        pids_limit: None,
    }
}

/// Everything the environment of one container is built from.
pub struct EnvInputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image_env: &'a [String],
    pub pod_ip: Option<IpAddr>,
    pub host_ip: IpAddr,
    pub node: NodeAllocatable,
    pub hostname: &'a str,
    /// The Service variables (service_env), added where the pod sets nothing of that name
    /// and visible to `$(VAR)` in env values, as the kubelet does.
    pub service_env: &'a std::collections::BTreeMap<String, String>,
}

/// The container's environment as `KEY=VALUE`: image env, then envFrom, then env (later
/// wins), `$(VAR)` in env values expanded against what came before. Also returns the
/// variables the pod itself defines, which are what `$(VAR)` in command and args sees.
pub async fn environment(
    inp: &EnvInputs<'_>,
    objects: &mut Objects,
) -> Result<(Vec<String>, HashMap<String, String>), String> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set =
        |order: &mut Vec<String>, vars: &mut HashMap<String, String>, k: String, v: String| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
    for e in inp.image_env {
        if let Some((k, v)) = e.split_once('=') {
            set(&mut order, &mut vars, k.to_string(), v.to_string());
        }
    }
    if !vars.contains_key("PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').expect("constant");
        set(&mut order, &mut vars, k.into(), v.into());
    }
    set(
        &mut order,
        &mut vars,
        "HOSTNAME".into(),
        inp.hostname.to_string(),
    );
    // Variables set by the pod, for $(VAR) expansion (image variables do not count).
    let mut pod_vars: HashMap<String, String> = HashMap::new();
    for from in inp.container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match objects.config_map(&r.name).await? {
                Some(cm) => config_map_data(cm),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secret(&r.name).await? {
                Some(s) => secret_data(s),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            let v = String::from_utf8_lossy(&v).into_owned();
            pod_vars.insert(format!("{prefix}{k}"), v.clone());
            set(&mut order, &mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in inp.container.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(r) = &src.config_map_key_ref {
                match objects.config_map(&r.name).await? {
                    Some(cm) => match config_map_data(cm).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                inp.pod.namespace().unwrap_or_default(),
                                r.name
                            ))
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &src.secret_key_ref {
                match objects.secret(&r.name).await? {
                    Some(s) => match secret_data(s).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                inp.pod.namespace().unwrap_or_default(),
                                r.name
                            ))
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else if let Some(f) = &src.field_ref {
                field_value(inp.pod, &f.field_path, inp.pod_ip, inp.host_ip)?
            } else if let Some(r) = &src.resource_field_ref {
                let cname = r
                    .container_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| inp.container.name.clone());
                resource_value(
                    inp.pod,
                    &cname,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    inp.node,
                )?
            } else {
                String::new()
            }
        } else {
            let raw = e.value.clone().unwrap_or_default();
            expand(&raw, |n| {
                pod_vars.get(n).or_else(|| inp.service_env.get(n)).cloned()
            })
        };
        pod_vars.insert(e.name.clone(), value.clone());
        set(&mut order, &mut vars, e.name.clone(), value);
    }
    for (k, v) in inp.service_env {
        if !pod_vars.contains_key(k) {
            set(&mut order, &mut vars, k.clone(), v.clone());
        }
    }
    let env = order
        .into_iter()
        .map(|k| {
            let v = &vars[&k];
            format!("{k}={v}")
        })
        .collect();
    Ok((env, pod_vars))
}

/// The mounts for the container's volumeMounts, given where each volume is on the host.
pub fn mounts(c: &Container, volumes: &HashMap<String, PathBuf>) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&vm.name)
            .ok_or_else(|| format!("volume {:?} not found in the pod", vm.name))?;
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                    return Err(format!("invalid subPath {sub:?}"));
                }
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| format!("create subPath {}: {e}", p.display()))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(Mount {
            source,
            destination: vm.mount_path.clone(),
            readonly: vm.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Everything `build` needs besides the container itself.
pub struct BuildInputs<'a> {
    pub env: EnvInputs<'a>,
    pub image: &'a Image,
    pub volumes: &'a HashMap<String, PathBuf>,
    pub id: String,
    pub log_path: PathBuf,
}

/// The runtime's spec for one run of the container.
pub async fn build(
    inp: BuildInputs<'_>,
    objects: &mut Objects,
) -> Result<ContainerSpec, BuildError> {
    let c = inp.env.container;
    let (env, pod_vars) = environment(&inp.env, objects)
        .await
        .map_err(BuildError::Config)?;
    // $(VAR) in the pod's command and args sees the pod's variables, not the image's.
    let args: Vec<String> = argv(&inp.image.config, c)
        .iter()
        .map(|a| {
            if c.command.is_some() || c.args.is_some() {
                expand(a, |n| pod_vars.get(n).cloned())
            } else {
                a.clone()
            }
        })
        .collect();
    if args.is_empty() {
        return Err(BuildError::Config(
            "no command specified: the image has no entrypoint or cmd and the container sets no command".into(),
        ));
    }
    let user = user(inp.env.pod, c, inp.image).map_err(BuildError::Config)?;
    let mounts = mounts(c, inp.volumes).map_err(BuildError::Create)?;
    let sc = c.security_context.as_ref();
    let mut spec = ContainerSpec::new(
        inp.id,
        Rootfs::Overlay {
            lower_dirs: inp.image.layers.clone(),
        },
        args,
        inp.log_path,
    );
    spec.env = env;
    spec.cwd = c.working_dir.clone().filter(|w| !w.is_empty()).or_else(|| {
        inp.image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
    });
    spec.uid = user.uid;
    spec.gid = user.gid;
    spec.additional_gids = user.groups;
    spec.mounts = mounts;
    spec.readonly_rootfs = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    // Kubernetes' AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false.
    spec.no_new_privileges = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    spec.resources = resources(c);
    spec.tty = c.tty.unwrap_or(false);
    spec.stdin = c.stdin.unwrap_or(false);
    spec.stdin_once = spec.stdin && c.stdin_once.unwrap_or(false);
    if let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) {
        let mut set: Vec<String> = corral_runtime::DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let norm = |s: &String| s.trim_start_matches("CAP_").to_ascii_uppercase();
        let drop: Vec<String> = caps.drop.iter().flatten().map(norm).collect();
        if drop.iter().any(|d| d == "ALL") {
            set.clear();
        } else {
            set.retain(|c| !drop.contains(c));
        }
        for a in caps.add.iter().flatten().map(norm) {
            if !set.contains(&a) {
                set.push(a);
            }
        }
        spec.capabilities = Some(set);
    }
    if sc.and_then(|s| s.privileged) == Some(true) {
        // The runtime expands ALL to every capability this kernel has.
        spec.capabilities = Some(vec!["ALL".into()]);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_images::ImageConfig;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn argv_follows_kubernetes() {
        let img = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into()],
            ..Default::default()
        };
        let c = |v| argv(&img, &container(v));
        assert_eq!(c(serde_json::json!({"name": "a"})), ["/ep", "c1"]);
        assert_eq!(c(serde_json::json!({"name": "a", "command": ["x"]})), ["x"]);
        assert_eq!(
            c(serde_json::json!({"name": "a", "args": ["y"]})),
            ["/ep", "y"]
        );
        assert_eq!(
            c(serde_json::json!({"name": "a", "command": ["x"], "args": ["y"]})),
            ["x", "y"]
        );
    }

    #[test]
    fn resource_limits() {
        let c = container(serde_json::json!({"name": "a", "resources": {
            "limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "100m"}}}));
        let r = resources(&c);
        assert_eq!(r.cpu_millis_limit, Some(500));
        assert_eq!(r.cpu_millis_request, Some(100));
        assert_eq!(r.memory_limit_bytes, Some(64 << 20));
    }

    #[test]
    fn resource_field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}]}
        }))
        .unwrap();
        let node = NodeAllocatable {
            cpus: 4,
            memory_bytes: 1 << 30,
            ephemeral_bytes: 1,
        };
        assert_eq!(
            resource_value(&pod, "a", "limits.memory", Some("1Mi"), node).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&pod, "a", "limits.cpu", None, node).unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&pod, "a", "limits.cpu", Some("1m"), node).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&pod, "a", "requests.cpu", Some("1m"), node).unwrap(),
            "250"
        );
        let bare: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}))
        .unwrap();
        assert_eq!(
            resource_value(&bare, "a", "limits.cpu", None, node).unwrap(),
            "4"
        );
    }
}
