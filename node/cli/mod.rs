//! The command line: clap types and the commands that talk to a local agent's API
//! (`members`, `services`, `resolve`), print tables for people or, with `--json`,
//! exactly what the API returned.

mod client;
mod table;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

pub use client::{ApiClient, ClientError};
pub use table::Table;

use crate::api::types::{InstanceJson, MemberJson, ServiceSummaryJson};
use crate::config::AgentArgs;

/// murmur: service discovery with no central server.
#[derive(Debug, Parser)]
#[command(name = "murmur", version, about)]
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
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent.
    Agent(Box<AgentArgs>),
    /// List the cluster's members.
    Members(ApiArgs),
    /// List services, or the instances of one.
    Services {
        /// A service to list instances of.
        name: Option<String>,
        /// With NAME: include critical and draining instances.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resolve a service to its healthy instances (as the DNS stub would).
    Resolve {
        /// Service name, or TAG.SERVICE.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Proxy statistics per upstream and endpoint.
    Stats(ApiArgs),
    /// Print a new random gossip key (base64).
    Keygen,
    /// Manage the cluster CA for mutual TLS between sidecars.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue certificates from the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Start a local mesh, show discovery and failure detection, and exit.
    Demo,
    /// Run the membership code for N agents on a simulated network in virtual time.
    Simulate(crate::simulate::SimulateArgs),
}

/// `murmur ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA (ca.pem, ca-key.pem) in DIR.
    Init {
        /// Where to write it.
        #[arg(long)]
        dir: std::path::PathBuf,
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
    },
}

/// Runs `ca init`.
pub fn ca_init(dir: &std::path::Path) -> Result<(), String> {
    let ca = crate::tls::Ca::generate()?;
    ca.save(dir)?;
    println!("wrote {} and {} (keep the key secret)", dir.join("ca.pem").display(), dir.join("ca-key.pem").display());
    Ok(())
}

/// Runs `cert issue`.
pub fn cert_issue(
    ca_dir: &std::path::Path,
    name: &str,
    services: &[String],
    out: &std::path::Path,
) -> Result<(), String> {
    use crate::tls::ca::{cert_pem, key_pem, write_file};
    let node = murmur_protocol::NodeName::new(name).map_err(|e| format!("--name: {e}"))?;
    let services = services
        .iter()
        .map(|s| murmur_protocol::ServiceName::new(s).map_err(|e| format!("--service: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = crate::tls::Ca::load(ca_dir)?;
    let id = ca.issue(&node, &services)?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    write_file(&out.join("cert.pem"), &cert_pem(&id.cert), 0o644)?;
    write_file(&out.join("key.pem"), &key_pem(&id.key), 0o600)?;
    write_file(&out.join("ca.pem"), ca.cert_pem(), 0o644)?;
    println!(
        "wrote {}/{{cert.pem,key.pem,ca.pem}} for node {node} (services: {})",
        out.display(),
        services.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Runs `stats`.
pub async fn stats(api: &ApiArgs) -> Result<(), ClientError> {
    let raw = ApiClient::new(api.api).get("/v1/upstreams").await?;
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
) -> Result<(), ClientError> {
    if json {
        println!("{raw}");
        return Ok(());
    }
    let value: T = serde_json::from_str(raw).map_err(|e| ClientError::BadReply(e.to_string()))?;
    print!("{}", table(value).render());
    Ok(())
}

fn instances_table(list: Vec<InstanceJson>) -> Table {
    let mut t = Table::new(&["INSTANCE", "SERVICE", "NODE", "ADDRESS", "PORT", "HEALTH", "TAGS"]);
    for i in list {
        t.row(vec![i.instance, i.service, i.node, i.address, i.port.to_string(), i.health, i.tags.join(",")]);
    }
    t
}

/// Runs `members`.
pub async fn members(api: &ApiArgs) -> Result<(), ClientError> {
    let raw = ApiClient::new(api.api).get("/v1/members").await?;
    print_json_or(&raw, api.json, |list: Vec<MemberJson>| {
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
pub async fn services(name: Option<&str>, all: bool, api: &ApiArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(api.api);
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
            let raw = client.get(&path).await?;
            print_json_or(&raw, api.json, instances_table)
        }
    }
}

/// Runs `resolve NAME`: `svc` or `tag.svc`, optionally followed by the namespace.
pub async fn resolve(name: &str, api: &ApiArgs) -> Result<(), ClientError> {
    let client = ApiClient::new(api.api);
    let me: crate::api::consul_types::AgentSelfJson =
        serde_json::from_str(&client.get("/v1/agent/self").await?).map_err(|e| ClientError::BadReply(e.to_string()))?;
    let me = me.murmur;
    let name = name.trim_end_matches('.');
    let name = name.strip_suffix(&format!(".{}", me.namespace)).unwrap_or(name);
    let path = match name.split_once('.') {
        Some((tag, svc)) => format!("/v1/services/{svc}?tag={tag}"),
        None => format!("/v1/services/{name}"),
    };
    let raw = client.get(&path).await?;
    print_json_or(&raw, api.json, |list: Vec<InstanceJson>| {
        let mut t = Table::new(&["ADDRESS", "PORT", "INSTANCE", "NODE"]);
        for i in list {
            t.row(vec![i.address, i.port.to_string(), i.instance, i.node]);
        }
        t
    })
}
