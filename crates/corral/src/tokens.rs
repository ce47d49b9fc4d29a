//! Bearer tokens: the admin token in `DIR/pki/admin.token`, and join tokens that let
//! `corral agent` on another machine join the cluster.
//!
//! A join token is a Kubernetes bootstrap token (a Secret `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in kube-system), so it can be listed, inspected and
//! revoked with kubectl. What `corral token create` prints also carries the hash of the
//! cluster CA, as k3s' tokens do: `K10<sha256 of the CA PEM>::<id>.<secret>`. The joining
//! agent fetches the CA from `/cacerts` without trusting the connection, and trusts it only
//! if its hash matches the token, so the token alone is enough to join safely.

use corral_api::Identity;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::HashMap;
use std::sync::RwLock;

pub const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";

/// One usable join token.
#[derive(Clone, Debug)]
struct JoinToken {
    secret: String,
    /// Seconds since the epoch after which it no longer works.
    expires: Option<i64>,
}

pub struct Tokens {
    admin: String,
    joins: RwLock<HashMap<String, JoinToken>>,
}

impl Tokens {
    pub fn new(admin: String) -> Tokens {
        Tokens {
            admin,
            joins: RwLock::new(HashMap::new()),
        }
    }

    /// Who a bearer token belongs to, if anyone.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        if !self.admin.is_empty() && constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            return Some(Identity {
                user: "corral-admin".into(),
                groups: vec!["system:masters".into()],
            });
        }
        let (id, secret) = token.split_once('.')?;
        let joins = self.joins.read().unwrap();
        let t = joins.get(id)?;
        if !constant_time_eq(secret.as_bytes(), t.secret.as_bytes()) {
            return None;
        }
        if t.expires
            .is_some_and(|e| e <= k8s_openapi::jiff::Timestamp::now().as_second())
        {
            return None;
        }
        Some(Identity {
            user: format!("system:bootstrap:{id}"),
            groups: vec![
                "system:bootstrappers".into(),
                "system:nodes".into(),
                "system:authenticated".into(),
            ],
        })
    }

    fn apply(&self, s: &Secret) {
        let Some(name) = s.metadata.name.as_deref() else {
            return;
        };
        let Some(id) = name.strip_prefix(SECRET_PREFIX) else {
            return;
        };
        let field = |k: &str| -> Option<String> {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .or_else(|| s.string_data.as_ref().and_then(|d| d.get(k)).cloned())
        };
        let usable = s.type_.as_deref() == Some(TOKEN_TYPE)
            && field("token-id").as_deref() == Some(id)
            && field("usage-bootstrap-authentication").as_deref() == Some("true");
        let mut joins = self.joins.write().unwrap();
        match field("token-secret").filter(|_| usable) {
            Some(secret) => {
                let expires = field("expiration")
                    .and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| t.as_second());
                joins.insert(id.to_string(), JoinToken { secret, expires });
            }
            None => {
                joins.remove(id);
            }
        }
    }

    fn remove(&self, s: &Secret) {
        if let Some(id) = s
            .metadata
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix(SECRET_PREFIX))
        {
            self.joins.write().unwrap().remove(id);
        }
    }

    /// Keeps the join tokens in step with the bootstrap-token Secrets until `stop`.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        client: kube::Client,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let api: Api<Secret> = Api::namespaced(client, "kube-system");
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let ev = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Ok(Event::Init)) => self.joins.write().unwrap().clear(),
                Some(Ok(Event::InitApply(s))) | Some(Ok(Event::Apply(s))) => self.apply(&s),
                Some(Ok(Event::Delete(s))) => self.remove(&s),
                Some(Ok(Event::InitDone)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "join token watch failed; retrying"),
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parts of a printed join token.
#[allow(dead_code)]
#[derive(Debug, PartialEq)]
pub struct JoinTokenParts {
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

#[allow(dead_code)]
impl JoinTokenParts {
    pub fn parse(s: &str) -> Result<JoinTokenParts, String> {
        let bad = || format!("not a corral join token (want K10<ca hash>::<id>.<secret>): {s:?}");
        let rest = s.trim().strip_prefix("K10").ok_or_else(bad)?;
        let (hash, cred) = rest.split_once("::").ok_or_else(bad)?;
        let (id, secret) = cred.split_once('.').ok_or_else(bad)?;
        let ok = hash.len() == 64
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
            && id.len() == 6
            && secret.len() == 16
            && id
                .bytes()
                .chain(secret.bytes())
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(bad());
        }
        Ok(JoinTokenParts {
            ca_hash: hash.to_ascii_lowercase(),
            id: id.into(),
            secret: secret.into(),
        })
    }

    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(id: &str, secret: &str, expiration: Option<&str>) -> Secret {
        let mut data: std::collections::BTreeMap<String, ByteString> = [
            ("token-id", id),
            ("token-secret", secret),
            ("usage-bootstrap-authentication", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        if let Some(e) = expiration {
            data.insert("expiration".into(), ByteString(e.as_bytes().to_vec()));
        }
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("{SECRET_PREFIX}{id}")),
                ..Default::default()
            },
            type_: Some(TOKEN_TYPE.into()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn join_tokens_authenticate_until_revoked_or_expired() {
        let t = Tokens::new("admintoken".into());
        assert_eq!(t.identify("admintoken").unwrap().user, "corral-admin");
        assert!(t.identify("abcdef.0123456789abcdef").is_none());
        let s = secret("abcdef", "0123456789abcdef", None);
        t.apply(&s);
        let who = t.identify("abcdef.0123456789abcdef").unwrap();
        assert_eq!(who.user, "system:bootstrap:abcdef");
        assert!(who.groups.contains(&"system:nodes".to_string()));
        assert!(t.identify("abcdef.0123456789abcdeX").is_none());
        t.remove(&s);
        assert!(t.identify("abcdef.0123456789abcdef").is_none());
        t.apply(&secret(
            "zzzzzz",
            "0123456789abcdef",
            Some("2001-01-01T00:00:00Z"),
        ));
        assert!(t.identify("zzzzzz.0123456789abcdef").is_none(), "expired");
    }

    #[test]
    fn printed_tokens_parse_and_bad_ones_are_refused() {
        let h = "a".repeat(64);
        let p = JoinTokenParts::parse(&format!("K10{h}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(p.bearer(), "abcdef.0123456789abcdef");
        for bad in [
            "abcdef.0123456789abcdef".to_string(),
            format!("K10{h}::abcdef"),
            format!("K10{}::abcdef.0123456789abcdef", "a".repeat(63)),
            format!("K10{h}::ABCDEF.0123456789abcdef"),
        ] {
            assert!(JoinTokenParts::parse(&bad).is_err(), "{bad}");
        }
    }
}
