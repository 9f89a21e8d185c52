//! Finding and connecting to the broker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use taskpass_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use crate::Global;

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The admin client for the broker that `g` names.
pub async fn admin(g: &Global) -> anyhow::Result<AdminServiceClient<Channel>> {
    let (url, ca, cert, key) = match (&g.server, &g.data_dir) {
        (Some(url), _) => {
            let (Some(ca), Some(cert), Some(key)) = (&g.ca, &g.cert, &g.key) else {
                bail!(
                    "--server needs --ca, --cert and --key (or use --data-dir for a local broker)"
                );
            };
            (url.clone(), ca.clone(), cert.clone(), key.clone())
        }
        (None, dir) => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("taskpass-data"));
            let endpoint = read(&dir.join("broker.json"), "the broker's endpoint file").context(
                "is a broker running there? start one with `taskpassd --dev`, or pass --data-dir / --server",
            )?;
            let doc: serde_json::Value =
                serde_json::from_str(&endpoint).context("broker.json is not valid JSON")?;
            let url = doc["grpc"]
                .as_str()
                .context("broker.json has no grpc address")?
                .to_owned();
            (
                url,
                g.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
                g.cert.clone().unwrap_or_else(|| dir.join("admin.pem")),
                g.key.clone().unwrap_or_else(|| dir.join("admin-key.pem")),
            )
        }
    };
    let ca = read(&ca, "CA certificate")?;
    let cert = read(&cert, "operator certificate")?;
    let key = read(&key, "operator key")?;
    let channel = taskpass_proto::connect(&url, &ca, Some((&cert, &key)))
        .await
        .with_context(|| format!("cannot connect to the broker at {url}"))?;
    Ok(AdminServiceClient::new(channel))
}

/// A new ECDSA P-256 key and a CSR for it: (CSR PEM, key PEM). The key stays here; only the
/// CSR goes to the broker, which takes nothing from it but the public key.
pub fn key_and_csr() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .context("making the CSR")?
        .pem()
        .context("encoding the CSR")?;
    Ok((csr, key.serialize_pem()))
}

/// `attestation.mtls`: the connection's client certificate attests.
pub fn mtls_attestation() -> taskpass_proto::v1::Attestation {
    use taskpass_proto::v1 as pb;
    pb::Attestation {
        method: Some(pb::attestation::Method::Mtls(pb::MtlsAttestation {})),
    }
}
