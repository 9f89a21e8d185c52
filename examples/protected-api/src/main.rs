//! `protected-api`: the example API as a process. It follows the broker with a validator
//! credential from `taskpass validator add tickets-api --audience AUD --out DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use taskpass_verify::{LiveConfig, Verifier};

#[derive(Debug, Parser)]
#[command(about = "A small API that accepts Taskpass tokens")]
struct Args {
    /// The broker's gRPC URL (its `broker.json` names it), e.g. https://127.0.0.1:7443.
    #[arg(long)]
    broker: String,
    /// The issuer in the broker's tokens (`iss`).
    #[arg(long)]
    issuer: String,
    /// The directory `taskpass validator add … --out DIR` wrote (NAME.pem, NAME-key.pem, ca.pem).
    #[arg(long)]
    credentials: PathBuf,
    /// The validator's name in that directory.
    #[arg(long, default_value = "tickets-api")]
    name: String,
    /// This API's audience: what tokens must be for.
    #[arg(long)]
    audience: String,
    /// Where to listen (plain HTTP: put it behind your TLS ingress).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let read = |file: String| {
        let path = args.credentials.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let config = LiveConfig::new(
        args.broker.clone(),
        args.issuer.clone(),
        read("ca.pem".into())?,
        read(format!("{}.pem", args.name))?,
        read(format!("{}-key.pem", args.name))?,
    );
    let verifier = Verifier::connect(config)
        .await
        .context("cannot follow the broker")?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "protected-api listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, protected_api::app(verifier, &args.audience)).await?;
    Ok(())
}
