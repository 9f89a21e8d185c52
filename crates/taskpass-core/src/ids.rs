use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, check_len, shown};

/// The grammar of names (agents, operators, validators, roles): lowercase letters, digits and
/// `-`, 1 to 63 bytes, not starting or ending with `-`; one SPIFFE path segment.
pub(crate) fn check_name(what: &'static str, s: &str) -> Result<(), ParseError> {
    check_len(what, s, 63)?;
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(ParseError::Invalid {
            what,
            value: shown(s),
            why: "use lowercase letters, digits and '-', not at either end",
        });
    }
    Ok(())
}

/// The name under which agent identities live, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_len("trust domain", s, 255)?;
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(ParseError::Invalid {
                what: "trust domain",
                value: shown(s),
                why: "use lowercase letters, digits, '.', '-' and '_'",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE id of the agent `name` in this trust domain.
    pub fn agent_id(&self, name: &AgentName) -> AgentId {
        AgentId(format!("spiffe://{}/agent/{}", self.0, name.0))
    }

    /// The agent name of a SPIFFE id of this trust domain, if it is one.
    pub fn agent_name_of(&self, id: &str) -> Option<AgentName> {
        let rest = id
            .strip_prefix("spiffe://")?
            .strip_prefix(self.0.as_str())?;
        AgentName::parse(rest.strip_prefix("/agent/")?).ok()
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<TrustDomain> for String {
    fn from(v: TrustDomain) -> String {
        v.0
    }
}
impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's registered name: lowercase letters, digits and `-`, 1 to 63 bytes, not starting
/// or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    /// Parses an agent name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_name("agent name", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<AgentName> for String {
    fn from(v: AgentName) -> String {
        v.0
    }
}
impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's SPIFFE id: `spiffe://<trust-domain>/agent/<name>`. Made only by
/// [`TrustDomain::agent_id`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentId(String);

impl AgentId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE id as the SPIFFE standard defines it: `spiffe://<trust domain>/<path>`, lowercase
/// scheme and trust domain, path segments of letters, digits, `.`, `-` and `_` (none empty,
/// none `.` or `..`), no trailing `/`, no query, fragment, port or user info. Only the
/// canonical spelling parses, so two spellings never name one identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: String,
    /// Where the path starts (after the trust domain).
    path_at: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE id, canonical form only.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_len("SPIFFE id", s, 2048)?;
        let bad = |why: &'static str| ParseError::Invalid {
            what: "SPIFFE id",
            value: shown(s),
            why,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it must start with spiffe:// (lowercase)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => return Err(bad("it needs a path after the trust domain")),
        };
        TrustDomain::parse(td).map_err(|_| {
            bad("the trust domain holds only lowercase letters, digits, '.', '-' and '_'")
        })?;
        for seg in path[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("path segments must not be empty, '.' or '..'"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(bad(
                    "path segments hold only letters, digits, '.', '-' and '_'",
                ));
            }
        }
        Ok(Self {
            id: s.to_owned(),
            path_at: "spiffe://".len() + td.len(),
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain's name.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_at]
    }

    /// The path, from its leading `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(v: SpiffeId) -> String {
        v.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

macro_rules! ulid_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("A ", $what, " id: `", $prefix, "` and a ULID, so ids sort by creation time.")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(ulid::Ulid);

        impl $name {
            /// Wraps a freshly generated ULID.
            pub fn from_ulid(u: ulid::Ulid) -> Self {
                Self(u)
            }

            /// Parses the text form.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                check_len($what, s, 64)?;
                // Only the canonical spelling: the ULID decoder also takes lowercase and
                // Crockford's aliases, and drops the high bits of an overflowing first
                // character, so several strings would name one id (and one record).
                s.strip_prefix($prefix)
                    .and_then(|rest| {
                        ulid::Ulid::from_string(rest)
                            .ok()
                            .filter(|u| u.to_string() == rest)
                    })
                    .map(Self)
                    .ok_or_else(|| ParseError::Invalid {
                        what: $what,
                        value: shown(s),
                        why: concat!(
                            "expected '",
                            $prefix,
                            "' followed by a ULID in its canonical form (26 characters, digits and uppercase letters)"
                        ),
                    })
            }

            /// The milliseconds since the Unix epoch at which the id was made.
            pub fn timestamp_ms(&self) -> u64 {
                self.0.timestamp_ms()
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
    };
}

ulid_id!(TaskId, "task_", "task");
ulid_id!(TokenId, "tok_", "token");
ulid_id!(ApprovalId, "appr_", "approval");

#[cfg(test)]
mod tests {
    #[test]
    fn spiffe_ids_parse_in_canonical_form_only() {
        let id = super::SpiffeId::parse("spiffe://example.org/ns/prod/sa/billing").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/billing");
        for bad in [
            "",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/./a",
            "SPIFFE://example.org/a",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://example.org/a%2Fb",
            "spiffe:///a",
            "https://example.org/a",
        ] {
            assert!(super::SpiffeId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(super::SpiffeId::parse(&format!("spiffe://e/{}", "a".repeat(2100))).is_err());
    }

    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["a", "billing-bot", "x1", "a-b-c"] {
            assert!(AgentName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(AgentName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_id_round_trip() {
        let td = TrustDomain::parse("example.org").unwrap();
        let n = AgentName::parse("bot").unwrap();
        let id = td.agent_id(&n);
        assert_eq!(td.agent_name_of(id.as_str()), Some(n));
        assert_eq!(td.agent_name_of("spiffe://other.org/agent/bot"), None);
        assert_eq!(td.agent_name_of("spiffe://example.org/agent/B"), None);
    }

    #[test]
    fn ulid_ids() {
        let t = TaskId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, 7));
        let s = t.to_string();
        assert!(s.starts_with("task_"));
        assert_eq!(TaskId::parse(&s).unwrap(), t);
        assert!(TaskId::parse("tok_01HXXXXXXXXXXXXXXXXXXXXXXX").is_err());
        assert!(TaskId::parse("task_nope").is_err());
        assert!(TokenId::parse(&"tok_".repeat(40)).is_err());
    }

    #[test]
    fn only_canonical_ulids_parse() {
        let t = TaskId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, 7));
        let s = t.to_string();
        let rest = &s["task_".len()..];
        // Lowercase, Crockford aliases and an overflowing first character all decode to
        // some ULID; none of them is the canonical spelling.
        assert!(TaskId::parse(&format!("task_{}", rest.to_lowercase())).is_err());
        let aliased = format!("task_{}", rest.replacen('0', "O", 1));
        assert!(TaskId::parse(&aliased).is_err(), "{aliased}");
        let overflow = format!("task_8{}", &rest[1..]);
        assert!(TaskId::parse(&overflow).is_err(), "{overflow}");
        let overflow = format!("task_Z{}", &rest[1..]);
        assert!(TaskId::parse(&overflow).is_err(), "{overflow}");
        assert!(TaskId::parse(&format!("{s}\n")).is_err());
        assert_eq!(TaskId::parse(&s).unwrap(), t);
    }
}
