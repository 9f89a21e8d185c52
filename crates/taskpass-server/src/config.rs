//! The broker's configuration: deserialised from TOML, then validated into an immutable
//! [`Config`]. Every problem found is reported at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use taskpass_attest::OidcIssuerConfig;
use taskpass_core::{Limits, Permissions, RoleName, Roles, TrustDomain};

/// The `[server]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC over TLS.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTPS: JWKS, metadata, health, metrics.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Where the CA, keys and store live. Relative paths are relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The trust domain of agent ids.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The tokens' `iss`; default `https://<http_listen>`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// redb page cache in MiB.
    #[serde(default = "default_store_cache_mb")]
    pub store_cache_mb: u32,
    /// Extra DNS names or IP addresses the server certificate names (besides `localhost` and
    /// the listen IPs), e.g. the name clients dial through a load balancer.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// The `[tokens]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// Token TTL when none is asked for.
    #[serde(default = "default_ttl")]
    pub default_ttl_seconds: u32,
    /// Largest token TTL.
    #[serde(default = "max_ttl")]
    pub max_ttl_seconds: u32,
    /// Task duration when none is asked for.
    #[serde(default = "default_task")]
    pub default_task_seconds: u32,
    /// Largest task duration.
    #[serde(default = "max_task")]
    pub max_task_seconds: u32,
}

/// The `[attestation]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationSection {
    /// Clock skew allowed on attestation exp/nbf/iat.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u32,
    /// Trusted workload issuers.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// Lifetime of an agent certificate the broker issues when none is asked for, hours.
    #[serde(default = "default_certificate_hours")]
    pub certificate_hours: u32,
    /// The longest agent certificate lifetime that may be asked for, hours.
    #[serde(default = "default_max_certificate_hours")]
    pub max_certificate_hours: u32,
    /// Certificate authorities trusted for agents' client certificates, beside the broker's
    /// own CA.
    #[serde(default)]
    pub x509: Vec<X509AuthorityConfig>,
}

/// One `[[attestation.x509]]` table: an external certificate authority (a SPIRE server's
/// bundle, a corporate PKI) and the SPIFFE trust domains it may vouch for. It never vouches
/// for operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509AuthorityConfig {
    /// PEM file of the authority's root certificates.
    pub ca_file: PathBuf,
    /// The trust domains its certificates may name.
    pub trust_domains: Vec<String>,
}

/// The `[validation]` table: who may follow the revocation log and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    /// Let callers without a validator or operator certificate follow WatchRevocations, as
    /// a public CRL is open to anyone. Weaker: anyone who can reach the port learns which
    /// token, task, agent and certificate ids were revoked, and when. Default false.
    pub open_revocation_stream: bool,
    /// How long validators may cache a status list (its `ttl`), seconds, 1 to 60 (default
    /// 30): the longest a revocation takes to reach a validator that reads the lists.
    pub status_list_ttl_seconds: u32,
}

impl Default for ValidationSection {
    fn default() -> Self {
        Self {
            open_revocation_stream: false,
            status_list_ttl_seconds: 30,
        }
    }
}

/// The `[limits]` table: what one client may hold or ask of the broker. Every key has a safe
/// default; `docs/operations.md` lists them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Sustained agent calls per second, per agent (0 = no limit).
    pub agent_requests_per_second: u32,
    /// Calls an agent may make at once above the sustained rate.
    pub agent_burst: u32,
    /// How often refusals that follow from bad input are written to the audit log, as one
    /// entry per (caller, action, rule) with a count.
    pub refusal_audit_interval_seconds: u32,
    /// Distinct (caller, action, rule) keys counted per interval; more are counted together.
    pub refusal_audit_keys: u32,
    /// Open connections per listener (gRPC and HTTPS each), handshakes included.
    pub max_connections: u32,
    /// Open connections per listener from one client IP address.
    pub max_connections_per_address: u32,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_seconds: u32,
    /// A gRPC connection with no call in flight for this long is closed.
    pub idle_timeout_seconds: u32,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` on gRPC connections.
    pub max_concurrent_streams: u32,
    /// Largest request header list accepted on gRPC connections, bytes.
    pub max_header_list_bytes: u32,
    /// Streams a gRPC connection may reset by its errors before it is closed (hyper's
    /// RUSTSEC-2024-0003 protection).
    pub max_local_error_resets: u32,
    /// Keepalive ping interval on gRPC connections.
    pub keepalive_interval_seconds: u32,
    /// A peer that does not answer a keepalive ping within this is dropped.
    pub keepalive_timeout_seconds: u32,
    /// Live WatchRevocations streams, in total.
    pub watch_subscribers: u32,
    /// Live WatchRevocations streams from one client address (an IPv6 client by its /64).
    pub watch_subscribers_per_address: u32,
    /// Live WatchRevocations streams on one connection.
    pub watch_subscribers_per_connection: u32,
    /// How far (in events) a WatchRevocations stream may fall behind the live feed before
    /// it is cut off with RESOURCE_EXHAUSTED, to resume from its cursor.
    pub watch_lag_events: u32,
    /// An HTTPS request's headers must arrive within this.
    pub https_header_timeout_seconds: u32,
    /// An HTTPS request must be answered within this.
    pub https_request_timeout_seconds: u32,
    /// An HTTPS connection with no request in flight for this long is closed.
    pub https_idle_timeout_seconds: u32,
    /// An HTTPS connection is closed (gracefully) at this age.
    pub https_max_connection_age_seconds: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            agent_requests_per_second: 500,
            agent_burst: 1000,
            refusal_audit_interval_seconds: 5,
            refusal_audit_keys: 10_000,
            max_connections: 8192,
            max_connections_per_address: 64,
            handshake_timeout_seconds: 5,
            idle_timeout_seconds: 300,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
            max_local_error_resets: 1024,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            watch_subscribers: 4096,
            watch_subscribers_per_address: 256,
            watch_subscribers_per_connection: 16,
            watch_lag_events: 4096,
            https_header_timeout_seconds: 5,
            https_request_timeout_seconds: 10,
            https_idle_timeout_seconds: 15,
            https_max_connection_age_seconds: 300,
        }
    }
}

impl LimitsSection {
    /// Every problem with the values.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut at_least_1 = |name: &str, v: u32| {
            if v == 0 {
                p.push(format!("limits.{name} must be at least 1"));
            }
        };
        at_least_1("refusal_audit_keys", self.refusal_audit_keys);
        at_least_1("max_connections", self.max_connections);
        at_least_1(
            "max_connections_per_address",
            self.max_connections_per_address,
        );
        at_least_1("handshake_timeout_seconds", self.handshake_timeout_seconds);
        at_least_1("idle_timeout_seconds", self.idle_timeout_seconds);
        at_least_1("max_concurrent_streams", self.max_concurrent_streams);
        at_least_1("max_local_error_resets", self.max_local_error_resets);
        at_least_1(
            "keepalive_interval_seconds",
            self.keepalive_interval_seconds,
        );
        at_least_1("keepalive_timeout_seconds", self.keepalive_timeout_seconds);
        at_least_1("watch_subscribers", self.watch_subscribers);
        at_least_1("watch_lag_events", self.watch_lag_events);
        at_least_1(
            "watch_subscribers_per_address",
            self.watch_subscribers_per_address,
        );
        at_least_1(
            "watch_subscribers_per_connection",
            self.watch_subscribers_per_connection,
        );
        at_least_1(
            "https_header_timeout_seconds",
            self.https_header_timeout_seconds,
        );
        at_least_1(
            "https_request_timeout_seconds",
            self.https_request_timeout_seconds,
        );
        at_least_1(
            "https_idle_timeout_seconds",
            self.https_idle_timeout_seconds,
        );
        at_least_1(
            "https_max_connection_age_seconds",
            self.https_max_connection_age_seconds,
        );
        if !(1..=3600).contains(&self.refusal_audit_interval_seconds) {
            p.push("limits.refusal_audit_interval_seconds must be between 1 and 3600".into());
        }
        if self.max_header_list_bytes < 1024 {
            p.push("limits.max_header_list_bytes must be at least 1024".into());
        }
        if self.handshake_timeout_seconds > 60 {
            p.push("limits.handshake_timeout_seconds is above 60: a handshake takes milliseconds; a long timeout only helps slow-handshake floods".into());
        }
        if self.max_connections_per_address > self.max_connections {
            p.push(
                "limits.max_connections_per_address is larger than limits.max_connections".into(),
            );
        }
        if self.watch_subscribers_per_address > self.watch_subscribers {
            p.push(
                "limits.watch_subscribers_per_address is larger than limits.watch_subscribers"
                    .into(),
            );
        }
        if self.watch_subscribers_per_connection > self.max_concurrent_streams {
            p.push("limits.watch_subscribers_per_connection is larger than limits.max_concurrent_streams".into());
        }
        p
    }
}

/// One `[roles.NAME]` table: a custom operator role as the permissions it bundles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Permission names, e.g. `["tokens:revoke", "tasks:revoke", "audit:read"]`.
    pub permissions: Vec<String>,
}

/// The `[policy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Cedar policy files, validated against the Taskpass schema at start.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// The `[delegation]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationSection {
    /// `[[delegation.oidc]]`: issuers of the users' tokens agents may act for.
    #[serde(default)]
    pub oidc: Vec<crate::delegation::DelegationIssuerConfig>,
}

/// The `[approval]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSection {
    /// How long a task waits for a human's approval before it is denied, seconds (1 to
    /// 86400, default 900).
    pub timeout_seconds: u32,
}

impl Default for ApprovalSection {
    fn default() -> Self {
        Self {
            timeout_seconds: 900,
        }
    }
}

/// The TOML file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    #[serde(default = "default_server")]
    pub server: ServerSection,
    /// `[tokens]`.
    #[serde(default = "default_tokens")]
    pub tokens: TokensSection,
    /// `[attestation]`.
    #[serde(default = "default_attestation")]
    pub attestation: AttestationSection,
    /// `[limits]`.
    #[serde(default = "default_limits")]
    pub limits: LimitsSection,
    /// `[validation]`.
    #[serde(default)]
    pub validation: ValidationSection,
    /// `[roles.NAME]`: custom operator roles beside admin, approver and auditor.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[approval]`.
    #[serde(default)]
    pub approval: ApprovalSection,
    /// `[delegation]`.
    #[serde(default)]
    pub delegation: DelegationSection,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7444))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./taskpass-data")
}
fn default_trust_domain() -> String {
    "dev.local".into()
}
fn default_store_cache_mb() -> u32 {
    64
}
fn default_ttl() -> u32 {
    Limits::default().default_ttl_seconds
}
fn max_ttl() -> u32 {
    Limits::default().max_ttl_seconds
}
fn default_task() -> u32 {
    Limits::default().default_task_seconds
}
fn max_task() -> u32 {
    Limits::default().max_task_seconds
}
fn default_leeway() -> u32 {
    30
}
fn default_certificate_hours() -> u32 {
    24
}
fn default_max_certificate_hours() -> u32 {
    168
}
fn default_limits() -> LimitsSection {
    LimitsSection::default()
}
fn default_server() -> ServerSection {
    ServerSection {
        listen: default_listen(),
        http_listen: default_http_listen(),
        data_dir: default_data_dir(),
        trust_domain: default_trust_domain(),
        issuer: None,
        store_cache_mb: default_store_cache_mb(),
        server_names: Vec::new(),
    }
}
fn default_tokens() -> TokensSection {
    TokensSection {
        default_ttl_seconds: default_ttl(),
        max_ttl_seconds: max_ttl(),
        default_task_seconds: default_task(),
        max_task_seconds: max_task(),
    }
}
fn default_attestation() -> AttestationSection {
    AttestationSection {
        leeway_seconds: default_leeway(),
        oidc: Vec::new(),
        certificate_hours: default_certificate_hours(),
        max_certificate_hours: default_max_certificate_hours(),
        x509: Vec::new(),
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// HTTPS address.
    pub http_listen: SocketAddr,
    /// Absolute data dir.
    pub data_dir: PathBuf,
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Explicit issuer, if configured; else derived from the bound HTTPS address.
    pub issuer: Option<String>,
    /// Lifetimes.
    pub limits: Limits,
    /// Attestation leeway.
    pub leeway_seconds: u32,
    /// Trusted issuers.
    pub oidc: Vec<OidcIssuerConfig>,
    /// External certificate authorities for agents, with absolute `ca_file`s.
    pub x509: Vec<X509AuthorityConfig>,
    /// Agent certificate lifetimes, hours: (default, max).
    pub certificate_hours: (u32, u32),
    /// redb cache, bytes.
    pub store_cache_bytes: usize,
    /// Per-agent rate limit: (requests per second, burst); `None` when off.
    pub agent_rate: Option<(u32, u32)>,
    /// Extra names for the server certificate.
    pub server_names: Vec<String>,
    /// The `[limits]` table as validated.
    pub caps: LimitsSection,
    /// The `[validation]` table.
    pub validation: ValidationSection,
    /// Operator roles: the built-in ones and `[roles.NAME]`.
    pub roles: Roles,
    /// `[policy] files`, absolute.
    pub policy_files: Vec<PathBuf>,
    /// `[approval] timeout_seconds`.
    pub approval_timeout_seconds: u32,
    /// `[[delegation.oidc]]`, with absolute paths.
    pub delegation: Vec<crate::delegation::DelegationIssuerConfig>,
}

/// Why a configuration was refused: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl ConfigFile {
    /// The embedded defaults of `taskpassd --dev`.
    pub fn dev() -> Self {
        Self {
            server: default_server(),
            tokens: default_tokens(),
            attestation: default_attestation(),
            limits: default_limits(),
            validation: ValidationSection::default(),
            roles: Default::default(),
            policy: PolicySection::default(),
            approval: ApprovalSection::default(),
            delegation: DelegationSection::default(),
        }
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))
    }

    /// Validates into a [`Config`]; relative paths are resolved against `cwd`.
    pub fn validate(self, cwd: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let trust_domain = TrustDomain::parse(&self.server.trust_domain)
            .map_err(|e| problems.push(format!("server.trust_domain: {e}")))
            .ok();
        let t = &self.tokens;
        for (name, v) in [
            ("default_ttl_seconds", t.default_ttl_seconds),
            ("max_ttl_seconds", t.max_ttl_seconds),
            ("default_task_seconds", t.default_task_seconds),
            ("max_task_seconds", t.max_task_seconds),
        ] {
            if v == 0 {
                problems.push(format!("tokens.{name} must be at least 1"));
            }
        }
        if t.default_ttl_seconds > t.max_ttl_seconds {
            problems
                .push("tokens.default_ttl_seconds is larger than tokens.max_ttl_seconds".into());
        }
        if t.default_task_seconds > t.max_task_seconds {
            problems
                .push("tokens.default_task_seconds is larger than tokens.max_task_seconds".into());
        }
        if let Some(iss) = &self.server.issuer {
            if !iss.starts_with("https://") {
                problems.push(format!("server.issuer {iss:?} must be an https:// URL"));
            }
            if iss.ends_with('/') || iss.contains(['?', '#']) {
                // Tokens carry it as `iss`, compared exactly; validators join paths to it.
                problems.push(format!(
                    "server.issuer {iss:?} must not end with '/' or carry a query or fragment"
                ));
            }
        }
        for n in &self.server.server_names {
            let dns_ok = !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b));
            if n.parse::<std::net::IpAddr>().is_err() && !dns_ok {
                problems.push(format!(
                    "server.server_names: {n:?} is neither a DNS name nor an IP address"
                ));
            }
        }
        problems.extend(self.limits.problems());
        for d in &self.delegation.oidc {
            problems.extend(d.problems());
            if self.attestation.oidc.iter().any(|a| a.issuer == d.issuer) {
                problems.push(format!(
                    "issuer {:?} is under both [[attestation.oidc]] and [[delegation.oidc]]: an issuer of agents' tokens must not also vouch for users",
                    d.issuer
                ));
            }
        }
        if !(1..=86_400).contains(&self.approval.timeout_seconds) {
            problems.push("approval.timeout_seconds must be 1 to 86400".into());
        }
        if !(1..=60).contains(&self.validation.status_list_ttl_seconds) {
            problems.push("validation.status_list_ttl_seconds must be 1 to 60".into());
        }
        if self.attestation.leeway_seconds > 300 {
            problems.push("attestation.leeway_seconds is above 300: clocks that far apart need fixing, not tolerating".into());
        }
        for (i, o) in self.attestation.oidc.iter().enumerate() {
            for p in o.validate() {
                problems.push(format!("attestation.oidc[{i}] ({}): {p}", o.issuer));
            }
        }
        let (ch, mh) = (
            self.attestation.certificate_hours,
            self.attestation.max_certificate_hours,
        );
        if ch == 0 || mh == 0 || ch > mh {
            problems.push("attestation.certificate_hours must be at least 1 and at most attestation.max_certificate_hours".into());
        }
        if mh > 24 * 90 {
            problems.push("attestation.max_certificate_hours is above 2160 (90 days): agent certificates are meant to be short-lived".into());
        }
        for (i, x) in self.attestation.x509.iter().enumerate() {
            if x.trust_domains.is_empty() {
                problems.push(format!(
                    "attestation.x509[{i}] ({}): trust_domains is empty: name the trust domains this CA may vouch for",
                    x.ca_file.display()
                ));
            }
            for td in &x.trust_domains {
                if TrustDomain::parse(td).is_err() {
                    problems.push(format!(
                        "attestation.x509[{i}]: trust domain {td:?} is not a SPIFFE trust domain name"
                    ));
                }
            }
        }
        let mut roles = Roles::builtin();
        for (name, r) in &self.roles {
            let defined = RoleName::parse(name)
                .map_err(|e| e.to_string())
                .and_then(|n| {
                    if r.permissions.is_empty() {
                        return Err("permissions is empty: a role must grant something".into());
                    }
                    roles.define(n, Permissions::parse(&r.permissions)?)
                });
            if let Err(e) = defined {
                problems.push(format!("roles.{name}: {e}"));
            }
        }
        let resolve = |p: &Path| {
            let joined = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            joined
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect::<PathBuf>()
        };
        let oidc = self
            .attestation
            .oidc
            .into_iter()
            .map(|mut o| {
                o.jwks_file = o.jwks_file.as_deref().map(resolve);
                o.ca_file = o.ca_file.as_deref().map(resolve);
                o
            })
            .collect();
        let x509 = self
            .attestation
            .x509
            .into_iter()
            .map(|mut x| {
                x.ca_file = resolve(&x.ca_file);
                x
            })
            .collect();
        match (trust_domain, problems.is_empty()) {
            (Some(trust_domain), true) => Ok(Config {
                listen: self.server.listen,
                http_listen: self.server.http_listen,
                data_dir: resolve(&self.server.data_dir),
                trust_domain,
                issuer: self.server.issuer,
                limits: Limits {
                    default_ttl_seconds: t.default_ttl_seconds,
                    max_ttl_seconds: t.max_ttl_seconds,
                    default_task_seconds: t.default_task_seconds,
                    max_task_seconds: t.max_task_seconds,
                },
                leeway_seconds: self.attestation.leeway_seconds,
                oidc,
                x509,
                certificate_hours: (ch, mh),
                store_cache_bytes: usize::try_from(self.server.store_cache_mb)
                    .unwrap_or(64)
                    .saturating_mul(1 << 20),
                server_names: self.server.server_names.clone(),
                agent_rate: match self.limits.agent_requests_per_second {
                    0 => None,
                    rps => Some((rps, self.limits.agent_burst.max(1))),
                },
                caps: self.limits,
                validation: self.validation,
                roles,
                policy_files: self.policy.files.iter().map(|p| resolve(p)).collect(),
                approval_timeout_seconds: self.approval.timeout_seconds,
                delegation: self
                    .delegation
                    .oidc
                    .into_iter()
                    .map(|d| d.resolved(resolve))
                    .collect(),
            }),
            _ => Err(ConfigError(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The broker configuration shipped in `deploy/kubernetes/configmap.yaml` is one the
    /// broker accepts.
    #[test]
    fn the_kubernetes_config_is_valid() {
        let yaml = include_str!("../../../deploy/kubernetes/configmap.yaml");
        let start = yaml.find("taskpass.toml: |\n").unwrap() + "taskpass.toml: |\n".len();
        let toml: String = yaml[start..]
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
            .collect::<Vec<_>>()
            .join("\n");
        let config = ConfigFile::parse(&toml)
            .unwrap()
            .validate(Path::new("/"))
            .unwrap();
        assert_eq!(
            config.issuer.as_deref(),
            Some("https://taskpass.taskpass.svc:7444")
        );
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
[server]
listen = "127.0.0.1:7443"
http_listen = "127.0.0.1:7444"
data_dir = "./taskpass-data"
trust_domain = "example.org"

[tokens]
default_ttl_seconds = 300
max_ttl_seconds = 900
default_task_seconds = 3600
max_task_seconds = 86400

[[attestation.oidc]]
issuer = "https://issuer.example"
audiences = ["taskpass"]

[attestation]
leeway_seconds = 30
"#;
        let c = ConfigFile::parse(text)
            .unwrap()
            .validate(Path::new("/srv"))
            .unwrap();
        assert_eq!(c.data_dir, Path::new("/srv/taskpass-data"));
        assert_eq!(c.oidc.len(), 1);
        assert_eq!(c.trust_domain.as_str(), "example.org");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[server]
trust_domain = "Bad Domain"
issuer = "http://plain"
[tokens]
default_ttl_seconds = 1000
max_ttl_seconds = 900
"#;
        let e = ConfigFile::parse(text)
            .unwrap()
            .validate(Path::new("/"))
            .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(ConfigFile::parse("[server]\nlisten_typo = 1").is_err());
        assert!(ConfigFile::parse("[limits]\nmax_conections = 1").is_err());
        let e = ConfigFile::parse("[limits]\nmax_connections = 0\nhandshake_timeout_seconds = 600")
            .unwrap()
            .validate(Path::new("/"))
            .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(ConfigFile::parse("[server]\nlisten = \"nope\"").is_err());
    }

    #[test]
    fn custom_roles() {
        let c = ConfigFile::parse(
            "[roles.oncall]\npermissions = [\"tokens:revoke\", \"tasks:revoke\", \"audit:read\"]",
        )
        .unwrap()
        .validate(Path::new("/"))
        .unwrap();
        let oncall = c.roles.permissions(&RoleName::parse("oncall").unwrap());
        assert!(oncall.contains(taskpass_core::Permission::TokensRevoke));
        assert!(!oncall.contains(taskpass_core::Permission::AgentsWrite));
        let bad = "[roles.admin]\npermissions = [\"audit:read\"]\n\
                   [roles.Bad]\npermissions = [\"audit:read\"]\n\
                   [roles.typo]\npermissions = [\"audit:reed\"]\n\
                   [roles.empty]\npermissions = []";
        let e = ConfigFile::parse(bad)
            .unwrap()
            .validate(Path::new("/"))
            .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(e.to_string().contains("audit:reed"), "{e}");
        assert!(ConfigFile::parse("[roles.x]\npermissions = []\nextra = 1").is_err());
    }

    #[test]
    fn deploy_example_is_valid() {
        let text = include_str!("../../../deploy/taskpass.toml");
        let c = ConfigFile::parse(text)
            .unwrap()
            .validate(Path::new("/"))
            .unwrap();
        assert_eq!(c.oidc.len(), 2);
        assert_eq!(c.issuer.as_deref(), Some("https://taskpass.example.org"));
    }

    #[test]
    fn dev_defaults_match_the_spec() {
        let c = ConfigFile::dev().validate(Path::new("/w")).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:7444");
        assert_eq!(c.trust_domain.as_str(), "dev.local");
        assert_eq!(c.data_dir, Path::new("/w/taskpass-data"));
    }
}
