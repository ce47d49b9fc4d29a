//! Outlier detection, as Envoy does it for a DestinationRule's outlierDetection: an
//! endpoint that returns `consecutive5xxErrors` 5xx replies in a row (or
//! `consecutiveGatewayErrors` 502/503/504 or connection failures) is ejected for
//! `baseEjectionTime` times the number of times it has been ejected; it comes back by
//! itself when that time is over (half-open: one more failure ejects it again, for
//! longer), and a success closes the circuit and resets the count. At most
//! `maxEjectionPercent` of a cluster's endpoints are out at once, but always at least one
//! may be.

use crate::mesh::config::{parse_duration, OutlierDetection};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl Settings {
    pub fn from_spec(o: &OutlierDetection) -> Option<Settings> {
        let c5 = o.consecutive_5xx_errors.or(o.consecutive_errors);
        let gw = o.consecutive_gateway_errors;
        // Istio: 0 turns a detector off; neither set means Envoy's default of 5 for 5xx.
        let (c5, gw) = match (c5, gw) {
            (None, None) => (Some(5), None),
            (a, b) => (a.filter(|n| *n > 0), b.filter(|n| *n > 0)),
        };
        if c5.is_none() && gw.is_none() {
            return None;
        }
        Some(Settings {
            consecutive_5xx: c5,
            consecutive_gateway: gw,
            base_ejection: o
                .base_ejection_time
                .as_deref()
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        })
    }
}

/// What happened to one request, as the detector counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than a gateway error.
    ServerError,
    /// 502, 503, 504, or no connection at all.
    GatewayError,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Health of every endpoint of every cluster, kept across configuration changes.
#[derive(Debug, Default)]
pub struct Registry {
    hosts: Mutex<HashMap<(String, SocketAddr), Health>>,
}

impl Registry {
    /// Whether `addr` is ejected from `cluster` now.
    pub fn is_ejected(&self, cluster: &str, addr: SocketAddr) -> bool {
        self.is_ejected_at(cluster, addr, Instant::now())
    }

    fn is_ejected_at(&self, cluster: &str, addr: SocketAddr, now: Instant) -> bool {
        let hosts = self.hosts.lock().unwrap();
        hosts
            .get(&(cluster.to_string(), addr))
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Records a result; returns true when it ejected the endpoint.
    pub fn record(
        &self,
        cluster: &str,
        cluster_size: usize,
        addr: SocketAddr,
        outcome: Outcome,
        settings: &Settings,
    ) -> bool {
        self.record_at(
            cluster,
            cluster_size,
            addr,
            outcome,
            settings,
            Instant::now(),
        )
    }

    fn record_at(
        &self,
        cluster: &str,
        cluster_size: usize,
        addr: SocketAddr,
        outcome: Outcome,
        settings: &Settings,
        now: Instant,
    ) -> bool {
        let mut hosts = self.hosts.lock().unwrap();
        let ejected_now = hosts
            .iter()
            .filter(|((c, _), h)| c == cluster && h.ejected_until.is_some_and(|t| t > now))
            .count();
        let h = hosts.entry((cluster.to_string(), addr)).or_default();
        if h.ejected_until.is_some_and(|t| t <= now) {
            // Back from an ejection: counts start again.
            h.ejected_until = None;
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
        }
        match outcome {
            Outcome::Success => {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
                return false;
            }
            Outcome::ServerError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway += 1;
            }
        }
        let tripped = settings
            .consecutive_5xx
            .is_some_and(|n| h.consecutive_5xx >= n)
            || settings
                .consecutive_gateway
                .is_some_and(|n| h.consecutive_gateway >= n);
        if !tripped || h.ejected_until.is_some() {
            return false;
        }
        let allowed = (cluster_size * settings.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= allowed {
            return false;
        }
        h.ejections += 1;
        h.ejected_until = Some(now + settings.base_ejection * h.ejections);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        tracing::info!(%cluster, endpoint = %addr, ejections = h.ejections,
            "outlier detection ejected an endpoint");
        true
    }

    /// Forgets clusters no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.hosts.lock().unwrap().retain(|(c, _), _| keep(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: Duration) -> Settings {
        Settings {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            base_ejection: base,
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn opens_half_opens_and_closes() {
        // A clock of our own: the test does not depend on how busy the machine is.
        let r = Registry::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let s = settings(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let record = |o, secs| r.record_at("c", 2, a, o, &s, at(secs));
        assert!(!record(Outcome::ServerError, 0));
        assert!(!r.is_ejected_at("c", a, at(0)));
        assert!(
            record(Outcome::ServerError, 1),
            "second 5xx in a row ejects"
        );
        assert!(r.is_ejected_at("c", a, at(5)));
        assert!(
            !r.is_ejected_at("c", a, at(12)),
            "back after the ejection time"
        );
        record(Outcome::ServerError, 12);
        assert!(record(Outcome::GatewayError, 13));
        assert!(
            r.is_ejected_at("c", a, at(13 + 15)),
            "the second ejection lasts twice as long"
        );
        assert!(!r.is_ejected_at("c", a, at(13 + 21)));
        assert!(!record(Outcome::Success, 34));
        assert!(
            !record(Outcome::ServerError, 35),
            "a success reset the count"
        );
    }

    #[test]
    fn at_most_max_ejection_percent_but_at_least_one() {
        let r = Registry::default();
        let mut s = settings(Duration::from_secs(60));
        s.max_ejection_percent = 10;
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        for _ in 0..2 {
            r.record("c", 2, a, Outcome::ServerError, &s);
            r.record("c", 2, b, Outcome::ServerError, &s);
        }
        assert!(r.is_ejected("c", a));
        assert!(
            !r.is_ejected("c", b),
            "10% of 2 is less than one: only one goes"
        );
    }
}
