//! A real `taskpassd` process on loopback for end-to-end tests: its own data dir, a config
//! that trusts a [`DevIssuer`], ports chosen by the kernel, kill -9 and restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskpass_proto::v1::admin_service_client::AdminServiceClient;
use taskpass_proto::v1::agent_service_client::AgentServiceClient;
use taskpass_proto::v1::validation_service_client::ValidationServiceClient;
use tonic::transport::Channel;

use crate::DevIssuer;

/// The audience agents put in their attestation tokens for test brokers.
pub const ATTESTATION_AUDIENCE: &str = "taskpass";
/// The fixed `iss` of test brokers' tokens (stable across restarts).
pub const BROKER_ISSUER: &str = "https://taskpass.test";

/// Finds a workspace binary next to the running test executable (`target/<profile>/NAME`),
/// or at `$NAME_BIN` (e.g. `TASKPASSD_BIN`).
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the {name} binary near {}: run `cargo build --workspace --bins` first, or set {var}",
        exe.display()
    )
}

/// A `taskpassd` child process.
#[derive(Debug)]
pub struct TestBroker {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// `https://127.0.0.1:PORT` of the gRPC listener.
    pub grpc_url: String,
    /// `https://127.0.0.1:PORT` of the HTTPS listener.
    pub http_url: String,
    /// The broker's CA, PEM.
    pub ca_pem: String,
}

impl TestBroker {
    /// The config a test broker runs with: loopback, kernel-chosen ports, trusting `issuer`.
    pub fn config_toml(data_dir: &Path, issuer: &DevIssuer, extra: &str) -> anyhow::Result<String> {
        Self::config_toml_for(data_dir, issuer, extra, true)
    }

    /// [`TestBroker::config_toml`]; without `named_issuer` the broker's issuer is its own
    /// HTTPS address (what OAuth clients, which check the metadata's `issuer`, need).
    fn config_toml_for(
        data_dir: &Path,
        issuer: &DevIssuer,
        extra: &str,
        named_issuer: bool,
    ) -> anyhow::Result<String> {
        let ca = data_dir.join("issuer-ca.pem");
        std::fs::create_dir_all(data_dir)?;
        issuer.write_ca(&ca)?;
        Ok(format!(
            r#"[server]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
data_dir = "{dir}"
trust_domain = "example.org"
{issuer_line}

[[attestation.oidc]]
issuer = "{iss}"
audiences = ["{ATTESTATION_AUDIENCE}"]
ca_file = "{ca}"

{limits}
{extra}
"#,
            // Load from tests is not abuse: no rate limit unless a test asks for one; refusal
            // tallies are written every second so that tests can read them soon.
            limits = if extra.contains("[limits]") {
                ""
            } else {
                "[limits]\nagent_requests_per_second = 0\nrefusal_audit_interval_seconds = 1\n"
            },
            issuer_line = if named_issuer {
                format!("issuer = \"{BROKER_ISSUER}\"")
            } else {
                String::new()
            },
            dir = data_dir.display(),
            iss = issuer.issuer(),
            ca = ca.display(),
        ))
    }

    /// Starts a broker in a fresh temporary data dir, trusting `issuer`.
    pub async fn start(issuer: &DevIssuer) -> anyhow::Result<Self> {
        Self::start_with(issuer, "").await
    }

    /// Like [`TestBroker::start`] with extra TOML appended (e.g. a `[tokens]` table).
    pub async fn start_with(issuer: &DevIssuer, extra: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut b = Self::configure(issuer, tmp.path(), extra)?;
        b._tmp = Some(tmp);
        b.spawn().await?;
        Ok(b)
    }

    /// Like [`TestBroker::start_with`], the broker's issuer being its own HTTPS address
    /// ([`TestBroker::http_url`](TestBroker)) rather than [`BROKER_ISSUER`].
    pub async fn start_self_issued(issuer: &DevIssuer, extra: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        let config = Self::config_toml_for(&dir, issuer, extra, false)?;
        std::fs::write(tmp.path().join("taskpass.toml"), config)?;
        let mut b = Self::configure_written(tmp.path())?;
        b._tmp = Some(tmp);
        b.spawn().await?;
        Ok(b)
    }

    /// Like [`TestBroker::start_with`] with the data dir at `root/data`, which the caller
    /// made (a mounted tmpfs, for instance); the config is written to `root/taskpass.toml`.
    pub async fn start_in(issuer: &DevIssuer, root: &Path, extra: &str) -> anyhow::Result<Self> {
        let mut b = Self::configure(issuer, root, extra)?;
        b.spawn().await?;
        Ok(b)
    }

    /// Writes `root/taskpass.toml` for a data dir at `root/data`; starts nothing.
    fn configure(issuer: &DevIssuer, root: &Path, extra: &str) -> anyhow::Result<Self> {
        let dir = root.join("data");
        let config = Self::config_toml(&dir, issuer, extra)?;
        std::fs::write(root.join("taskpass.toml"), config)?;
        Self::configure_written(root)
    }

    /// The broker of the config already written at `root/taskpass.toml`; starts nothing.
    fn configure_written(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("data");
        Ok(Self {
            dir,
            _tmp: None,
            child: None,
            grpc_url: String::new(),
            http_url: String::new(),
            ca_pem: String::new(),
        })
    }

    /// The broker's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.with_file_name("taskpass.toml")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let endpoint = self.dir.join("broker.json");
        let _ = std::fs::remove_file(&endpoint);
        let child = Command::new(workspace_bin("taskpassd")?)
            .arg("--config")
            .arg(self.config_path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start taskpassd")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&endpoint)
                && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text)
                && doc["pid"].as_u64() == Some(u64::from(pid))
            {
                self.grpc_url = doc["grpc"].as_str().unwrap_or_default().to_owned();
                self.http_url = doc["http"].as_str().unwrap_or_default().to_owned();
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("taskpassd exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("taskpassd did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.ca_pem = std::fs::read_to_string(self.dir.join("ca.pem"))?;
        Ok(())
    }

    /// Rewrites the configuration to listen on the ports this start got, so that a
    /// [`TestBroker::restart`] comes back at the same addresses (clients reconnect to it).
    pub fn pin_ports(&self) -> anyhow::Result<()> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)?;
        let grpc = self.grpc_url.trim_start_matches("https://");
        let http = self.http_url.trim_start_matches("https://");
        let text = text
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{grpc}\""),
                1,
            )
            .replacen(
                "http_listen = \"127.0.0.1:0\"",
                &format!("http_listen = \"{http}\""),
                1,
            );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL: no draining, no flushing.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited with success.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()?;
            if !status.success() {
                bail!("kill -TERM failed");
            }
            return Ok(c.wait()?.success());
        }
        Ok(false)
    }

    /// Starts the broker again on the same data dir (after [`TestBroker::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }

    async fn channel(&self, admin: bool) -> anyhow::Result<Channel> {
        let identity = if admin {
            Some((
                std::fs::read_to_string(self.dir.join("admin.pem"))?,
                std::fs::read_to_string(self.dir.join("admin-key.pem"))?,
            ))
        } else {
            None
        };
        let id = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        Ok(taskpass_proto::connect(&self.grpc_url, &self.ca_pem, id).await?)
    }

    /// An agents' client (no client certificate).
    pub async fn agent(&self) -> anyhow::Result<AgentServiceClient<Channel>> {
        Ok(AgentServiceClient::new(self.channel(false).await?))
    }

    /// A validators' client with the bootstrap admin credential (an operator may introspect
    /// and follow revocations too).
    pub async fn validation(&self) -> anyhow::Result<ValidationServiceClient<Channel>> {
        Ok(ValidationServiceClient::new(self.channel(true).await?))
    }

    /// A validators' client without a client certificate (to test that it is refused).
    pub async fn validation_anonymous(&self) -> anyhow::Result<ValidationServiceClient<Channel>> {
        Ok(ValidationServiceClient::new(self.channel(false).await?))
    }

    /// An operators' client with the bootstrap admin credential.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel(true).await?))
    }

    /// An admin client without a client certificate (to test that it is refused).
    pub async fn admin_without_cert(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel(false).await?))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
