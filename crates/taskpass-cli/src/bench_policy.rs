//! `taskpass bench --policies`: what Cedar costs. First the decision alone, in this process:
//! StartTask and IssueToken decisions against 100 policies for 1,000 agents (p50, p99, max),
//! each evaluated afresh (never from the engine's memo of this second's verdicts).
//! Then IssueToken against two brokers started here, one without policies and one with the
//! same 100, alternating rounds so that both meet the same machine, reported as a ratio.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use taskpass_core::{
    Agent, AgentName, AgentState, AllowList, Audience, Binding, Decision, DecisionContext,
    IssueRequest, Limits, Purpose, ScopeSet, StartRequest, Task, TaskId, TaskState, TrustDomain,
    decide_issue, decide_start_task,
};
use taskpass_policy::{PolicyEngine, PolicySource};
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer, TestBroker};

use crate::Output;
use crate::bench::{
    BenchArgs, Load, Run, drive, issue_call, register_bench_agent, run_json, run_line,
};

const POLICIES: usize = 100;
const AGENTS: usize = 1000;
const DECISIONS: usize = 20_000;

/// 100 policies of the shapes operators write: one permit, forbids naming agents, tenants'
/// audiences, business hours for scopes, TTL caps per environment.
fn policy_text() -> String {
    let mut s = String::from("@id(\"base\") permit (principal, action, resource);\n");
    for i in 0..40 {
        let _ = writeln!(
            s,
            "@id(\"agent-{i}-no-delete\") forbid (principal == Taskpass::Agent::\"spiffe://example.org/agent/a-{i}\", action, resource is Taskpass::Scope) when {{ resource.name like \"*:delete\" }};"
        );
    }
    for i in 0..20 {
        let _ = writeln!(
            s,
            "@id(\"tenant-{i}-own-apis\") forbid (principal in Taskpass::Tenant::\"t-{i}\", action, resource is Taskpass::Audience) unless {{ resource.url like \"https://*.t-{i}.example\" }};"
        );
    }
    for i in 0..20 {
        let _ = writeln!(
            s,
            "@id(\"scope-{i}-business-hours\") forbid (principal, action, resource == Taskpass::Scope::\"s-{i}:write\") unless {{ context.time.hour >= 8 && context.time.hour < 18 }};"
        );
    }
    for i in 0..19 {
        let _ = writeln!(
            s,
            "@id(\"env-{i}-short-tokens\") forbid (principal, action == Taskpass::Action::\"IssueToken\", resource) when {{ principal.environment == \"env-{i}\" && context.ttl_seconds > 600 }};"
        );
    }
    s
}

fn agents() -> anyhow::Result<Vec<Agent>> {
    let td = TrustDomain::parse("example.org")?;
    (0..AGENTS)
        .map(|i| {
            let name = AgentName::parse(&format!("a-{i}"))?;
            Ok(Agent {
                id: td.agent_id(&name),
                name,
                owner: "bench".into(),
                purpose: "bench".into(),
                tenant: format!("t-{}", i % 20),
                environment: format!("env-{}", i % 19),
                labels: Vec::new(),
                state: AgentState::Active,
                bindings: vec![Binding::Oidc {
                    issuer: "https://issuer.example".into(),
                    subject: format!("a-{i}"),
                }],
                allow: AllowList {
                    audiences: Audience::parse_list(&[format!(
                        "https://api.t-{}.example",
                        i % 20
                    )])?,
                    scopes: ScopeSet::parse(&["repo:read", "repo:delete", "s-1:write"])?,
                    max_ttl_seconds: None,
                    approval_scopes: ScopeSet::default(),
                },
                review_every_days: 0,
                created_at: 0,
                updated_at: 0,
            })
        })
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "index into a sorted sample"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds as microseconds")]
    let us = sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0;
    us
}

/// The engine without its memo of this second's verdicts: every decision evaluated afresh,
/// the cost of a query not seen this second.
#[derive(Debug)]
struct Fresh<'a>(&'a PolicyEngine);

impl taskpass_core::Policies for Fresh<'_> {
    fn evaluate(&self, q: &taskpass_core::PolicyQuery<'_>) -> taskpass_core::Verdict {
        self.0.evaluate_fresh(q)
    }
}

/// Nanoseconds per StartTask and per IssueToken decision, one sample each, none of them
/// answered from the memo.
fn decision_costs(engine: &PolicyEngine) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let engine = &Fresh(engine);
    let agents = agents()?;
    let limits = Limits::default();
    // Wednesday 10:00 UTC: inside the business hours the policies test.
    let now = 1_796_205_600;
    let ctx = DecisionContext {
        now,
        limits: &limits,
        policies: engine,
    };
    let (mut start, mut issue) = (Vec::with_capacity(DECISIONS), Vec::with_capacity(DECISIONS));
    for n in 0..DECISIONS {
        let a = &agents[(n * 7919) % AGENTS];
        let req = StartRequest {
            purpose: Purpose::parse("bench")?,
            audiences: a.allow.audiences.clone(),
            scopes: ScopeSet::parse(&["repo:read", "s-1:write"])?,
            max_duration_seconds: 0,
            on_behalf_of_requested: false,
            user: None,
        };
        let t = Instant::now();
        let d = decide_start_task(a, &req, &ctx);
        start.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let Decision::Allow { grant, .. } = d else {
            anyhow::bail!("the bench's StartTask was not allowed: {d:?}");
        };
        let task = Task {
            id: TaskId::from_ulid(ulid::Ulid::new()),
            agent: a.id.clone(),
            state: TaskState::Open,
            purpose: req.purpose,
            audiences: grant.audiences,
            scopes: grant.scopes,
            created_at: now,
            expires_at: grant.expires_at,
            ended_at: None,
            on_behalf_of: None,
            approval_id: None,
            approved_by: None,
            user: None,
            approval: None,
            implicit: false,
        };
        let ask = IssueRequest {
            audience: task.audiences[0].clone(),
            scopes: ScopeSet::default(),
            ttl_seconds: 300,
        };
        let t = Instant::now();
        let d = decide_issue(a, &task, &ask, &ctx);
        issue.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        anyhow::ensure!(
            matches!(d, Decision::Allow { .. }),
            "the bench's IssueToken was not allowed: {d:?}"
        );
    }
    start.sort_unstable();
    issue.sort_unstable();
    Ok((start, issue))
}

/// A broker (with the policy file when given), its bench agent's channels and IssueToken.
async fn broker(
    issuer: &DevIssuer,
    policy: Option<&std::path::Path>,
    connections: usize,
) -> anyhow::Result<(
    TestBroker,
    Vec<tonic::transport::Channel>,
    String,
    pb::Attestation,
)> {
    let mut extra = String::from("[tokens]\nmax_task_seconds = 86400\n");
    if let Some(p) = policy {
        let _ = writeln!(extra, "[policy]\nfiles = [\"{}\"]", p.display());
    }
    let broker = TestBroker::start_with(issuer, &extra).await?;
    let mut admin = broker.admin().await?;
    register_bench_agent(&mut admin, issuer, "policy bench", &["read", "write"]).await?;
    let att = pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(issuer.token(
            "bench-agent",
            ATTESTATION_AUDIENCE,
            3600,
        ))),
    };
    let (channels, task_id) =
        crate::bench::channels_and_task(&broker, connections, None, &att).await?;
    Ok((broker, channels, task_id, att))
}

fn median(runs: &[Run]) -> f64 {
    let mut r: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    r.sort_by(f64::total_cmp);
    r.get(r.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the policy benchmark.
pub async fn run(args: &BenchArgs, output: Output) -> anyhow::Result<()> {
    let eprint = |s: &str| {
        if output == Output::Text {
            eprintln!("{s}");
        }
    };
    let text = policy_text();
    let engine = PolicyEngine::compile(&[PolicySource::new("bench.cedar", text.clone())])?;
    anyhow::ensure!(
        engine.ids().len() == POLICIES,
        "{} policies",
        engine.ids().len()
    );
    eprint(&format!(
        "decisions: {DECISIONS} StartTask and {DECISIONS} IssueToken, {POLICIES} policies, {AGENTS} agents…"
    ));
    let (start, issue) = decision_costs(&engine)?;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bench.cedar");
    std::fs::write(&file, &text)?;
    let issuer = DevIssuer::start().await?;
    let (off, off_ch, off_task, off_att) = broker(&issuer, None, args.connections).await?;
    let (on, on_ch, on_task, on_att) = broker(&issuer, Some(&file), args.connections).await?;
    let rounds = args.rounds.max(2);
    let n = args.requests;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprint(&format!(
            "round {round} of {rounds}: {n} IssueToken without policies, then with {POLICIES}…"
        ));
        let call = issue_call(off_att.clone(), off_task.clone());
        let pid = off.pid().context("no pid")?;
        without.push(
            drive(
                &off_ch,
                args.concurrency,
                pid,
                (n, Load::Closed),
                move |ch| call(ch),
            )
            .await,
        );
        let call = issue_call(on_att.clone(), on_task.clone());
        let pid = on.pid().context("no pid")?;
        with.push(
            drive(
                &on_ch,
                args.concurrency,
                pid,
                (n, Load::Closed),
                move |ch| call(ch),
            )
            .await,
        );
    }
    let (rate_off, rate_on) = (median(&without), median(&with));
    let ratio = if rate_off > 0.0 {
        rate_on / rate_off
    } else {
        0.0
    };
    let errors: u64 = without.iter().chain(&with).map(|r| r.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} IssueToken calls failed");
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "policies": POLICIES, "agents": AGENTS, "decisions": DECISIONS,
                "start_task_decision_p50_us": percentile(&start, 0.50),
                "start_task_decision_p99_us": percentile(&start, 0.99),
                "start_task_decision_max_us": percentile(&start, 1.0),
                "issue_token_decision_p50_us": percentile(&issue, 0.50),
                "issue_token_decision_p99_us": percentile(&issue, 0.99),
                "issue_token_decision_max_us": percentile(&issue, 1.0),
                "issue_token_without_policies_per_s": rate_off,
                "issue_token_with_policies_per_s": rate_on,
                "ratio_with_to_without": ratio,
                "rounds_without": without.iter().map(run_json).collect::<Vec<_>>(),
                "rounds_with": with.iter().map(run_json).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            println!(
                "decision, {POLICIES} policies, {AGENTS} agents: StartTask p50 {:.1} µs p99 {:.1} µs max {:.1} µs; IssueToken p50 {:.1} µs p99 {:.1} µs max {:.1} µs",
                percentile(&start, 0.50),
                percentile(&start, 0.99),
                percentile(&start, 1.0),
                percentile(&issue, 0.50),
                percentile(&issue, 0.99),
                percentile(&issue, 1.0),
            );
            for (i, (a, b)) in without.iter().zip(&with).enumerate() {
                println!(
                    "{}",
                    run_line(&format!("round {} without", i + 1), "IssueToken", a)
                );
                println!(
                    "{}",
                    run_line(&format!("round {} with", i + 1), "IssueToken", b)
                );
            }
            println!(
                "IssueToken with {POLICIES} policies / without (medians): {rate_on:.0}/s / {rate_off:.0}/s = {ratio:.3}"
            );
        }
    }
    Ok(())
}
