//! A throwaway certificate authority for tests: ECDSA P-256 keys, made with rcgen.

use std::net::IpAddr;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A test CA that signs server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the test CA key")?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the test CA")?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A server certificate for `dns` names and `ips`, signed by this CA: (cert PEM, PKCS#8
    /// key PEM).
    pub fn server_cert(&self, dns: &[&str], ips: &[IpAddr]) -> anyhow::Result<(String, String)> {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        params.distinguished_name = DistinguishedName::new();
        let cn = dns
            .first()
            .map_or_else(|| "taskpass test server".to_owned(), |d| (*d).to_owned());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a server certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
