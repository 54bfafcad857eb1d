//! Builds a [`Snapshot`] from a [`ClusterView`]. Pure: the same view always gives the
//! same snapshot. A value that does not decode skips that key only and is reported back
//! so the caller can count and log it; it never poisons the rest of the snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use murmur_protocol::{
    decode_value, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName, NodeRecord, ServiceName,
};

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

/// Builds snapshot number `version` from `view`, from scratch.
pub fn build_snapshot(view: &ClusterView, version: u64) -> (Snapshot, Vec<BadValue>) {
    SnapshotBuilder::default().build(view, version)
}

/// One node's part of a snapshot, decoded once and kept while its view is unchanged.
#[derive(Debug)]
struct NodePart {
    view: Arc<NodeView>,
    member: Member,
    /// Instances answered for it (none when it is not alive or its record is bad).
    instances: Vec<Arc<Instance>>,
}

/// Builds snapshots incrementally: a node whose view is the same `Arc` as last time is
/// not decoded again, and a service none of whose nodes changed keeps its list (the
/// same `Arc`), so a change costs what it touches plus one pass over the members.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    nodes: BTreeMap<String, NodePart>,
    services: BTreeMap<ServiceName, Arc<Vec<Arc<Instance>>>>,
    members: Arc<Vec<Member>>,
    members_changed: bool,
}

impl SnapshotBuilder {
    /// Builds snapshot number `version` from `view`; returns the values that did not
    /// decode among the nodes decoded this time.
    pub fn build(&mut self, view: &ClusterView, version: u64) -> (Snapshot, Vec<BadValue>) {
        // A restarted task is a new generation under the same name: the newest live one
        // wins, so it never shows up twice and its old address leaves answers as soon as
        // the new generation is heard of. A live generation beats a dead one whatever the
        // clocks say (a restarted host whose clock is behind must not hide behind its
        // dead old self).
        let mut newest: Vec<&Arc<NodeView>> = view.nodes.iter().collect();
        let sorted_unique = newest.windows(2).all(|w| w[0].name < w[1].name);
        if !sorted_unique {
            let rank = |n: &NodeView| (n.status == MemberStatus::Alive, n.generation);
            let mut by_name: BTreeMap<&str, &Arc<NodeView>> = BTreeMap::new();
            for node in &view.nodes {
                let keep = by_name.get(node.name.as_str()).is_none_or(|n| rank(n) < rank(node));
                if keep {
                    by_name.insert(&node.name, node);
                }
            }
            newest = by_name.into_values().collect();
        }
        let mut bad = Vec::new();
        let mut touched: BTreeSet<ServiceName> = BTreeSet::new();
        let mut changed: BTreeSet<String> = BTreeSet::new();
        // Both sides are in name order: one pass finds the nodes gone and the ones new
        // or changed (a node whose view is the same `Arc` as last time is skipped).
        let mut gone = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut held = self.nodes.iter().peekable();
            for node in &newest {
                while let Some((name, _)) = held.next_if(|(name, _)| name.as_str() < node.name.as_str()) {
                    gone.push(name.clone());
                }
                match held.next_if(|(name, _)| name.as_str() == node.name.as_str()) {
                    Some((_, part)) if Arc::ptr_eq(&part.view, node) => {}
                    _ => fresh.push(*node),
                }
            }
            gone.extend(held.map(|(name, _)| name.clone()));
        }
        for name in gone {
            if let Some(part) = self.nodes.remove(&name) {
                touched.extend(part.instances.iter().map(|i| i.service.clone()));
                changed.insert(name);
                self.members_changed = true;
            }
        }
        for node in fresh {
            let name = node.name.as_str();
            let part = decode_node(node, &mut bad);
            touched.extend(part.instances.iter().map(|i| i.service.clone()));
            let member = part.member.clone();
            match self.nodes.insert(name.to_owned(), part) {
                Some(old) => {
                    touched.extend(old.instances.iter().map(|i| i.service.clone()));
                    self.members_changed |= old.member != member;
                }
                None => self.members_changed = true,
            }
            changed.insert(name.to_owned());
        }
        // Only the services a changed node served or serves are touched: their lists
        // lose the changed nodes' old instances and gain their new ones.
        let mut added: BTreeMap<ServiceName, Vec<Arc<Instance>>> = BTreeMap::new();
        for name in &changed {
            if let Some(part) = self.nodes.get(name) {
                for inst in &part.instances {
                    added.entry(inst.service.clone()).or_default().push(inst.clone());
                }
            }
        }
        for service in touched {
            let mut list: Vec<Arc<Instance>> = match self.services.get(&service) {
                Some(old) => old.iter().filter(|i| !changed.contains(i.node.as_str())).cloned().collect(),
                None => Vec::new(),
            };
            let new = added.remove(&service).unwrap_or_default();
            if new.len() > 8 {
                list.extend(new);
                list.sort_by(|a, b| a.id.cmp(&b.id));
            } else {
                for inst in new {
                    let at = list.partition_point(|i| i.id < inst.id);
                    list.insert(at, inst);
                }
            }
            if list.is_empty() {
                self.services.remove(&service);
            } else {
                self.services.insert(service, Arc::new(list));
            }
        }
        // Members are rebuilt only when one of them changed (a health flip changes none).
        if self.members_changed {
            self.members = Arc::new(self.nodes.values().map(|p| p.member.clone()).collect());
            self.members_changed = false;
        }
        (Snapshot { version, members: self.members.clone(), services: self.services.clone() }, bad)
    }
}

fn decode_node(node: &Arc<NodeView>, bad: &mut Vec<BadValue>) -> NodePart {
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
    let member = Member {
        name: node.name.clone(),
        gossip_addr: node.gossip_addr,
        advertise: record.as_ref().map(|r| r.advertise),
        status: node.status,
        generation: node.generation,
        zone: record.as_ref().and_then(|r| r.zone.clone()),
        agent_version: record.as_ref().map(|r| r.agent_version.clone()),
        instances: instances.len(),
        is_self: node.is_self,
    };
    let mut answered = Vec::new();
    // Instances of dead or departed nodes are never answered; nor are those of a node
    // whose record did not decode (we would not know where it lives).
    let (MemberStatus::Alive, Some(record), Ok(node_name)) = (node.status, record.as_ref(), NodeName::new(&node.name))
    else {
        return NodePart { view: node.clone(), member, instances: answered };
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
        answered.push(Arc::new(Instance {
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
    NodePart { view: node.clone(), member, instances: answered }
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
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
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
    fn incremental_builds_share_what_did_not_change_and_match_a_full_build() {
        let a = Arc::new(node("a", 1, MemberStatus::Alive, &[("web", "a-1", Health::Passing, &[])]));
        let b = Arc::new(node("b", 1, MemberStatus::Alive, &[("db", "b-1", Health::Passing, &[])]));
        let c = Arc::new(node("c", 1, MemberStatus::Alive, &[("web", "c-1", Health::Passing, &[])]));
        let mut builder = SnapshotBuilder::default();
        let (first, _) = builder.build(&ClusterView { nodes: vec![a.clone(), b.clone(), c.clone()] }, 1);
        assert_eq!(first.services[&svc("web")].len(), 2);
        // c's health flips: web is rebuilt, db is the same list as before.
        let c2 = Arc::new(node("c", 1, MemberStatus::Alive, &[("web", "c-1", Health::Critical, &[])]));
        let view = ClusterView { nodes: vec![a.clone(), b.clone(), c2] };
        let (second, _) = builder.build(&view, 2);
        assert!(Arc::ptr_eq(&first.services[&svc("db")], &second.services[&svc("db")]));
        assert!(!Arc::ptr_eq(&first.services[&svc("web")], &second.services[&svc("web")]));
        let (full, _) = build_snapshot(&view, 2);
        assert_eq!(second, full);
        // b goes: db disappears; a node that moves to another service moves its instance.
        let a2 = Arc::new(node("a", 1, MemberStatus::Alive, &[("db", "a-1", Health::Passing, &[])]));
        let view = ClusterView { nodes: vec![a2, c.clone()] };
        let (third, _) = builder.build(&view, 3);
        assert_eq!(third, build_snapshot(&view, 3).0);
        assert_eq!(third.services[&svc("db")].len(), 1);
        assert_eq!(third.services[&svc("web")].len(), 1);
        assert_eq!(third.members.len(), 2);
        // A node going dead takes its instances out.
        let c3 = Arc::new(node("c", 1, MemberStatus::Dead, &[("web", "c-1", Health::Passing, &[])]));
        let view = ClusterView { nodes: vec![c3] };
        let (fourth, _) = builder.build(&view, 4);
        assert_eq!(fourth, build_snapshot(&view, 4).0);
        assert!(fourth.services.is_empty());
    }

    #[test]
    fn dead_and_left_nodes_leave_answers_but_stay_members() {
        let view = ClusterView {
            nodes: vec![
                node("a", 1, MemberStatus::Dead, &[("web", "a-1", Health::Passing, &[])]),
                node("b", 1, MemberStatus::Left, &[("web", "b-1", Health::Passing, &[])]),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
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
        let (snap, _) = build_snapshot(&ClusterView { nodes: vec![Arc::new(old), Arc::new(new)] }, 1);
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
        let (snap, bad) = build_snapshot(&ClusterView { nodes: vec![Arc::new(n)] }, 1);
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
        let (snap, _) = build_snapshot(&ClusterView { nodes: vec![Arc::new(n)] }, 1);
        assert!(snap.lookup(&svc("web"), &Query::default()).is_empty());
    }
}
