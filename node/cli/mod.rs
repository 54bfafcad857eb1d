//! The command line: clap types and the commands that talk to a local agent's API
//! (`members`, `services`, `resolve`, `watch`, `keyring`), print tables for people or,
//! with `--json`, the API's JSON (filtered, for `members --status`). Exit codes are
//! [`EXIT_CODES`].

mod client;
pub mod keyring;
mod run;
mod table;
mod watch;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use thiserror::Error;

pub use client::{ApiClient, ClientError, Reply};
pub use keyring::KeyringCommand;
pub use run::run;
pub use table::Table;
pub use watch::watch;

/// What the exit status of every command means (also in `--help`).
pub const EXIT_CODES: &str = "\
Exit status:
  0  done
  1  the agent is unreachable, refused, or the command failed
  2  bad usage or bad configuration
  3  nothing found (no healthy instance, no member with that status)";

/// Why a command did not succeed, each with its exit status.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    /// The agent's API failed or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The question had no answer: exit status 3.
    #[error("{0}")]
    NothingFound(String),
    /// The command failed for another reason.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The exit status: 3 for nothing found, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NothingFound(_) => 3,
            _ => 1,
        }
    }
}

use crate::api::types::{InstanceJson, MemberJson, ServiceSummaryJson};
use crate::config::AgentArgs;

/// murmur: service discovery with no central server.
#[derive(Debug, Parser)]
#[command(name = "murmur", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of the commands that read a local agent.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The agent's admin API.
    #[arg(long, default_value = "127.0.0.1:8500", env = "MURMUR_API")]
    pub api: SocketAddr,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The agent's API token, for changes and the keyring (`--api-token` of the agent).
    #[arg(long, env = "MURMUR_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    /// A client of the agent these options name.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(self.api).with_token(self.token.clone())
    }
}

/// A member status, for `members --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    /// Answers probes.
    Alive,
    /// Declared dead.
    Dead,
    /// Left gracefully.
    Left,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent.
    Agent(Box<AgentArgs>),
    /// List the cluster's members.
    Members {
        /// Only members with this status (exit status 3 when there is none).
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Which agent to ask, and how.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List services, or the instances of one.
    Services {
        /// A service to list instances of.
        name: Option<String>,
        /// With NAME: include critical and draining instances.
        #[arg(long)]
        all: bool,
        /// Which agent to ask, and how.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a line each time an instance of SERVICE comes, goes or changes health.
    Watch {
        /// The service.
        service: String,
        /// Stop after this many lines (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Which agent to ask, and how.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Rotate the gossip key at run time: list, install, use, remove.
    Keyring {
        /// What to do.
        #[command(subcommand)]
        command: KeyringCommand,
    },
    /// Resolve a service to its healthy instances (as the DNS stub would; exit status 3
    /// when there is none).
    Resolve {
        /// Service name, or TAG.SERVICE.
        name: String,
        /// Which agent to ask, and how.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Proxy statistics per upstream and endpoint.
    Stats(ApiArgs),
    /// Print a new random gossip key (base64).
    Keygen {
        /// Print `{"key": ...}`.
        #[arg(long)]
        json: bool,
    },
    /// Manage the cluster CA for mutual TLS between sidecars.
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue certificates from the cluster CA.
    Cert {
        /// What to do.
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Start a local mesh, show discovery and failure detection, and exit.
    Demo,
    /// Run the membership code for N agents on a simulated network in virtual time.
    Simulate(crate::simulate::SimulateArgs),
    /// Run the sample app of the demo and the deployment examples: it answers each
    /// connection with `NAME@IP says: ` and what it read.
    SampleApp {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080", env = "SAMPLE_APP_LISTEN")]
        listen: SocketAddr,
        /// The name it answers with.
        #[arg(long, default_value = "app", env = "SAMPLE_APP_NAME")]
        name: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `murmur man | man -l -`.
    Man,
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "murmur", out);
}

/// Writes the manual page to `out`.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

/// `murmur ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA (ca.pem, ca-key.pem) in DIR.
    Init {
        /// Where to write it.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Print the files written as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `murmur cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a node certificate (cert.pem, key.pem, ca.pem) into OUT.
    Issue {
        /// The CA directory (from `murmur ca init`).
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// Node name.
        #[arg(long)]
        name: String,
        /// A service the node may call as and serve; repeatable.
        #[arg(long = "service")]
        services: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Print the files written as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Prints the files a command wrote: a line for people, or `{"wrote": [...]}`.
fn print_written(json: bool, files: &[std::path::PathBuf], text: &str) {
    if json {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        println!("{}", serde_json::json!({ "wrote": files }));
    } else {
        println!("{text}");
    }
}

/// Runs `ca init`.
pub fn ca_init(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let ca = crate::tls::Ca::generate()?;
    ca.save(dir)?;
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let text = format!("wrote {} and {} (keep the key secret)", cert.display(), key.display());
    print_written(json, &[cert, key], &text);
    Ok(())
}

/// Runs `cert issue`.
pub fn cert_issue(
    ca_dir: &std::path::Path,
    name: &str,
    services: &[String],
    out: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    use crate::tls::ca::{cert_pem, key_pem, write_file};
    use anyhow::Context;
    let node = murmur_protocol::NodeName::new(name).context("--name")?;
    let services = services
        .iter()
        .map(|s| murmur_protocol::ServiceName::new(s).context("--service"))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = crate::tls::Ca::load(ca_dir)?;
    let id = ca.issue(&node, &services)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_file(&out.join("cert.pem"), &cert_pem(&id.cert), 0o644)?;
    write_file(&out.join("key.pem"), &key_pem(&id.key), 0o600)?;
    write_file(&out.join("ca.pem"), ca.cert_pem(), 0o644)?;
    let text = format!(
        "wrote {}/{{cert.pem,key.pem,ca.pem}} for node {node} (services: {})",
        out.display(),
        services.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    print_written(json, &[out.join("cert.pem"), out.join("key.pem"), out.join("ca.pem")], &text);
    Ok(())
}

/// Runs `stats`.
pub async fn stats(api: &ApiArgs) -> Result<(), CliError> {
    let raw = api.client().get("/v1/upstreams").await?;
    print_json_or(&raw, api.json, |list: Vec<crate::api::types::UpstreamJson>| {
        let mut t = Table::new(&[
            "UPSTREAM",
            "ENDPOINT",
            "STATE",
            "CONNS",
            "ACTIVE",
            "SENT",
            "RECEIVED",
            "CONNECT P50/P99/MAX MS",
            "DURATION P50 MS",
            "FAILURES",
        ]);
        for u in list {
            t.row(vec![
                format!("{} ({})", u.alias, u.listen),
                "*".into(),
                format!("retries {} budget-out {} breaker {}", u.retries, u.budget_exhausted, u.breaker_rejections),
                u.accepted.to_string(),
                u.active.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("{} failed", u.failed),
            ]);
            for e in u.endpoints {
                let q = &e.connect_latency;
                t.row(vec![
                    String::new(),
                    format!("{} ({})", e.instance, e.via),
                    e.state,
                    e.connections.to_string(),
                    e.active.to_string(),
                    e.bytes_sent.to_string(),
                    e.bytes_received.to_string(),
                    format!("{:.2}/{:.2}/{:.2}", q.p50_ms, q.p99_ms, q.max_ms),
                    format!("{:.1}", e.duration.p50_ms),
                    e.failures.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                ]);
            }
        }
        t
    })
}

fn print_json_or<T: serde::de::DeserializeOwned>(
    raw: &str,
    json: bool,
    table: impl FnOnce(T) -> Table,
) -> Result<(), CliError> {
    if json {
        println!("{raw}");
        return Ok(());
    }
    let value: T = parse(raw)?;
    print!("{}", table(value).render());
    Ok(())
}

/// Parses a reply of the API.
fn parse<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, ClientError> {
    serde_json::from_str(raw).map_err(|e| ClientError::BadReply(e.to_string()))
}

/// Prints `list` (as JSON, or as the table `table` makes of it); nothing in it is exit
/// status 3, with `none` said on stderr.
fn print_list<T: serde::Serialize>(
    list: Vec<T>,
    json: bool,
    none: impl FnOnce() -> String,
    table: impl FnOnce(Vec<T>) -> Table,
) -> Result<(), CliError> {
    let empty = list.is_empty();
    if json {
        println!("{}", serde_json::to_string(&list).map_err(|e| CliError::Failed(e.to_string()))?);
    } else if !empty {
        print!("{}", table(list).render());
    }
    if empty {
        return Err(CliError::NothingFound(none()));
    }
    Ok(())
}

fn instances_table(list: Vec<InstanceJson>) -> Table {
    let mut t = Table::new(&["INSTANCE", "SERVICE", "NODE", "ADDRESS", "PORT", "HEALTH", "TAGS"]);
    for i in list {
        t.row(vec![i.instance, i.service, i.node, i.address, i.port.to_string(), i.health, i.tags.join(",")]);
    }
    t
}

/// Runs `members [--status S]`.
pub async fn members(api: &ApiArgs, status: Option<StatusFilter>) -> Result<(), CliError> {
    let mut list: Vec<MemberJson> = parse(&api.client().get("/v1/members").await?)?;
    let wanted = status.map(|s| match s {
        StatusFilter::Alive => "alive",
        StatusFilter::Dead => "dead",
        StatusFilter::Left => "left",
    });
    if let Some(w) = wanted {
        list.retain(|m| m.status == w);
    }
    let none = || format!("no member is {}", wanted.unwrap_or("known"));
    print_list(list, api.json, none, |list| {
        let mut t = Table::new(&["NAME", "ADDRESS", "GOSSIP", "STATUS", "ZONE", "INSTANCES"]);
        for m in list {
            t.row(vec![
                m.name,
                m.address,
                m.gossip_address,
                m.status,
                m.zone.unwrap_or_default(),
                m.instances.to_string(),
            ]);
        }
        t
    })
}

/// Runs `services [NAME]`.
pub async fn services(name: Option<&str>, all: bool, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client();
    match name {
        None => {
            let raw = client.get("/v1/services").await?;
            print_json_or(&raw, api.json, |list: Vec<ServiceSummaryJson>| {
                let mut t = Table::new(&["SERVICE", "INSTANCES", "HEALTHY"]);
                for s in list {
                    t.row(vec![s.name, s.instances.to_string(), s.healthy.to_string()]);
                }
                t
            })
        }
        Some(name) => {
            let path = format!("/v1/services/{}{}", name, if all { "?all=true" } else { "" });
            let list: Vec<InstanceJson> = parse(&client.get(&path).await?)?;
            let none = || format!("no {}instance of {name}", if all { "" } else { "healthy " });
            print_list(list, api.json, none, instances_table)
        }
    }
}

/// Runs `resolve NAME`: `svc` or `tag.svc`, optionally followed by the namespace.
pub async fn resolve(name: &str, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client();
    let me: crate::api::consul_types::AgentSelfJson =
        serde_json::from_str(&client.get("/v1/agent/self").await?).map_err(|e| ClientError::BadReply(e.to_string()))?;
    let me = me.murmur;
    let name = name.trim_end_matches('.');
    let name = name.strip_suffix(&format!(".{}", me.namespace)).unwrap_or(name);
    let path = match name.split_once('.') {
        Some((tag, svc)) => format!("/v1/services/{svc}?tag={tag}"),
        None => format!("/v1/services/{name}"),
    };
    let list: Vec<InstanceJson> = parse(&client.get(&path).await?)?;
    print_list(
        list,
        api.json,
        || format!("no healthy instance of {name}"),
        |list| {
            let mut t = Table::new(&["ADDRESS", "PORT", "INSTANCE", "NODE"]);
            for i in list {
                t.row(vec![i.address, i.port.to_string(), i.instance, i.node]);
            }
            t
        },
    )
}
