//! `taskpass policy …`: the schema and validation run here, with no broker; apply, show and
//! history go through the admin API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use taskpass_policy::{PolicyEngine, PolicySource};
use taskpass_proto::v1 as pb;

use crate::{Global, Output, PolicyCmd};

/// The largest policy file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

fn read(files: &[PathBuf]) -> anyhow::Result<Vec<pb::PolicyFile>> {
    files
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .len();
            if len > MAX_FILE_BYTES {
                bail!("{} is larger than 1 MiB", p.display());
            }
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok(pb::PolicyFile {
                name: p.display().to_string(),
                text,
            })
        })
        .collect()
}

/// `policy schema`.
pub fn schema(g: &Global) -> anyhow::Result<()> {
    match g.output {
        Output::Json => println!("{}", json!({"schema": taskpass_policy::schema_text()})),
        Output::Text => print!("{}", taskpass_policy::schema_text()),
    }
    Ok(())
}

/// `policy validate FILE…`.
pub fn validate(g: &Global, files: &[PathBuf]) -> anyhow::Result<()> {
    let sources: Vec<PolicySource> = read(files)?
        .into_iter()
        .map(|f| PolicySource::new(f.name, f.text))
        .collect();
    match PolicyEngine::compile(&sources) {
        Ok(engine) => {
            match g.output {
                Output::Json => println!("{}", json!({"valid": true, "policy_ids": engine.ids()})),
                Output::Text => println!(
                    "valid: {} polic{} ({})",
                    engine.ids().len(),
                    if engine.ids().len() == 1 { "y" } else { "ies" },
                    engine.ids().join(", ")
                ),
            }
            Ok(())
        }
        Err(e) => {
            match g.output {
                Output::Json => println!("{}", json!({"valid": false, "problems": e.0})),
                Output::Text => {
                    for p in &e.0 {
                        eprintln!("  - {}", crate::output::safe(p));
                    }
                }
            }
            bail!(
                "the policy set is invalid: {} problem{}",
                e.0.len(),
                if e.0.len() == 1 { "" } else { "s" }
            )
        }
    }
}

fn set_json(s: &pb::PolicySetInfo) -> serde_json::Value {
    json!({
        "version": s.version, "active": s.active, "policy_ids": s.policy_ids,
        "digest": s.digest, "applied_at": s.applied_at, "applied_by": s.applied_by,
        "origin": s.origin,
        "files": s.files.iter().map(|f| json!({"name": f.name, "text": f.text})).collect::<Vec<_>>(),
    })
}

fn set_line(s: &pb::PolicySetInfo) -> String {
    format!(
        "version {}{} ({}) by {} at {}: {}",
        s.version,
        if s.active { ", in force" } else { "" },
        s.origin,
        crate::output::safe(&s.applied_by),
        s.applied_at,
        s.policy_ids.join(", ")
    )
}

/// `policy apply | show | history`.
pub async fn run(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cmd: PolicyCmd,
) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Apply { files } => {
            let files = read(&files)?;
            let set = admin
                .apply_policies(pb::ApplyPoliciesRequest { files })
                .await?
                .into_inner()
                .set
                .context("the broker answered without the set")?;
            match g.output {
                Output::Json => println!("{}", set_json(&set)),
                Output::Text => println!("applied {}", set_line(&set)),
            }
        }
        PolicyCmd::Show => {
            let set = admin
                .get_policies(pb::GetPoliciesRequest {})
                .await?
                .into_inner()
                .set;
            match (g.output, set) {
                (Output::Json, Some(s)) => println!("{}", set_json(&s)),
                (Output::Json, None) => println!("{}", json!({"version": 0, "policy_ids": []})),
                (Output::Text, Some(s)) => {
                    println!("{}", set_line(&s));
                    for f in &s.files {
                        println!(
                            "\n// {}\n{}",
                            crate::output::safe(&f.name),
                            crate::output::safe(&f.text)
                        );
                    }
                }
                (Output::Text, None) => {
                    println!("no policy set: the allow-lists decide alone");
                }
            }
        }
        PolicyCmd::History { limit } => {
            let sets = admin
                .list_policy_sets(pb::ListPolicySetsRequest { limit })
                .await?
                .into_inner()
                .sets;
            match g.output {
                Output::Json => {
                    println!("{}", json!(sets.iter().map(set_json).collect::<Vec<_>>()))
                }
                Output::Text => {
                    for s in &sets {
                        println!("{}", set_line(s));
                    }
                }
            }
        }
        PolicyCmd::Schema | PolicyCmd::Validate { .. } => {
            bail!("policy schema and validate run without a broker")
        }
    }
    Ok(())
}
