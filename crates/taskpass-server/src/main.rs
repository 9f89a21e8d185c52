//! `taskpassd`: the Taskpass broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use taskpass_server::ConfigFile;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Taskpass broker: short-lived, task-scoped credentials for AI agents.
#[derive(Debug, Parser)]
#[command(name = "taskpassd", version)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Start on the embedded defaults (data dir ./taskpass-data, trust domain dev.local,
    /// gRPC on 127.0.0.1:7443, HTTPS on 127.0.0.1:7444).
    #[arg(long)]
    dev: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// With the broker stopped: issue and record a new admin credential NAME from the data
    /// dir's CA (when every admin credential is lost), write it to --out, and exit.
    #[arg(long, value_name = "NAME", requires = "out")]
    recover_admin: Option<String>,
    /// Where --recover-admin writes NAME.pem and NAME-key.pem (0600).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskpassd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let file = match (&args.config, args.dev) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            ConfigFile::parse(&text)?
        }
        (None, true) => ConfigFile::dev(),
        (None, false) => anyhow::bail!("pass --config FILE, or --dev for the embedded defaults"),
    };
    let config = file.validate(&std::env::current_dir()?)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let (Some(name), Some(out)) = (&args.recover_admin, &args.out) {
        let cert = runtime.block_on(taskpass_server::recover_admin(&config, name, out))?;
        println!(
            "issued admin credential {name}: {} (key beside it, 0600); it is recorded and audited",
            cert.display()
        );
        return Ok(());
    }
    runtime.block_on(async move {
        let broker = taskpass_server::launch(config).await?;
        broker.run_until(shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; draining");
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
