//! `taskpass`: the operator CLI for a Taskpass broker, plus `taskpass demo` (the whole story in
//! one command) and `taskpass bench` (the load tool).

mod bench;
mod bench_oauth;
mod bench_policy;
mod bench_validators;
mod commands;
mod conn;
mod demo;
mod output;
mod policy;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

// The same allocator as the broker: `taskpass bench` and `taskpass demo` run a client beside it.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Operate a Taskpass broker: agents, tasks, tokens and the audit log.
#[derive(Debug, Parser)]
#[command(name = "taskpass", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the broker is and how to authenticate; accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// A local broker's data dir: its address, CA and admin credential are read from there.
    /// Default ./taskpass-data when no --server is given.
    #[arg(long, global = true, value_name = "DIR", env = "TASKPASS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The broker's gRPC URL, e.g. https://127.0.0.1:7443.
    #[arg(long, global = true, value_name = "URL", env = "TASKPASS_SERVER")]
    pub server: Option<String>,
    /// The CA certificate that signed the broker's server certificate.
    #[arg(long, global = true, value_name = "FILE", env = "TASKPASS_CA")]
    pub ca: Option<PathBuf>,
    /// The operator certificate.
    #[arg(long, global = true, value_name = "FILE", env = "TASKPASS_CERT")]
    pub cert: Option<PathBuf>,
    /// The operator private key.
    #[arg(long, global = true, value_name = "FILE", env = "TASKPASS_KEY")]
    pub key: Option<PathBuf>,
    /// Output format: text for people, json (one document on stdout) for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, inspect, suspend, resume and offboard agents.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// List and revoke tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// List and revoke tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Read and verify the hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Issue operator credentials from a local broker's CA (offline: needs the data dir).
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Register validators: downstream APIs that introspect tokens and follow revocations.
    #[command(subcommand)]
    Validator(ValidatorCmd),
    /// Tasks waiting for a human's approval: list them, approve or deny one.
    #[command(subcommand)]
    Approval(ApprovalCmd),
    /// Cedar policies: print the schema, validate files, apply a set, show it and its history.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Run the whole story in one process: broker, OIDC issuer, agent, task, token, revocation.
    Demo,
    /// Load-test IssueToken against a broker it starts, with an echo and raw-signing baseline.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Register a new agent.
    Register {
        /// Lowercase letters, digits and '-'.
        name: String,
        /// The person or team accountable for it.
        #[arg(long)]
        owner: String,
        /// What it is for.
        #[arg(long)]
        purpose: String,
        /// An OIDC identity that proves it: ISSUER=SUBJECT (repeatable).
        #[arg(
            long = "oidc",
            value_name = "ISSUER=SUBJECT",
            required_unless_present = "x509"
        )]
        oidc: Vec<String>,
        /// The SPIFFE id of a client certificate that proves it (repeatable).
        #[arg(long = "x509", value_name = "SPIFFE_ID")]
        x509: Vec<String>,
        /// An audience it may get tokens for (repeatable).
        #[arg(long = "audience", value_name = "AUD")]
        audiences: Vec<String>,
        /// A scope it may be granted (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The largest token TTL, seconds (default: the broker's max).
        #[arg(long, value_name = "SECONDS")]
        max_ttl: Option<u32>,
        /// Tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Environment.
        #[arg(long, default_value = "")]
        environment: String,
        /// Review cadence in days.
        #[arg(long, default_value_t = 90)]
        review_days: u32,
        /// A scope that needs a human's approval before a task gets it (repeatable): such a
        /// task waits as pending_approval until `taskpass approval approve`.
        #[arg(long = "approval-scope", value_name = "SCOPE")]
        approval_scopes: Vec<String>,
        /// A label, KEY=VALUE (repeatable): policies match on it (principal.labels).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Change an agent: each flag given replaces that field (a repeatable flag replaces the
    /// whole list); the rest stays. Audited with every change, before and after.
    Update {
        name: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        /// Replaces the OIDC identities: ISSUER=SUBJECT (repeatable).
        #[arg(long = "oidc", value_name = "ISSUER=SUBJECT")]
        oidc: Vec<String>,
        /// Replaces the certificate identities (repeatable).
        #[arg(long = "x509", value_name = "SPIFFE_ID")]
        x509: Vec<String>,
        /// Removes every OIDC identity (the agent must keep another).
        #[arg(long, conflicts_with = "oidc")]
        no_oidc: bool,
        /// Removes every certificate identity (the agent must keep another).
        #[arg(long, conflicts_with = "x509")]
        no_x509: bool,
        /// Replaces the audiences (repeatable).
        #[arg(long = "audience", value_name = "AUD")]
        audiences: Vec<String>,
        /// Replaces the scopes (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The largest token TTL, seconds (0: the broker's max).
        #[arg(long, value_name = "SECONDS")]
        max_ttl: Option<u32>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        /// Review cadence in days.
        #[arg(long)]
        review_days: Option<u32>,
        /// Replaces the scopes that need a human's approval (repeatable).
        #[arg(long = "approval-scope", value_name = "SCOPE")]
        approval_scopes: Vec<String>,
        /// Removes every approval scope.
        #[arg(long, conflicts_with = "approval_scopes")]
        no_approval_scopes: bool,
        /// Replaces the labels, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Removes every label.
        #[arg(long, conflicts_with = "labels")]
        no_labels: bool,
    },
    /// List agents.
    List,
    /// Show one agent.
    Show { name: String },
    /// Suspend an agent: its open tasks are revoked and it gets nothing until resumed.
    Suspend {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended agent.
    Resume {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Offboard an agent for good: every task, token and certificate is revoked.
    Offboard {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The agent's client certificates from the broker's CA.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Issue a client certificate for the agent's SPIFFE id. The key is made here (or is the
    /// one behind --csr) and never sent: only a CSR goes to the broker. Writes NAME.pem (and
    /// NAME-key.pem, mode 0600, when the key is made here).
    Issue {
        name: String,
        /// Where to write the files.
        #[arg(long)]
        out: std::path::PathBuf,
        /// A PEM CSR made elsewhere (ECDSA P-256/P-384 or Ed25519 key), instead of a new key.
        #[arg(long)]
        csr: Option<std::path::PathBuf>,
        /// Lifetime in hours (default: the broker's attestation.certificate_hours).
        #[arg(long)]
        hours: Option<u32>,
    },
    /// List the agent's certificates.
    List { name: String },
    /// Revoke a certificate by serial: refused from the next call on.
    Revoke {
        serial: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List the newest tasks.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Revoke a task and every token it holds.
    Revoke {
        task_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List the newest token records (never the tokens themselves).
    List {
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Revoke one token.
    Revoke {
        token_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Issue a client certificate for an operator with a role (admin, approver, auditor, or a
    /// `[roles.NAME]` of the config). The key is made here; only a CSR goes to the broker.
    Issue {
        /// Lowercase letters, digits and '-'.
        name: String,
        /// admin, approver, auditor, or a custom role of the broker's config.
        #[arg(long)]
        role: String,
        /// Validity in days (at most 90).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=90))]
        days: u32,
        /// Where to write NAME.pem and NAME-key.pem (0600).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List operators' certificates.
    List,
    /// Revoke an operator certificate by serial, or every certificate of an operator by name:
    /// refused from the next call on.
    Revoke {
        serial_or_name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ValidatorCmd {
    /// Issue a validator credential: a client certificate for
    /// spiffe://<trust-domain>/validator/NAME, serving these audiences. The key is made here;
    /// only a CSR goes to the broker. Adding a name again issues another certificate.
    Add {
        /// Lowercase letters, digits and '-'.
        name: String,
        /// An audience the validator serves (repeatable, at least one): Introspect answers it
        /// for tokens addressed to these only.
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Validity in days (at most 90).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=90))]
        days: u32,
        /// Where to write NAME.pem, NAME-key.pem (0600) and ca.pem.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List validators' certificates.
    List,
    /// Revoke every certificate of a validator: refused from the next call on.
    Revoke {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCmd {
    /// The tasks waiting for approval, oldest first, with what they ask for and why.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Approve: the task opens and its tokens carry approved_by. Needs approvals:decide, and
    /// you may not own the agent.
    Approve {
        /// The approval id (appr_…).
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny: the task ends denied.
    Deny {
        /// The approval id (appr_…).
        id: String,
        /// Why, for the agent's owner (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Print the Taskpass Cedar schema that policies are validated against (no broker needed).
    Schema,
    /// Validate policy files against the schema in strict mode, as `apply` would (no broker
    /// needed): prints the ids of their policies, or every problem and exits non-zero.
    Validate {
        /// Cedar files (at least one).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate the files and put them in force on the broker as the next version, atomically;
    /// a set with any problem changes nothing.
    Apply {
        /// Cedar files (at least one); together they are the whole set.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the set in force, with its files.
    Show,
    /// List the recorded versions, newest first.
    History {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print the newest entries.
    Tail {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Recompute the hash chain; fails on any edit.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The load tool drives the broker from one thread: it shares the machine with the broker
    // it measures, and a second worker mostly adds wake-ups between the two (about a quarter
    // more client CPU per call, measured).
    let mut builder = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo => demo::run(cli.global.output).await,
        Command::Policy(PolicyCmd::Schema) => policy::schema(&cli.global),
        Command::Policy(PolicyCmd::Validate { files }) => policy::validate(&cli.global, &files),
        Command::Bench(args) => bench::run(args, cli.global.output).await,
        cmd => commands::run(&cli.global, cmd).await,
    }
}
