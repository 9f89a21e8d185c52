use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, check_len, shown};

/// The size limits on values that come from outside. Every parser here enforces them.
pub mod limits {
    /// Longest scope token.
    pub const SCOPE_LEN: usize = 128;
    /// Most scopes in one request or allow-list.
    pub const SCOPES: usize = 64;
    /// Longest audience.
    pub const AUDIENCE_LEN: usize = 256;
    /// Most audiences in one request or allow-list.
    pub const AUDIENCES: usize = 32;
    /// Longest task purpose.
    pub const PURPOSE_LEN: usize = 1024;
}

/// An OAuth scope token (RFC 6749 §3.3): printable ASCII without space, `"` or `\`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// Parses one scope token.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_len("scope", s, limits::SCOPE_LEN)?;
        if !s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(ParseError::Invalid {
                what: "scope",
                value: shown(s),
                why: "a scope is printable ASCII without spaces, '\"' or '\\'",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Scope {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<Scope> for String {
    fn from(v: Scope) -> String {
        v.0
    }
}
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes, sorted and without duplicates, at most [`limits::SCOPES`] of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a list of scope tokens; duplicates are merged.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ParseError> {
        if items.len() > limits::SCOPES {
            return Err(ParseError::TooMany {
                what: "scopes",
                max: limits::SCOPES,
            });
        }
        items
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// Parses a space-separated `scope` claim.
    pub fn parse_claim(s: &str) -> Result<Self, ParseError> {
        let items: Vec<&str> = s.split(' ').filter(|x| !x.is_empty()).collect();
        Self::parse(&items)
    }

    /// True when there are no scopes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when `scope` is in the set.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// The scopes of `self` that are not in `other`.
    pub fn not_in<'a>(&'a self, other: &'a ScopeSet) -> impl Iterator<Item = &'a Scope> + 'a {
        self.0.difference(&other.0)
    }

    /// The scopes in both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// True when every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The scopes in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// The scopes as strings, in order.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// The space-separated form used in the `scope` claim.
    pub fn to_claim(&self) -> String {
        self.to_strings().join(" ")
    }
}

impl TryFrom<Vec<String>> for ScopeSet {
    type Error = ParseError;
    fn try_from(v: Vec<String>) -> Result<Self, ParseError> {
        Self::parse(&v)
    }
}
impl From<ScopeSet> for Vec<String> {
    fn from(v: ScopeSet) -> Vec<String> {
        v.to_strings()
    }
}

/// An audience: the downstream API a token is for (a URI or a name), 1 to 256 bytes of
/// printable ASCII without spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Audience(String);

impl Audience {
    /// Parses an audience.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_len("audience", s, limits::AUDIENCE_LEN)?;
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ParseError::Invalid {
                what: "audience",
                value: shown(s),
                why: "an audience is printable ASCII without spaces",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a list of audiences, merging duplicates and keeping the first order.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Self>, ParseError> {
        if items.len() > limits::AUDIENCES {
            return Err(ParseError::TooMany {
                what: "audiences",
                max: limits::AUDIENCES,
            });
        }
        let mut out: Vec<Self> = Vec::with_capacity(items.len());
        for s in items {
            let a = Self::parse(s.as_ref())?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The audience as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Audience {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<Audience> for String {
    fn from(v: Audience) -> String {
        v.0
    }
}
impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task is for, in a person's words: 1 to 1024 bytes without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Purpose(String);

impl Purpose {
    /// Parses a purpose.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_len("purpose", s.trim(), limits::PURPOSE_LEN)?;
        // Control characters and the invisible controls that reorder text (which could make
        // a listing print something else than what is stored) are refused.
        let reorders = |c: char| matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if s.chars().any(|c| c.is_control() || reorders(c)) {
            return Err(ParseError::Invalid {
                what: "purpose",
                value: shown(s),
                why: "control characters and text-direction controls are not allowed",
            });
        }
        Ok(Self(s.trim().to_owned()))
    }

    /// The purpose as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Purpose {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<Purpose> for String {
    fn from(v: Purpose) -> String {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scopes() {
        assert!(Scope::parse("repo:read").is_ok());
        assert!(Scope::parse("a b").is_err());
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("").is_err());
        assert!(Scope::parse(&"x".repeat(129)).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(ScopeSet::parse(&many).is_err());
        let s = ScopeSet::parse(&["b", "a", "b"]).unwrap();
        assert_eq!(s.to_claim(), "a b");
        assert_eq!(ScopeSet::parse_claim("a  b").unwrap(), s);
    }

    #[test]
    fn audiences() {
        assert!(Audience::parse("https://api.example").is_ok());
        assert!(Audience::parse("a b").is_err());
        assert!(Audience::parse("").is_err());
        let l = Audience::parse_list(&["x", "y", "x"]).unwrap();
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn purposes() {
        assert!(Purpose::parse("  summarise tickets ").is_ok());
        assert!(Purpose::parse("   ").is_err());
        assert!(Purpose::parse("a\nb").is_err());
        assert!(Purpose::parse("invoice \u{202e}fdp.exe").is_err());
        assert!(Purpose::parse(&"p".repeat(1025)).is_err());
    }

    proptest! {
        #[test]
        fn scope_set_algebra(a in proptest::collection::vec("[a-z]{1,3}", 0..10),
                             b in proptest::collection::vec("[a-z]{1,3}", 0..10)) {
            let a = ScopeSet::parse(&a).unwrap();
            let b = ScopeSet::parse(&b).unwrap();
            let i = a.intersection(&b);
            prop_assert!(i.is_subset(&a) && i.is_subset(&b));
            prop_assert_eq!(a.not_in(&b).count() == 0, a.is_subset(&b));
            prop_assert_eq!(ScopeSet::parse_claim(&a.to_claim()).unwrap(), a);
        }

        #[test]
        fn scope_parse_never_panics(s in ".{0,200}") {
            let _ = Scope::parse(&s);
            let _ = ScopeSet::parse_claim(&s);
            let _ = Audience::parse(&s);
            let _ = Purpose::parse(&s);
        }
    }
}
