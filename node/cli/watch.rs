//! `murmur watch SERVICE`: one line per change of a service's instances, for shell
//! pipelines. It waits on the agent's blocking query (`/v1/health/service/NAME?index=`)
//! rather than polling, so a change shows as soon as the agent's replica has it. The
//! first lines are the instances there at the start, as `added`.
//!
//! ```text
//! added web-1 10.0.0.5:8080 passing node-a
//! health web-1 10.0.0.5:8080 critical node-a
//! removed web-1 10.0.0.5:8080 critical node-a
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{parse, ApiArgs, CliError};
use crate::api::consul_types::ServiceEntryJson;

/// How long one blocking query waits for a change before it is asked again.
const WAIT: Duration = Duration::from_secs(60);

/// One instance as the watch compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Seen {
    node: String,
    address: String,
    port: u16,
    health: String,
}

/// One line of output.
#[derive(Debug, Serialize)]
struct Change<'a> {
    event: &'static str,
    service: &'a str,
    instance: &'a str,
    #[serde(flatten)]
    seen: &'a Seen,
}

/// The worst of an entry's checks, as Consul aggregates them.
fn health(entry: &ServiceEntryJson) -> String {
    let worst = entry.checks.iter().map(|c| c.status.as_str()).fold("passing", |worst, s| match (worst, s) {
        ("critical", _) | (_, "critical") => "critical",
        ("warning", _) | (_, "warning") => "warning",
        _ => "passing",
    });
    worst.to_owned()
}

fn seen(entries: Vec<ServiceEntryJson>) -> BTreeMap<String, Seen> {
    entries
        .into_iter()
        .map(|e| {
            let health = health(&e);
            let s =
                Seen { node: e.node.node.clone(), address: e.service.address.clone(), port: e.service.port, health };
            (e.service.id, s)
        })
        .collect()
}

/// The changes from `old` to `new`, in instance order: added, removed, then `health`
/// or `moved` (address, port or node changed).
fn diff<'a>(
    old: &'a BTreeMap<String, Seen>,
    new: &'a BTreeMap<String, Seen>,
) -> Vec<(&'static str, &'a str, &'a Seen)> {
    let mut out = Vec::new();
    for (id, s) in new {
        match old.get(id) {
            None => out.push(("added", id.as_str(), s)),
            Some(o) if o.address != s.address || o.port != s.port || o.node != s.node => {
                out.push(("moved", id.as_str(), s))
            }
            Some(o) if o.health != s.health => out.push(("health", id.as_str(), s)),
            Some(_) => {}
        }
    }
    for (id, s) in old {
        if !new.contains_key(id) {
            out.push(("removed", id.as_str(), s));
        }
    }
    out
}

/// Runs `watch SERVICE`: prints until interrupted, or until `count` lines.
pub async fn watch(service: &str, count: Option<u64>, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client();
    let mut index = 0u64;
    let mut known = BTreeMap::new();
    let mut printed = 0u64;
    loop {
        let path = format!("/v1/health/service/{service}?index={index}&wait={}s", WAIT.as_secs());
        let reply = client.get_blocking(&path, WAIT).await?;
        // An index that went back is a restarted agent: start over from its first answer.
        index = match reply.index {
            Some(i) if i >= index => i,
            _ => 0,
        };
        let now = seen(parse(&reply.body)?);
        for (event, instance, s) in diff(&known, &now) {
            if count.is_some_and(|c| printed >= c) {
                break;
            }
            if api.json {
                let line = Change { event, service, instance, seen: s };
                println!("{}", serde_json::to_string(&line).map_err(|e| CliError::Failed(e.to_string()))?);
            } else {
                println!("{event} {instance} {}:{} {} {}", s.address, s.port, s.health, s.node);
            }
            printed += 1;
        }
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        known = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: &str, health: &str) -> Seen {
        Seen { node: "n".into(), address: address.into(), port: 80, health: health.into() }
    }

    #[test]
    fn each_kind_of_change_is_one_line() {
        let old = BTreeMap::from([("a".to_owned(), at("1", "passing")), ("b".to_owned(), at("2", "passing"))]);
        let new = BTreeMap::from([
            ("a".to_owned(), at("1", "critical")),
            ("c".to_owned(), at("3", "passing")),
            ("d".to_owned(), at("4", "passing")),
        ]);
        let events: Vec<(&str, &str)> = diff(&old, &new).into_iter().map(|(e, i, _)| (e, i)).collect();
        assert_eq!(events, vec![("health", "a"), ("added", "c"), ("added", "d"), ("removed", "b")]);
        assert!(diff(&new, &new).is_empty(), "no change, no line");
        let moved = BTreeMap::from([("a".to_owned(), at("9", "critical"))]);
        assert_eq!(diff(&BTreeMap::from([("a".to_owned(), at("1", "critical"))]), &moved)[0].0, "moved");
    }
}
