//! Istio's VirtualService and DestinationRule as the proxy reads them: the fields it acts
//! on, in Istio's names. Unknown fields are ignored here (the API keeps them), so a
//! resource written for Istio parses even where corral does not implement a field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatch>,
    pub route: Vec<RouteDestination>,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<String>,
    pub retries: Option<Retries>,
    pub fault: Option<Fault>,
    pub mirror: Option<Destination>,
    pub mirror_percentage: Option<Percent>,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

/// One of exact, prefix or regex (RE2 syntax, matching the whole value).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<i64>,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PortSelector {
    pub number: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    pub redirect_code: Option<u16>,
    /// The Gateway API's ReplacePrefixMatch: `uri` replaces only the matched prefix.
    #[serde(skip)]
    pub replace_prefix: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<DirectBody>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DirectBody {
    pub string: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Retries {
    pub attempts: Option<u32>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Delay {
    pub fixed_delay: Option<String>,
    pub percentage: Option<Percent>,
    /// The deprecated integer form of `percentage`.
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Abort {
    pub http_status: Option<u16>,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Percent {
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Headers {
    pub request: Option<HeaderOps>,
    pub response: Option<HeaderOps>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeaderOps {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancer {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_query_parameter_name: Option<String>,
    pub use_source_ip: Option<bool>,
    pub http_cookie: Option<Cookie>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Cookie {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    pub http: Option<HttpPool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpPool {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    /// Deprecated name of consecutive5xxErrors, still in many manifests.
    pub consecutive_errors: Option<u32>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}

/// A Go/Istio duration: "1.5s", "100ms", "1m30s", "2h". None for anything else.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn istio_yaml_parses() {
        let vs: VirtualServiceSpec = serde_json::from_value(json!({
            "hosts": ["reviews"],
            "http": [{
                "match": [{"uri": {"prefix": "/api"}, "headers": {"end-user": {"exact": "jason"}}}],
                "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 90}],
                "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"},
                "fault": {"abort": {"httpStatus": 500, "percentage": {"value": 10}}},
                "somethingNew": true
            }]
        }))
        .unwrap();
        let r = &vs.http[0];
        assert_eq!(
            r.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/api")
        );
        assert_eq!(
            r.route[0].destination.port.as_ref().unwrap().number,
            Some(9080)
        );
        assert_eq!(r.retries.as_ref().unwrap().attempts, Some(3));
        let dr: DestinationRuleSpec = serde_json::from_value(json!({
            "host": "reviews",
            "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}]
        }))
        .unwrap();
        let od = dr.traffic_policy.unwrap().outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx_errors, Some(1));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5"), None);
    }
}
