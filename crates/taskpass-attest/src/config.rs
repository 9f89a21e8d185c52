use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One trusted workload issuer, as in the broker's TOML `[[attestation.oidc]]` table.
///
/// Keys come from `jwks_file` (static), else `jwks_uri`, else OIDC discovery at
/// `{issuer}/.well-known/openid-configuration`. Remote keys are fetched over HTTPS only, trusting
/// the system roots plus `ca_file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer URL, compared exactly with the token's `iss` claim.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Where the issuer's JWKS is; when absent (and no `jwks_file`), found by discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A file holding the issuer's JWKS, used instead of fetching keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM certificates trusted, in addition to the system roots, when fetching from the issuer.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl OidcIssuerConfig {
    /// Every problem with this entry, one actionable sentence each; empty when it is valid.
    pub fn validate(&self) -> Vec<String> {
        self.validate_in("[[attestation.oidc]]")
    }

    /// [`OidcIssuerConfig::validate`] for an entry of the config table `table` (e.g.
    /// `[[delegation.oidc]]`), which the messages name.
    pub fn validate_in(&self, table: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let name = if self.issuer.is_empty() {
            "<empty>"
        } else {
            self.issuer.as_str()
        };
        let at = format!("{table} issuer {name:?}");
        if self.issuer.trim().is_empty() {
            problems.push(format!(
                "{table}: issuer is empty: set it to the issuer URL found in the \
                 tokens' iss claim"
            ));
        } else {
            if !is_https_url(&self.issuer) {
                problems.push(format!("{at}: the issuer must be an https:// URL"));
            }
            if self.issuer.contains(['?', '#']) {
                problems.push(format!(
                    "{at}: the issuer must not have a query or fragment"
                ));
            }
        }
        if self.audiences.is_empty() {
            problems.push(format!(
                "{at}: audiences is empty: list the aud values this broker accepts, e.g. \
                 [\"taskpass\"]"
            ));
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            problems.push(format!("{at}: audiences contains an empty value"));
        }
        if let Some(uri) = &self.jwks_uri
            && !is_https_url(uri)
        {
            problems.push(format!("{at}: jwks_uri {uri:?} must be an https:// URL"));
        }
        if self.jwks_uri.is_some() && self.jwks_file.is_some() {
            problems.push(format!(
                "{at}: set either jwks_uri (fetch keys) or jwks_file (static keys), not both"
            ));
        }
        problems
    }
}

/// True for an absolute `https://host[...]` URL.
pub(crate) fn is_https_url(s: &str) -> bool {
    match s.parse::<http::Uri>() {
        Ok(uri) => uri.scheme_str() == Some("https") && uri.host().is_some_and(|h| !h.is_empty()),
        Err(_) => false,
    }
}

/// Tuning of [`crate::OidcVerifier`]; [`Default`] gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcOptions {
    /// Clock skew allowed on the attestation's `exp`, `nbf` and `iat`. Default 30 s.
    pub leeway_seconds: u32,
    /// How often [`crate::OidcVerifier::spawn_refresh`] refetches remote key sets. Default 5 min.
    pub refresh_interval: Duration,
    /// Least time between two fetches of one issuer's keys triggered by an unknown `kid`, so
    /// forged key ids cannot make the broker hammer an issuer. Default 10 s.
    pub min_refetch_interval: Duration,
    /// Time allowed for one HTTPS request (discovery or JWKS), body included. Default 5 s.
    pub http_timeout: Duration,
    /// Longest token accepted; longer ones are refused before any parsing. Default 16 KiB.
    pub max_token_bytes: usize,
    /// Most verified attestations remembered (until each token's `exp`). Default 10 000.
    pub cache_capacity: usize,
    /// The config table the issuers come from, named in configuration errors. Default
    /// `[[attestation.oidc]]`.
    pub config_table: &'static str,
}

impl Default for OidcOptions {
    fn default() -> Self {
        Self {
            leeway_seconds: 30,
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            http_timeout: Duration::from_secs(5),
            max_token_bytes: 16 * 1024,
            cache_capacity: 10_000,
            config_table: "[[attestation.oidc]]",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: "https://issuer.example".into(),
            audiences: vec!["taskpass".into()],
            jwks_uri: None,
            jwks_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn valid_config_has_no_problems() {
        assert!(good().validate().is_empty());
        let c = OidcIssuerConfig {
            jwks_uri: Some("https://issuer.example/keys".into()),
            ..good()
        };
        assert!(c.validate().is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let c = OidcIssuerConfig {
            issuer: "http://issuer.example?x".into(),
            audiences: vec![],
            jwks_uri: Some("http://issuer.example/keys".into()),
            jwks_file: Some("/k.json".into()),
            ca_file: None,
        };
        let p = c.validate();
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p.iter().any(|s| s.contains("https://")));
        assert!(p.iter().any(|s| s.contains("not both")));
        let empty = OidcIssuerConfig {
            issuer: String::new(),
            ..good()
        };
        assert!(empty.validate()[0].contains("issuer is empty"));
        let blank_aud = OidcIssuerConfig {
            audiences: vec![" ".into()],
            ..good()
        };
        assert_eq!(blank_aud.validate().len(), 1);
    }

    #[test]
    fn toml_shape_rejects_unknown_fields() {
        let ok: Result<OidcIssuerConfig, _> =
            serde_json::from_str(r#"{"issuer":"https://i","audiences":["a"],"ca_file":"/ca.pem"}"#);
        assert!(ok.is_ok());
        let bad: Result<OidcIssuerConfig, _> =
            serde_json::from_str(r#"{"issuer":"https://i","audiences":["a"],"jwks":"x"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn https_urls() {
        assert!(is_https_url("https://127.0.0.1:8443"));
        assert!(is_https_url("https://a.example/path/"));
        assert!(!is_https_url("http://a.example"));
        assert!(!is_https_url("https://"));
        assert!(!is_https_url("a.example"));
        assert!(!is_https_url(""));
    }
}
