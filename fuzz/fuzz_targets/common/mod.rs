//! Shared by the structure-aware token targets: a JSON document built from fuzz input (a valid
//! base edited by the input: members dropped, members added, names repeated, values of the wrong
//! type, odd numbers), the base64 variants of a compact JWS, and a signature over whatever
//! header and claims the input made, so that inputs get past the signature check.
//!
//! An empty input decodes to the first variant of everything: the target's valid token.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// The fixed "now" of the targets, Unix seconds (November 2023).
pub const NOW: i64 = 1_700_000_000;

/// An Ed25519 key from a fixed seed, as PKCS#8 v1: the same key, key id and tokens on every
/// run, so a saved input reproduces.
pub fn ed25519_pkcs8(seed: u8) -> Vec<u8> {
    let mut doc = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    doc.extend([seed; 32]);
    doc
}

/// Prints each input's token and verdicts when `TASKPASS_FUZZ_DEBUG` is set (run the target
/// binary on a saved input to see what it means).
pub fn debug_enabled() -> bool {
    static ON: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("TASKPASS_FUZZ_DEBUG").is_some());
    *ON
}

/// Text: one of the target's known values (index into its list), or any string.
#[derive(Arbitrary, Debug)]
pub enum Text {
    Known(u8),
    Any(String),
}

impl Text {
    pub fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Self::Known(i) => known[usize::from(*i) % known.len()],
            Self::Any(s) => s,
        }
    }
}

/// A JSON number, mostly a time near [`NOW`].
#[derive(Arbitrary, Debug)]
pub enum Number {
    /// `NOW + offset`.
    Near(i32),
    Int(i64),
    Float(f64),
    /// Any text where the number goes (`1e3`, `-0`, `1.0`, `01`, or not a number at all).
    Raw(String),
}

#[derive(Arbitrary, Debug)]
pub enum Scalar {
    Text(Text),
    Number(Number),
    Bool(bool),
    Null,
}

#[derive(Arbitrary, Debug)]
pub enum Value {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    Object(Vec<(Text, Scalar)>),
}

/// One object member; `name` may repeat a base member's name (duplicate keys).
#[derive(Arbitrary, Debug)]
pub struct Member {
    pub name: Text,
    pub value: Value,
}

/// A JSON object: the target's base document edited by the input, or any bytes.
#[derive(Arbitrary, Debug)]
pub enum Doc {
    Edited {
        /// Bit `i` drops the base's member `i`.
        drop: u16,
        extra: Vec<Member>,
        /// The extra members go before the base's (so that a repeated name comes first).
        extra_first: bool,
    },
    Raw(Vec<u8>),
}

/// The words a target's documents are made of.
pub struct Dict<'a> {
    /// Member names (claim or header parameter names).
    pub names: &'a [&'a str],
    /// String values.
    pub values: &'a [&'a str],
}

fn string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn number(n: &Number) -> String {
    match n {
        Number::Near(d) => NOW.saturating_add(i64::from(*d)).to_string(),
        Number::Int(i) => i.to_string(),
        // `null` when not finite, as serde_json writes it.
        Number::Float(f) => serde_json::Value::from(*f).to_string(),
        Number::Raw(s) => s.clone(),
    }
}

fn scalar(s: &Scalar, dict: &Dict<'_>) -> String {
    match s {
        Scalar::Text(t) => string(t.pick(dict.values)),
        Scalar::Number(n) => number(n),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Null => "null".to_owned(),
    }
}

fn value(v: &Value, dict: &Dict<'_>) -> String {
    match v {
        Value::Scalar(s) => scalar(s, dict),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|s| scalar(s, dict)).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(members) => {
            let members: Vec<String> = members
                .iter()
                .map(|(k, s)| format!("{}:{}", string(k.pick(dict.names)), scalar(s, dict)))
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

impl Doc {
    /// The document's bytes; `base` holds (name, JSON text of the value) pairs.
    pub fn render(&self, base: &[(&str, String)], dict: &Dict<'_>) -> Vec<u8> {
        let (drop, extra, extra_first) = match self {
            Self::Edited {
                drop,
                extra,
                extra_first,
            } => (*drop, extra, *extra_first),
            Self::Raw(bytes) => return bytes.clone(),
        };
        let base = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 16 || drop & (1 << i) == 0)
            .map(|(_, (name, v))| format!("{}:{v}", string(name)));
        let extra = extra.iter().map(|m| {
            format!(
                "{}:{}",
                string(m.name.pick(dict.names)),
                value(&m.value, dict)
            )
        });
        let members: Vec<String> = if extra_first {
            extra.chain(base).collect()
        } else {
            base.chain(extra).collect()
        };
        format!("{{{}}}", members.join(",")).into_bytes()
    }

    /// True when the document is the base as it is (no member dropped or added).
    pub fn is_base(&self) -> bool {
        matches!(self, Self::Edited { drop: 0, extra, .. } if extra.is_empty())
    }
}

/// How a segment is base64-encoded: JWS uses the first; the others must be refused or at
/// least not confuse the verifiers.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    UrlNoPad,
    UrlPadded,
    Standard,
}

impl Encoding {
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::UrlNoPad => URL_SAFE_NO_PAD.encode(bytes),
            Self::UrlPadded => URL_SAFE.encode(bytes),
            Self::Standard => STANDARD.encode(bytes),
        }
    }
}

/// The signature segment.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// The real signature over the first two segments as they appear in the token.
    Valid,
    /// The real signature with one bit flipped.
    FlipBit(u16),
    /// The real signature cut short.
    Truncate(u8),
    /// A valid signature by a key that nobody trusts (under the same `kid`).
    OtherKey,
    Empty,
    Any(Vec<u8>),
}

/// The compact serialisation around the two documents.
#[derive(Arbitrary, Debug)]
pub struct Compact {
    pub header_encoding: Encoding,
    pub payload_encoding: Encoding,
    pub signature_encoding: Encoding,
    pub signature: Signature,
    /// Text appended after the signature (a fourth segment, whitespace...).
    pub tail: Option<String>,
}

impl Compact {
    /// The token for `header` and `payload`; `sign` signs with the trusted key, `forge` with
    /// an untrusted one.
    pub fn token(
        &self,
        header: &[u8],
        payload: &[u8],
        sign: impl Fn(&[u8]) -> Vec<u8>,
        forge: impl Fn(&[u8]) -> Vec<u8>,
    ) -> String {
        let mut token = format!(
            "{}.{}",
            self.header_encoding.encode(header),
            self.payload_encoding.encode(payload)
        );
        let sig = match &self.signature {
            Signature::Valid => sign(token.as_bytes()),
            Signature::FlipBit(bit) => {
                let mut sig = sign(token.as_bytes());
                let bit = usize::from(*bit) % (sig.len() * 8);
                sig[bit / 8] ^= 1 << (bit % 8);
                sig
            }
            Signature::Truncate(n) => {
                let mut sig = sign(token.as_bytes());
                sig.truncate(usize::from(*n) % sig.len());
                sig
            }
            Signature::OtherKey => forge(token.as_bytes()),
            Signature::Empty => Vec::new(),
            Signature::Any(bytes) => bytes.clone(),
        };
        token.push('.');
        token.push_str(&self.signature_encoding.encode(&sig));
        if let Some(tail) = &self.tail {
            token.push_str(tail);
        }
        token
    }

    /// True when the token carries a signature by the trusted key over its own content.
    pub fn validly_signed(&self) -> bool {
        // `Any` bytes cannot make a valid Ed25519 or ECDSA signature by chance.
        self.signature == Signature::Valid
    }
}
