//! The broker's own PKI, created in the data dir on first start: a CA (`ca.pem`,
//! `ca-key.pem`), the first operator credential (`admin.pem`, `admin-key.pem`), and each start
//! a fresh server certificate for `localhost` and the listen addresses (kept in memory).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use taskpass_core::{RoleName, TrustDomain};

/// Data-dir file names: part of the public contract.
pub mod files {
    /// The broker's CA certificate: clients trust the server with it.
    pub const CA: &str = "ca.pem";
    /// The CA's private key (0600).
    pub const CA_KEY: &str = "ca-key.pem";
    /// The first operator's certificate.
    pub const ADMIN: &str = "admin.pem";
    /// The first operator's private key (0600).
    pub const ADMIN_KEY: &str = "admin-key.pem";
    /// The token signing key, PKCS#8 (0600).
    pub const SIGNING_KEY: &str = "signing-key.p8";
    /// The store.
    pub const STORE: &str = "store.redb";
    /// Where the running broker listens, for `taskpass --data-dir`.
    pub const ENDPOINT: &str = "broker.json";
}

/// Why the PKI could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate generation failed, or a stored key is unreadable.
    #[error("{what}: {detail}")]
    Cert {
        /// What was being made or read.
        what: &'static str,
        /// The library's message.
        detail: String,
    },
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |e| PkiError::Cert {
        what,
        detail: e.to_string(),
    }
}

/// The PKI material the server needs in memory. Its `Debug` output leaves out the key.
pub struct BrokerPki {
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Server certificate chain (leaf then CA), PEM.
    pub server_chain_pem: String,
    /// Server private key, PEM. Never logged.
    pub server_key_pem: String,
    /// Issues the next server certificate.
    pub server: ServerCertIssuer,
    /// The first operator credential, when this start created the CA (to be recorded).
    pub first_admin: Option<IssuedCertificate>,
}

impl std::fmt::Debug for BrokerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerPki")
            .field("ca_pem", &self.ca_pem)
            .field("server_chain_pem", &self.server_chain_pem)
            .field("server_key_pem", &"<redacted>")
            .field("server", &self.server)
            .field("first_admin", &self.first_admin.as_ref().map(|c| &c.serial))
            .finish()
    }
}

fn ca_params(trust_domain: &TrustDomain) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Taskpass");
    dn.push(
        DnType::CommonName,
        format!("Taskpass broker CA ({trust_domain})"),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    p
}

/// Writes `contents` to `path` with mode 0600 (or 0644 when `public`), atomically.
pub fn write_file(path: &Path, contents: &[u8], public: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if public { 0o644 } else { 0o600 });
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    // Make the rename itself durable: a key must not vanish in a power cut.
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates the data dir (0700) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Loads the CA from the data dir, creating it and the first operator credential on first
/// start, then issues this start's server certificate for `localhost` and `ips`.
pub fn bootstrap(
    dir: &Path,
    trust_domain: &TrustDomain,
    ips: &[IpAddr],
    names: &[String],
) -> Result<BrokerPki, PkiError> {
    ensure_data_dir(dir)?;
    let ca_path = dir.join(files::CA);
    let ca_key_path = dir.join(files::CA_KEY);
    let mut new_ca = false;
    let (ca_pem, ca_key) = match (read(&ca_path)?, read(&ca_key_path)?) {
        (Some(pem), Some(key)) => (
            pem,
            KeyPair::from_pem(&key).map_err(cert_err("ca-key.pem"))?,
        ),
        (None, None) => {
            let key = KeyPair::generate().map_err(cert_err("CA key"))?;
            let cert = ca_params(trust_domain)
                .self_signed(&key)
                .map_err(cert_err("CA certificate"))?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), false)?;
            write_file(&ca_path, cert.pem().as_bytes(), true)?;
            tracing::info!(path = %ca_path.display(), "created the broker CA");
            new_ca = true;
            (cert.pem(), key)
        }
        _ => {
            return Err(PkiError::Cert {
                what: "CA",
                detail: format!(
                    "only one of {} and {} exists in {}: restore the other or remove both to start a new CA",
                    files::CA,
                    files::CA_KEY,
                    dir.display()
                ),
            });
        }
    };
    // Sign with the CA certificate as it is on disk (its own subject and key identifier), so
    // certificates chain to it even if the parameters a new CA would get change later.
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_err("ca.pem"))?;

    let admin_path = dir.join(files::ADMIN);
    let admin_key_path = dir.join(files::ADMIN_KEY);
    // The first operator credential comes with a new CA, and only then: a deleted admin.pem
    // is not silently replaced by a new full admin (see `taskpassd --recover-admin`).
    let mut first_admin = None;
    if new_ca {
        let (cert, key) = issue_operator(
            &issuer,
            trust_domain,
            &RoleName::admin(),
            "bootstrap",
            MAX_OPERATOR_DAYS,
        )?;
        write_file(&admin_key_path, key.as_bytes(), false)?;
        write_file(&admin_path, cert.pem.as_bytes(), true)?;
        tracing::info!(path = %admin_path.display(), "created the first operator credential");
        first_admin = Some(cert);
    } else if read(&admin_path)?.is_none() {
        tracing::info!(
            "no {} in the data dir: operators use their own credentials (lost them all? stop the broker and run taskpassd --recover-admin NAME)",
            files::ADMIN
        );
    }

    let mut sans = vec![SanType::DnsName(
        "localhost".try_into().map_err(cert_err("server SAN"))?,
    )];
    for ip in ips {
        // A wildcard listener is dialled on loopback (or on a name the operator configures).
        let ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            other => *other,
        };
        let san = SanType::IpAddress(ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.as_str().try_into().map_err(cert_err("server_names"))?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let server = ServerCertIssuer {
        dir: dir.to_path_buf(),
        sans,
        ca_pem: ca_pem.clone(),
    };
    let (server_chain_pem, server_key_pem) = server.issue_with(&issuer)?;
    drop(issuer);
    Ok(BrokerPki {
        ca_pem,
        server_chain_pem,
        server_key_pem,
        server,
        first_admin,
    })
}

/// Operator certificates' default lifetime, days.
pub const DEFAULT_OPERATOR_DAYS: u32 = 30;
/// The longest operator certificate, days.
pub const MAX_OPERATOR_DAYS: u32 = 90;

/// Issues the broker's server certificates from its CA: one at start, then again before the
/// current one nears its end, without a restart. The CA key is read from the data dir for each
/// issuance and dropped after it, so it does not stay in the broker's memory.
pub struct ServerCertIssuer {
    dir: PathBuf,
    sans: Vec<SanType>,
    ca_pem: String,
}

impl std::fmt::Debug for ServerCertIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertIssuer")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

/// How long a server certificate is valid.
pub const SERVER_CERT_DAYS: i64 = 90;

impl ServerCertIssuer {
    /// A fresh key and certificate: (chain PEM, key PEM).
    pub fn issue(&self) -> Result<(String, String), PkiError> {
        self.issue_with(&load_issuer(&self.dir)?)
    }

    fn issue_with(&self, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(cert_err("server key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "taskpassd");
        p.distinguished_name = dn;
        p.subject_alt_names = self.sans.clone();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(SERVER_CERT_DAYS);
        let cert = p
            .signed_by(&key, issuer)
            .map_err(cert_err("server certificate"))?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }
}

/// The CA of an existing data dir, for issuing operator credentials offline.
pub fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let missing = |f: &str| PkiError::Cert {
        what: "CA",
        detail: format!("{} has no {f}: is it a broker's data dir?", dir.display()),
    };
    let pem = read(&dir.join(files::CA))?.ok_or_else(|| missing(files::CA))?;
    let key = read(&dir.join(files::CA_KEY))?.ok_or_else(|| missing(files::CA_KEY))?;
    let key = KeyPair::from_pem(&key).map_err(cert_err("ca-key.pem"))?;
    Issuer::from_ca_cert_pem(&pem, key).map_err(cert_err("ca.pem"))
}

/// The URI SAN of an operator: `spiffe://<trust-domain>/operator/<role>/<name>`.
pub fn operator_uri(trust_domain: &TrustDomain, role: &RoleName, name: &str) -> String {
    format!("spiffe://{trust_domain}/operator/{role}/{name}")
}

/// Issues an operator client certificate to a key made here; returns it and the key PEM.
pub fn issue_operator(
    issuer: &Issuer<'_, KeyPair>,
    trust_domain: &TrustDomain,
    role: &RoleName,
    name: &str,
    days: u32,
) -> Result<(IssuedCertificate, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err("operator key"))?;
    let id = operator_id(trust_domain, role, name)?;
    let cert = issue_client_cert(issuer, &id, &key, time::Duration::days(i64::from(days)))?;
    Ok((cert, key.serialize_pem()))
}

/// A certificate read back from its PEM (the first one), as issuance describes it.
pub fn parse_issued(pem: &str) -> Result<IssuedCertificate, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |detail: &str| PkiError::Cert {
        what: "certificate",
        detail: detail.to_owned(),
    };
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| bad("not a PEM certificate"))?
        .to_vec();
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| bad("cannot be parsed"))?;
    Ok(IssuedCertificate {
        pem: pem.to_owned(),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        der,
    })
}

/// The role and name of an operator certificate of `trust_domain`, from its URI SAN.
pub fn operator_of(
    cert: &IssuedCertificate,
    trust_domain: &TrustDomain,
) -> Option<(RoleName, String)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            let rest = u.strip_prefix(&format!("spiffe://{trust_domain}/operator/"))?;
            let (role, name) = rest.split_once('/')?;
            Some((RoleName::parse(role).ok()?, name.to_owned()))
        }
        _ => None,
    })
}

/// The SPIFFE id of an operator.
pub fn operator_id(
    trust_domain: &TrustDomain,
    role: &RoleName,
    name: &str,
) -> Result<taskpass_core::SpiffeId, PkiError> {
    taskpass_core::SpiffeId::parse(&operator_uri(trust_domain, role, name)).map_err(|e| {
        PkiError::Cert {
            what: "operator name",
            detail: e.to_string(),
        }
    })
}

/// A certificate issued from a CSR.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// Its DER.
    pub der: Vec<u8>,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// Issues a client certificate for `spiffe_id` to the key of `csr_pem`, valid for `hours`.
/// Only the CSR's public key is used (its signature proves the requester holds the private
/// key); everything else the certificate says is the broker's: one URI SAN, clientAuth, not a
/// CA, a random 128-bit serial. Keys: ECDSA P-256/P-384 or Ed25519.
pub fn issue_from_csr(
    issuer: &Issuer<'_, KeyPair>,
    spiffe_id: &taskpass_core::SpiffeId,
    csr_pem: &str,
    hours: u32,
) -> Result<IssuedCertificate, PkiError> {
    let bad = |detail: &str| PkiError::Cert {
        what: "CSR",
        detail: detail.to_owned(),
    };
    if csr_pem.len() > 16 * 1024 {
        return Err(bad("the CSR is larger than 16 KiB"));
    }
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|_| bad("not a PEM certificate signing request whose signature verifies"))?;
    let alg = csr.public_key.algorithm();
    if ![
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
    {
        return Err(bad("the CSR's key must be ECDSA P-256, P-384 or Ed25519"));
    }
    issue_client_cert(
        issuer,
        spiffe_id,
        &csr.public_key,
        time::Duration::hours(i64::from(hours)),
    )
}

/// A client certificate for `spiffe_id` to `public_key`: one URI SAN, clientAuth, not a CA, a
/// random 128-bit serial, valid from five minutes ago for `lifetime`.
fn issue_client_cert(
    issuer: &Issuer<'_, KeyPair>,
    spiffe_id: &taskpass_core::SpiffeId,
    public_key: &impl rcgen::PublicKeyData,
    lifetime: time::Duration,
) -> Result<IssuedCertificate, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spiffe_id.path().trim_start_matches('/'));
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(
        spiffe_id
            .as_str()
            .try_into()
            .map_err(cert_err("certificate SAN"))?,
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.is_ca = IsCa::ExplicitNoCa;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial).map_err(
        |_| PkiError::Cert {
            what: "serial",
            detail: "no randomness".into(),
        },
    )?;
    serial[0] &= 0x7f;
    serial[0] |= 0x40;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    // A little before now, for clocks slightly behind the broker's.
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + lifetime;
    let cert = p
        .signed_by(public_key, issuer)
        .map_err(cert_err("client certificate"))?;
    Ok(IssuedCertificate {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        not_before: p.not_before.unix_timestamp(),
        not_after: p.not_after.unix_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn debug_output_holds_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let pki = bootstrap(dir.path(), &td, &[], &[]).unwrap();
        let shown = format!("{pki:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let key_body = pki.server_key_pem.lines().nth(1).unwrap();
        assert!(!shown.contains(key_body));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn server_certificate_names_and_stable_ca() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let ips = [IpAddr::from([0, 0, 0, 0]), IpAddr::from([10, 1, 2, 3])];
        let names = ["taskpass.example.org".to_owned(), "192.0.2.9".to_owned()];
        let first = bootstrap(dir.path(), &td, &ips, &names).unwrap();
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(first.server_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let shown: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        // x509-parser shows IP SANs as hex bytes: 127.0.0.1, 10.1.2.3, 192.0.2.9.
        for want in [
            "DNSName(localhost)",
            "IPAddress(7f:00:00:01)",
            "IPAddress(0a:01:02:03)",
            "DNSName(taskpass.example.org)",
            "IPAddress(c0:00:02:09)",
        ] {
            assert!(
                shown.iter().any(|s| s.contains(want)),
                "{want} missing from {shown:?}"
            );
        }
        assert!(
            !shown.iter().any(|s| s.contains("00:00:00:00")),
            "no wildcard: {shown:?}"
        );
        // A second start keeps the CA and issues from it.
        let second = bootstrap(dir.path(), &td, &ips, &[]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        let ca_der =
            rustls_pki_types::CertificateDer::from_pem_slice(second.ca_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        let chain2: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(second.server_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let (_, leaf2) = x509_parser::parse_x509_certificate(chain2[0].as_ref()).unwrap();
        assert_eq!(leaf2.issuer(), ca.subject());
        assert!(leaf2.verify_signature(Some(ca.public_key())).is_ok());
        // Keys are private.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [files::CA_KEY, files::ADMIN_KEY] {
                let mode = fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
