//! `murmur keyring`: gossip key rotation at run time through the local agent, as
//! `serf keys` and `consul keyring` do it. A change is made on the local agent and
//! spreads by gossip; the command then waits until every live member reports it (or
//! `--wait` passes, which is exit status 1, naming the members that lag).

use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{parse, ApiArgs, CliError, Table};
use crate::api::consul_types::{KeyringJson, KeyringRequestJson};
use crate::config::spec::parse_duration;
use crate::gossip::{key_id_hex, Keyring};

/// How often the cluster is asked whether a change has reached everyone.
const POLL: Duration = Duration::from_millis(250);

/// `murmur keyring ...`.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// List every key, how many live members hold it and seal with it, and each member.
    List {
        /// Which agent to ask, and how.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Install KEY on every member: they open what it seals from then on.
    Install(ChangeArgs),
    /// Make KEY, already on every live member, the key everyone seals with.
    Use(ChangeArgs),
    /// Remove KEY from every member; it must not be anyone's primary key.
    Remove(ChangeArgs),
}

/// The options of a change.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeArgs {
    /// The key, base64 (`murmur keygen`).
    pub key: String,
    /// Make the change though some live member is not ready for it (it may then be cut
    /// off until it catches up).
    #[arg(long)]
    pub force: bool,
    /// How long to wait for every live member to report the change; 0 returns at once.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub wait: String,
    /// Which agent to ask, and how.
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Clone, Copy)]
enum Verb {
    Install,
    Use,
    Remove,
}

impl Verb {
    fn method(self) -> &'static str {
        match self {
            Verb::Install => "POST",
            Verb::Use => "PUT",
            Verb::Remove => "DELETE",
        }
    }

    /// Whether member `m` (its key ids, primary first) shows the change of `id`.
    fn reached(self, ids: &[String], id: &str) -> bool {
        match self {
            Verb::Install => ids.iter().any(|k| k == id),
            Verb::Use => ids.first().is_some_and(|k| k == id),
            Verb::Remove => !ids.iter().any(|k| k == id),
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Install => "installed",
            Verb::Use => "made primary",
            Verb::Remove => "removed",
        }
    }
}

/// Runs `keyring ...`.
pub async fn keyring(command: &KeyringCommand) -> Result<(), CliError> {
    match command {
        KeyringCommand::List { api } => list(api).await,
        KeyringCommand::Install(args) => change(Verb::Install, args).await,
        KeyringCommand::Use(args) => change(Verb::Use, args).await,
        KeyringCommand::Remove(args) => change(Verb::Remove, args).await,
    }
}

async fn fetch(api: &ApiArgs) -> Result<(String, KeyringJson), CliError> {
    let raw = api.client().get(crate::api::KEYRING_PATH).await?;
    let mut list: Vec<KeyringJson> = parse(&raw)?;
    let ring = list.pop().ok_or_else(|| CliError::Failed("the agent listed no keyring".into()))?;
    Ok((raw, ring))
}

async fn list(api: &ApiArgs) -> Result<(), CliError> {
    let (raw, ring) = fetch(api).await?;
    if api.json {
        println!("{raw}");
        return Ok(());
    }
    let mut keys = Table::new(&["KEY", "ID", "HELD BY", "PRIMARY ON"]);
    for (key, held) in &ring.keys {
        let id = Keyring::decode_key("key", key).map(|k| key_id_hex(&k)).unwrap_or_default();
        let primary = ring.primary_keys.get(key).copied().unwrap_or(0);
        keys.row(vec![key.clone(), id, format!("{held}/{}", ring.num_nodes), format!("{primary}/{}", ring.num_nodes)]);
    }
    print!("{}", keys.render());
    println!();
    let mut members = Table::new(&["MEMBER", "STATUS", "EPOCH", "PRIMARY", "KEYS"]);
    for m in &ring.members {
        let epoch = m.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into());
        members.row(vec![
            m.name.clone(),
            m.status.clone(),
            epoch,
            m.primary.clone().unwrap_or_else(|| "-".into()),
            m.key_ids.join(","),
        ]);
    }
    print!("{}", members.render());
    Ok(())
}

async fn change(verb: Verb, args: &ChangeArgs) -> Result<(), CliError> {
    let wait = parse_duration(&args.wait).map_err(|e| CliError::Failed(format!("--wait: {e}")))?;
    let key = Keyring::decode_key("KEY", &args.key).map_err(|e| CliError::Failed(e.to_string()))?;
    let id = key_id_hex(&key);
    let body = serde_json::to_string(&KeyringRequestJson { key: args.key.trim().to_owned() })
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let path = format!("{}{}", crate::api::KEYRING_PATH, if args.force { "?force=true" } else { "" });
    args.api.client().send(verb.method(), &path, body).await?;
    let deadline = Instant::now() + wait;
    loop {
        let (raw, ring) = fetch(&args.api).await?;
        let live: Vec<_> = ring.members.iter().filter(|m| m.status == "alive").collect();
        let lagging: Vec<&str> =
            live.iter().filter(|m| !verb.reached(&m.key_ids, &id)).map(|m| m.name.as_str()).collect();
        let reached = live.len() - lagging.len();
        if lagging.is_empty() || Instant::now() >= deadline {
            if args.api.json {
                println!("{raw}");
            } else {
                println!("key {id} {}: {reached}/{} live members", verb.done(), live.len());
            }
            if !lagging.is_empty() && !wait.is_zero() {
                return Err(CliError::Failed(format!(
                    "after {:?}, {} live members do not show it yet: {}; see `murmur keyring list`",
                    wait,
                    lagging.len(),
                    lagging.join(", ")
                )));
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
