//! Builds a [`Snapshot`] from a [`ClusterView`]. Pure: the same view always gives the
//! same snapshot. A value that does not decode skips that key only and is reported back
//! so the caller can count and log it; it never poisons the rest of the snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use murmur_protocol::{decode_value, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName, NodeRecord};

use super::snapshot::{Instance, Member, MemberStatus, Snapshot};
use crate::gossip::{ClusterView, NodeView};

/// A gossip value that did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The node that gossiped it.
    pub node: String,
    /// The key.
    pub key: String,
    /// Why it was skipped.
    pub error: String,
}

/// Builds snapshot number `version` from `view`.
pub fn build_snapshot(view: &ClusterView, version: u64) -> (Snapshot, Vec<BadValue>) {
    // A restarted task is a new generation under the same name: the newest live one wins,
    // so it never shows up twice and its old address leaves answers as soon as the new
    // generation is heard of. A live generation beats a dead one whatever the clocks say
    // (a restarted host whose clock is behind must not hide behind its dead old self).
    let mut newest: BTreeMap<&str, &NodeView> = BTreeMap::new();
    let rank = |n: &NodeView| (n.status == MemberStatus::Alive, n.generation);
    for node in &view.nodes {
        let keep = newest.get(node.name.as_str()).is_none_or(|n| rank(n) < rank(node));
        if keep {
            newest.insert(&node.name, node);
        }
    }
    let mut bad = Vec::new();
    let mut members = Vec::with_capacity(newest.len());
    let mut services: BTreeMap<_, Vec<Arc<Instance>>> = BTreeMap::new();
    for node in newest.values() {
        let mut record: Option<NodeRecord> = None;
        let mut instances: Vec<InstanceRecord> = Vec::new();
        let mut health: BTreeMap<InstanceId, HealthRecord> = BTreeMap::new();
        for (key, value) in &node.values {
            let skip = |e: murmur_protocol::DecodeError| BadValue {
                node: node.name.clone(),
                key: key.clone(),
                error: e.to_string(),
            };
            match Key::parse(key) {
                Key::Node => match decode_value(value) {
                    Ok(r) => record = Some(r),
                    Err(e) => bad.push(skip(e)),
                },
                Key::Instance(id) => match decode_value::<InstanceRecord>(value) {
                    Ok(r) if r.instance == id => instances.push(r),
                    Ok(_) => bad.push(BadValue {
                        node: node.name.clone(),
                        key: key.clone(),
                        error: "instance id differs from its key".into(),
                    }),
                    Err(e) => bad.push(skip(e)),
                },
                Key::Health(id) => match decode_value(value) {
                    Ok(r) => {
                        health.insert(id, r);
                    }
                    Err(e) => bad.push(skip(e)),
                },
                Key::Left | Key::Unknown => {}
            }
        }
        members.push(Member {
            name: node.name.clone(),
            gossip_addr: node.gossip_addr,
            advertise: record.as_ref().map(|r| r.advertise),
            status: node.status,
            generation: node.generation,
            zone: record.as_ref().and_then(|r| r.zone.clone()),
            agent_version: record.as_ref().map(|r| r.agent_version.clone()),
            instances: instances.len(),
            is_self: node.is_self,
        });
        // Instances of dead or departed nodes are never answered; nor are those of a
        // node whose record did not decode (we would not know where it lives).
        let (MemberStatus::Alive, Some(record)) = (node.status, record.as_ref()) else {
            continue;
        };
        let Ok(node_name) = NodeName::new(&node.name) else {
            continue;
        };
        for inst in instances {
            // An instance whose health key has not arrived yet is treated as critical:
            // better to answer without it for one round than to send traffic to an app
            // nobody has checked.
            let h = health.remove(&inst.instance);
            let (status, since, output) = match h {
                Some(h) => (h.status, h.since_unix_ms, h.output),
                None => (Health::Critical, 0, "no health reported yet".to_owned()),
            };
            services.entry(inst.service.clone()).or_default().push(Arc::new(Instance {
                service: inst.service,
                id: inst.instance,
                node: node_name.clone(),
                zone: record.zone.clone(),
                address: inst.address,
                port: inst.port,
                sidecar: inst.sidecar,
                proxy: record.proxy,
                tags: inst.tags,
                attributes: inst.attributes,
                weight: inst.weight,
                health: status,
                health_since_unix_ms: since,
                health_output: output,
            }));
        }
    }
    for list in services.values_mut() {
        list.sort_by(|a, b| a.id.cmp(&b.id));
    }
    (Snapshot { version, members, services }, bad)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use murmur_protocol::{encode_value, keys, ServiceName, Tag};

    use super::*;
    use crate::gossip::MemberStatus;
    use crate::registry::snapshot::{HealthFilter, Query};

    fn node(
        name: &str,
        generation: u64,
        status: MemberStatus,
        instances: &[(&str, &str, Health, &[&str])],
    ) -> NodeView {
        let record = NodeRecord {
            name: NodeName::new(name).expect("valid"),
            zone: Some(format!("z-{name}")),
            agent_version: "t".into(),
            advertise: "127.0.0.1".parse().expect("valid"),
            proxy: None,
            started_unix_ms: generation,
        };
        let mut values = vec![(keys::NODE.to_owned(), encode_value(&record))];
        for (svc, id, health, tags) in instances {
            let id = InstanceId::new(id).expect("valid");
            let rec = InstanceRecord {
                service: ServiceName::new(svc).expect("valid"),
                instance: id.clone(),
                address: "127.0.0.1".parse().expect("valid"),
                port: 80,
                sidecar: false,
                tags: tags.iter().map(|t| Tag::new(t).expect("valid")).collect(),
                attributes: BTreeMap::new(),
                weight: 1,
            };
            values.push((Key::Instance(id.clone()).render(), encode_value(&rec)));
            values.push((Key::Health(id).render(), encode_value(&HealthRecord::new(*health, 1, ""))));
        }
        NodeView {
            name: name.into(),
            generation,
            gossip_addr: "127.0.0.1:7946".parse().expect("valid"),
            status,
            is_self: false,
            values,
        }
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName::new(name).expect("valid")
    }

    #[test]
    fn health_and_tags_filter_lookups() {
        let view = ClusterView {
            nodes: vec![
                node(
                    "a",
                    1,
                    MemberStatus::Alive,
                    &[("web", "a-1", Health::Passing, &["canary"]), ("db", "a-2", Health::Critical, &[])],
                ),
                node(
                    "b",
                    1,
                    MemberStatus::Alive,
                    &[("web", "b-1", Health::Draining, &[]), ("web", "b-2", Health::Warning, &[])],
                ),
            ],
        };
        let (snap, bad) = build_snapshot(&view, 1);
        assert!(bad.is_empty());
        let ids = |q: &Query, s: &str| snap.lookup(&svc(s), q).iter().map(|i| i.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&Query::default(), "web"), ["a-1", "b-2"]);
        assert_eq!(ids(&Query { health: HealthFilter::All, ..Default::default() }, "web").len(), 3);
        assert_eq!(ids(&Query { tag: Some(Tag::new("canary").expect("valid")), ..Default::default() }, "web"), ["a-1"]);
        assert!(ids(&Query::default(), "db").is_empty());
        assert_eq!(ids(&Query { health: HealthFilter::HealthyOrElseAll, ..Default::default() }, "db"), ["a-2"]);
        let zone_first = Query { prefer_zone: Some("z-b".into()), ..Default::default() };
        assert_eq!(ids(&zone_first, "web"), ["b-2", "a-1"]);
        assert!(snap.knows_service(&svc("db")));
        assert!(!snap.knows_service(&svc("nope")));
    }

    #[test]
    fn dead_and_left_nodes_leave_answers_but_stay_members() {
        let view = ClusterView {
            nodes: vec![
                node("a", 1, MemberStatus::Dead, &[("web", "a-1", Health::Passing, &[])]),
                node("b", 1, MemberStatus::Left, &[("web", "b-1", Health::Passing, &[])]),
            ],
        };
        let (snap, _) = build_snapshot(&view, 1);
        assert!(snap.lookup(&svc("web"), &Query { health: HealthFilter::All, ..Default::default() }).is_empty());
        assert_eq!(snap.members.len(), 2);
    }

    #[test]
    fn a_restarted_node_replaces_its_old_generation() {
        let mut old = node("a", 1, MemberStatus::Alive, &[("web", "a-old", Health::Passing, &[])]);
        old.gossip_addr = "127.0.0.1:1".parse().expect("valid");
        let new = node("a", 2, MemberStatus::Alive, &[("web", "a-new", Health::Passing, &[])]);
        let (snap, _) = build_snapshot(&ClusterView { nodes: vec![old, new] }, 1);
        assert_eq!(snap.members.len(), 1);
        assert_eq!(snap.members[0].generation, 2);
        let ids: Vec<_> = snap.lookup(&svc("web"), &Query::default()).iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, ["a-new"]);
    }

    #[test]
    fn a_bad_value_skips_only_its_key() {
        let mut n = node(
            "a",
            1,
            MemberStatus::Alive,
            &[("web", "a-1", Health::Passing, &[]), ("web", "a-2", Health::Passing, &[])],
        );
        n.values.push(("i/a-3".into(), "garbage!".into()));
        n.values.push(("h/a-2".into(), "AAAA".into()));
        let (snap, bad) = build_snapshot(&ClusterView { nodes: vec![n] }, 1);
        assert_eq!(bad.len(), 2);
        let all = snap.lookup(&svc("web"), &Query { health: HealthFilter::All, ..Default::default() });
        assert_eq!(all.len(), 2);
        // The garbage health value of a-2 is skipped; the good one gossiped before stands.
        assert!(all.iter().all(|i| i.health == Health::Passing));
    }

    #[test]
    fn an_instance_without_health_is_critical() {
        let mut n = node("a", 1, MemberStatus::Alive, &[("web", "a-1", Health::Passing, &[])]);
        n.values.retain(|(k, _)| !k.starts_with("h/"));
        let (snap, _) = build_snapshot(&ClusterView { nodes: vec![n] }, 1);
        assert!(snap.lookup(&svc("web"), &Query::default()).is_empty());
    }
}
