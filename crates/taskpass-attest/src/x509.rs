//! X.509 client-certificate attestation: the verified certificate of an mTLS connection names
//! the agent by its one SPIFFE URI SAN.
//!
//! Each certificate authority the broker trusts is an [`Authority`]: its root certificates and
//! the SPIFFE trust domains it may vouch for (the broker's own CA vouches for the broker's own
//! trust domain; a SPIRE server's bundle or a corporate PKI for the domains its
//! `[[attestation.x509]]` table names). A chain is accepted when one authority verifies it
//! (signatures, validity, clientAuth usage: rustls' WebPKI verifier) and that authority may
//! vouch for the certificate's trust domain. Refused, each with its own reason: no certificate,
//! expired or not yet valid, an untrusted chain, a CA certificate as the leaf, no clientAuth
//! extended key usage, zero or several URI SANs, a URI SAN that is not a canonical SPIFFE id,
//! a trust domain the authority may not vouch for, SHA-1 signatures, RSA keys under 2048 bits.
//! Revoked serials are the caller's to check (the broker keeps them in its store).

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};
use taskpass_core::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::{AttestError, quoted};

/// The longest chain looked at (leaf and intermediates).
pub const MAX_CHAIN: usize = 8;

/// The smallest RSA key accepted anywhere in a chain, bits.
pub const MIN_RSA_BITS: usize = 2048;

/// One certificate authority and what it may vouch for.
#[derive(Debug, Clone)]
pub struct Authority {
    /// How logs and errors name it: "the broker's CA" or its `ca_file`.
    pub name: String,
    /// Its root certificates.
    pub roots: Vec<CertificateDer<'static>>,
    /// The SPIFFE trust domains its certificates may name.
    pub trust_domains: Vec<String>,
}

struct Checked {
    name: String,
    trust_domains: Vec<String>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// What a verified client certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// Its one URI SAN.
    pub spiffe_id: SpiffeId,
    /// `x5t#S256`: base64url SHA-256 of the leaf's DER, for the token's `cnf`.
    pub thumbprint: String,
    /// The leaf's serial number, lowercase hex without separators.
    pub serial: String,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The authority that vouched for it.
    pub authority: String,
}

/// Verifies client certificate chains against the configured authorities.
pub struct X509Verifier {
    authorities: Vec<Checked>,
}

impl std::fmt::Debug for X509Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Verifier")
            .field(
                "authorities",
                &self
                    .authorities
                    .iter()
                    .map(|a| (&a.name, &a.trust_domains))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl X509Verifier {
    /// A verifier for `authorities`; each needs at least one root and one trust domain.
    pub fn new(authorities: Vec<Authority>) -> Result<Self, AttestError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut problems = Vec::new();
        let mut checked = Vec::new();
        for a in authorities {
            if a.trust_domains.is_empty() {
                problems.push(format!("{}: trust_domains is empty", a.name));
                continue;
            }
            let mut roots = RootCertStore::empty();
            for r in a.roots {
                if let Err(e) = roots.add(r) {
                    problems.push(format!("{}: a root certificate is unusable: {e}", a.name));
                }
            }
            if roots.is_empty() {
                problems.push(format!("{}: no usable root certificate", a.name));
                continue;
            }
            match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
            {
                Ok(verifier) => checked.push(Checked {
                    name: a.name,
                    trust_domains: a.trust_domains,
                    verifier,
                }),
                Err(e) => problems.push(format!("{}: {e}", a.name)),
            }
        }
        if !problems.is_empty() {
            return Err(AttestError::Config { problems });
        }
        Ok(Self {
            authorities: checked,
        })
    }

    /// Verifies `chain` (leaf first, as the TLS handshake presented it) at `now` (Unix
    /// seconds) and returns the identity it proves.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: i64,
    ) -> Result<CertificateIdentity, AttestError> {
        let refuse =
            |reason: &'static str, detail: String| AttestError::Certificate { reason, detail };
        let Some((leaf_der, intermediates)) = chain.split_first() else {
            return Err(refuse(
                "certificate_missing",
                "this connection presented no client certificate: connect with the agent's certificate and key".into(),
            ));
        };
        if chain.len() > MAX_CHAIN {
            return Err(refuse(
                "certificate_chain_too_long",
                format!(
                    "the chain has {} certificates, more than {MAX_CHAIN}",
                    chain.len()
                ),
            ));
        }
        let parsed = chain
            .iter()
            .map(|c| X509Certificate::from_der(c.as_ref()).map(|(_, cert)| cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                refuse(
                    "certificate_malformed",
                    "a certificate cannot be parsed".into(),
                )
            })?;
        let leaf = &parsed[0];
        for cert in &parsed {
            let alg = cert.signature_algorithm.algorithm.to_id_string();
            // sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1.
            if matches!(
                alg.as_str(),
                "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" | "1.2.840.10040.4.3"
            ) {
                return Err(refuse(
                    "certificate_sha1",
                    "a certificate of the chain is signed with SHA-1, which is not accepted".into(),
                ));
            }
            if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() {
                let bits = rsa_bits(rsa.modulus);
                if bits < MIN_RSA_BITS {
                    return Err(refuse(
                        "certificate_weak_key",
                        format!(
                            "a certificate of the chain has a {bits}-bit RSA key: at least {MIN_RSA_BITS} bits are required"
                        ),
                    ));
                }
            }
        }
        if leaf
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca)
        {
            return Err(refuse(
                "certificate_is_ca",
                "the client certificate is a CA certificate: present the agent's own certificate"
                    .into(),
            ));
        }
        let client_auth = leaf
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.client_auth);
        if !client_auth {
            return Err(refuse(
                "certificate_not_for_clients",
                "the client certificate has no clientAuth extended key usage".into(),
            ));
        }
        let uris: Vec<&str> = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(_) => {
                return Err(refuse(
                    "certificate_malformed",
                    "the subject alternative names cannot be parsed".into(),
                ));
            }
        };
        let [uri] = uris.as_slice() else {
            return Err(refuse(
                "certificate_uri_sans",
                format!(
                    "the client certificate has {} URI SANs: it must have exactly one, the agent's SPIFFE id",
                    uris.len()
                ),
            ));
        };
        let spiffe_id = SpiffeId::parse(uri).map_err(|e| {
            refuse(
                "certificate_not_spiffe",
                format!("the URI SAN {} is not a SPIFFE id: {e}", quoted(uri)),
            )
        })?;

        let now_unix = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        let mut first_error = None;
        let mut vouched = None;
        for a in &self.authorities {
            match a
                .verifier
                .verify_client_cert(leaf_der, intermediates, now_unix)
            {
                Ok(_) => {
                    vouched = Some(a);
                    break;
                }
                Err(e) => {
                    // Prefer what the chain's own authority said over "unknown issuer" from
                    // the others.
                    let specific = !matches!(
                        e,
                        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                    );
                    if first_error.is_none() || specific {
                        first_error = Some(e);
                    }
                }
            }
        }
        let Some(authority) = vouched else {
            return Err(chain_error(first_error));
        };
        if !authority
            .trust_domains
            .iter()
            .any(|td| td == spiffe_id.trust_domain())
        {
            return Err(refuse(
                "certificate_trust_domain",
                format!(
                    "{} may not vouch for trust domain {}: its trust_domains are {:?}",
                    authority.name,
                    quoted(spiffe_id.trust_domain()),
                    authority.trust_domains
                ),
            ));
        }
        Ok(CertificateIdentity {
            spiffe_id,
            thumbprint: taskpass_core::certificate_thumbprint(leaf_der.as_ref()),
            serial: hex(leaf.raw_serial()),
            not_after: leaf.validity().not_after.timestamp(),
            authority: authority.name.clone(),
        })
    }
}

/// The refusal for a chain no authority verified.
fn chain_error(e: Option<rustls::Error>) -> AttestError {
    let (reason, detail) = match e {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "certificate_expired",
                "the client certificate has expired: renew it",
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "certificate_not_yet_valid",
                "the client certificate is not valid yet: check the clocks",
            ),
            CertificateError::UnknownIssuer => (
                "certificate_untrusted",
                "the client certificate chain does not lead to a certificate authority this broker trusts",
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
                "certificate_not_for_clients",
                "the client certificate may not be used for client authentication",
            ),
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => (
                "certificate_weak_signature",
                "a certificate of the chain uses a signature algorithm that is not accepted",
            ),
            CertificateError::BadSignature => (
                "certificate_untrusted",
                "a signature in the client certificate chain does not verify",
            ),
            _ => (
                "certificate_untrusted",
                "the client certificate chain does not verify",
            ),
        },
        _ => (
            "certificate_untrusted",
            "the client certificate chain does not verify",
        ),
    };
    AttestError::Certificate {
        reason,
        detail: detail.into(),
    }
}

/// The bit length of a DER INTEGER's big-endian magnitude.
fn rsa_bits(modulus: &[u8]) -> usize {
    let m = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    m.len() * 8 - m[0].leading_zeros() as usize
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bits_counts_the_magnitude() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x7f, 0]), 15);
        assert_eq!(rsa_bits(&[0, 0, 1]), 1);
        assert_eq!(rsa_bits(&[]), 0);
    }
}
