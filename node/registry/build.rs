//! Builds a [`Snapshot`] from a [`ClusterView`]. Pure: the same view always gives the
//! same snapshot. A value that does not decode skips that key only and is reported back
//! so the caller can count and log it; it never poisons the rest of the snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use murmur_protocol::{
    decode_value, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName, NodeRecord, ServiceName, Tag,
};

use super::snapshot::{Host, Instance, Member, MemberStatus, Snapshot};
use crate::gossip::{ClusterView, NodeView};
use crate::shared::{Diff, SharedMap};

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
    /// Its status (its member is in the members map, once).
    status: MemberStatus,
    /// Its instances (none when it left or its record is bad): answered while it is
    /// alive, listed as down while it is dead.
    instances: Vec<Arc<Instance>>,
    /// Whether this generation was ever seen alive (a node is heard of before its first
    /// heartbeats are: until then it is not reported at all, so a join is never logged
    /// as a death).
    ever_alive: bool,
}

/// A member whose status changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Member name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// `joined`, `alive` (again), `dead`, `left` or `forgotten`.
    pub what: &'static str,
}

/// A touched list of one service's instances: those that leave it and those that join it.
type Edit = (Vec<Arc<Instance>>, Vec<Arc<Instance>>);

/// What changes for one touched service: its list of live instances and its list of
/// dead nodes' instances.
#[derive(Default)]
struct ServiceEdit {
    live: Edit,
    down: Edit,
}

impl ServiceEdit {
    fn list(&mut self, status: MemberStatus) -> &mut Edit {
        if status == MemberStatus::Alive {
            &mut self.live
        } else {
            &mut self.down
        }
    }

    /// Whether the edit changes what the catalog lists of the service (which instances,
    /// on which nodes, with which tags), rather than only health or liveness: a health
    /// flip or a node's death does not wake `/v1/catalog/services` watchers.
    fn changes_catalog(&self) -> bool {
        fn listed<'a>(
            a: &'a [Arc<Instance>],
            b: &'a [Arc<Instance>],
        ) -> Vec<(&'a InstanceId, &'a NodeName, &'a [Tag])> {
            let mut keys: Vec<_> = a.iter().chain(b).map(|i| (&i.id, &i.host.node, i.tags.as_slice())).collect();
            keys.sort();
            keys
        }
        listed(&self.live.0, &self.down.0) != listed(&self.live.1, &self.down.1)
    }
}

/// How many members are in each status, and how many instances are answered, in the
/// last snapshot built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Alive members (the local agent among them).
    pub alive: u64,
    /// Dead members not yet forgotten.
    pub dead: u64,
    /// Members that left, not yet forgotten.
    pub left: u64,
    /// Instances of live nodes.
    pub instances: u64,
}

impl Counts {
    fn add(&mut self, part: &NodePart, sign: i64) {
        let slot = match part.status {
            MemberStatus::Alive => &mut self.alive,
            MemberStatus::Dead => &mut self.dead,
            MemberStatus::Left => &mut self.left,
        };
        *slot = slot.saturating_add_signed(sign);
        if part.status == MemberStatus::Alive {
            self.instances = self.instances.saturating_add_signed(sign * part.instances.len() as i64);
        }
    }
}

/// Builds snapshots incrementally: a node whose view is the same `Arc` as last time is
/// not decoded again, a service none of whose nodes changed keeps its list (the same
/// `Arc`), and the maps of services and members copy only the chunks a change touched.
/// A change costs what it touches plus one pointer comparison per node. The builder also
/// keeps the status counts and the status changes an operator reads in the log, so that
/// nothing downstream walks every member per snapshot.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    /// The view the last snapshot was built from.
    last: SharedMap<String, Arc<NodeView>>,
    nodes: BTreeMap<String, NodePart>,
    services: SharedMap<ServiceName, Arc<[Arc<Instance>]>>,
    down: SharedMap<ServiceName, Arc<[Arc<Instance>]>>,
    service_index: SharedMap<ServiceName, u64>,
    catalog_index: u64,
    members: SharedMap<String, Member>,
    changes: Vec<StatusChange>,
    counts: Counts,
}

impl SnapshotBuilder {
    /// Builds snapshot number `version` from `view`; returns the values that did not
    /// decode among the nodes decoded this time.
    pub fn build(&mut self, view: &ClusterView, version: u64) -> (Snapshot, Vec<BadValue>) {
        let mut bad = Vec::new();
        let last = std::mem::replace(&mut self.last, view.nodes.clone());
        let mut edits: BTreeMap<ServiceName, ServiceEdit> = BTreeMap::new();
        for (name, part) in changed_nodes(&last, &view.nodes, &mut bad) {
            self.apply_node(name, part, &mut edits);
        }
        self.apply_edits(edits, version);
        let snapshot = Snapshot {
            version,
            members: self.members.clone(),
            services: self.services.clone(),
            down: self.down.clone(),
            service_index: self.service_index.clone(),
            catalog_index: self.catalog_index,
        };
        (snapshot, bad)
    }

    /// Puts a node's new state (`None`: gone) in place of its old one, and notes in
    /// `edits` the instances its services lose and gain.
    fn apply_node(
        &mut self,
        name: &str,
        mut part: Option<(Member, NodePart)>,
        edits: &mut BTreeMap<ServiceName, ServiceEdit>,
    ) {
        let old = self.nodes.remove(name);
        let old_member = old.as_ref().and_then(|_| self.members.get(name).cloned());
        let before = old.as_ref().zip(old_member.as_ref()).map(|(part, m)| (m, part.ever_alive));
        // An instance the change left as it was (another key of its node changed) keeps
        // its `Arc` and its place: its service is not touched, and its watchers are not
        // woken.
        if let (Some(old), Some((_, new))) = (&old, &mut part) {
            if old.status == new.status {
                for inst in &mut new.instances {
                    if let Some(same) = old.instances.iter().find(|o| ***o == **inst) {
                        *inst = same.clone();
                    }
                }
            }
        }
        let kept = |inst: &Arc<Instance>, other: Option<&NodePart>| {
            other.is_some_and(|p| p.instances.iter().any(|i| Arc::ptr_eq(i, inst)))
        };
        if let Some(old) = &old {
            self.counts.add(old, -1);
            for inst in old.instances.iter().filter(|i| !kept(i, part.as_ref().map(|(_, p)| p))) {
                edits.entry(inst.service.clone()).or_default().list(old.status).0.push(inst.clone());
            }
        }
        let Some((member, mut part)) = part else {
            note_status(before, None, &mut self.changes);
            self.members.remove(name);
            return;
        };
        part.ever_alive = note_status(before, Some(&member), &mut self.changes);
        self.counts.add(&part, 1);
        for inst in part.instances.iter().filter(|i| !kept(i, old.as_ref())) {
            edits.entry(inst.service.clone()).or_default().list(part.status).1.push(inst.clone());
        }
        // A health flip changes no member: the members' chunk is copied only when one
        // did change.
        if old_member.as_ref() != Some(&member) {
            self.members.insert(name.to_owned(), member);
        }
        self.nodes.insert(name.to_owned(), part);
    }

    /// Applies the services' edits: each touched service loses the changed nodes' old
    /// instances and gains their new ones; every other service keeps its lists, the
    /// same `Arc`s.
    fn apply_edits(&mut self, edits: BTreeMap<ServiceName, ServiceEdit>, version: u64) {
        for (service, edit) in edits {
            if edit.changes_catalog() {
                self.catalog_index = version;
            }
            apply_edit(&mut self.services, &service, edit.live);
            apply_edit(&mut self.down, &service, edit.down);
            if self.services.contains_key(&service) || self.down.contains_key(&service) {
                self.service_index.insert(service, version);
            } else {
                self.service_index.remove(&service);
            }
        }
    }

    /// The status changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<StatusChange> {
        std::mem::take(&mut self.changes)
    }

    /// The counts of the last snapshot built.
    pub fn counts(&self) -> Counts {
        self.counts
    }
}

/// Takes `removed` out of `service`'s list in `map` and puts `added` in. The list is in
/// (id, node) order, one place per instance even should two nodes claim one id: each old
/// instance is found by binary search, each new one put in its place.
fn apply_edit(map: &mut SharedMap<ServiceName, Arc<[Arc<Instance>]>>, service: &ServiceName, (removed, added): Edit) {
    if removed.is_empty() && added.is_empty() {
        return;
    }
    let mut list: Vec<Arc<Instance>> = map.get(service).map(|l| l.to_vec()).unwrap_or_default();
    for gone in &removed {
        let at = list.partition_point(|i| (&i.id, &i.host.node) < (&gone.id, &gone.host.node));
        if list.get(at).is_some_and(|i| Arc::ptr_eq(i, gone)) {
            list.remove(at);
        }
    }
    for inst in added {
        let at = list.partition_point(|i| (&i.id, &i.host.node) < (&inst.id, &inst.host.node));
        list.insert(at, inst);
    }
    if list.is_empty() {
        map.remove(service);
    } else {
        map.insert(service.clone(), Arc::from(list));
    }
}

/// Notes the status change from `old` (a node's previous member, and whether it was ever
/// alive) to `new` (its member now), none for the local agent; returns whether `new`'s
/// generation was ever alive. A new generation under the same name replaces the old
/// one, which is forgotten.
fn note_status(old: Option<(&Member, bool)>, new: Option<&Member>, changes: &mut Vec<StatusChange>) -> bool {
    let mut before = None;
    if let Some((m, ever_alive)) = old {
        if new.is_some_and(|n| n.generation == m.generation) {
            before = Some((m.status, ever_alive));
        } else if ever_alive && !m.is_self {
            changes.push(StatusChange { name: m.name.clone(), generation: m.generation, what: "forgotten" });
        }
    }
    let Some(new) = new else { return false };
    let was_alive = before.is_some_and(|(_, alive)| alive);
    let what = match new.status {
        _ if before.map(|(s, _)| s) == Some(new.status) => None,
        MemberStatus::Alive if was_alive => Some("alive"),
        MemberStatus::Alive => Some("joined"),
        MemberStatus::Dead if was_alive => Some("dead"),
        MemberStatus::Dead => None,
        MemberStatus::Left => Some("left"),
    };
    if let Some(what) = what.filter(|_| !new.is_self) {
        changes.push(StatusChange { name: new.name.clone(), generation: new.generation, what });
    }
    was_alive || new.status == MemberStatus::Alive
}

/// The nodes gone (`None`), new or changed between two views, decoded: the chunks of
/// the map both views share are skipped, and a node whose view is the same `Arc` is
/// unchanged.
fn changed_nodes<'a>(
    last: &'a SharedMap<String, Arc<NodeView>>,
    now: &'a SharedMap<String, Arc<NodeView>>,
    bad: &mut Vec<BadValue>,
) -> Vec<(&'a str, Option<(Member, NodePart)>)> {
    let mut changed = Vec::new();
    for diff in last.diff(now, Arc::ptr_eq) {
        match diff {
            Diff::Gone(name, _) => changed.push((name.as_str(), None)),
            Diff::New(name, node) | Diff::Changed(name, _, node) => {
                changed.push((name.as_str(), Some(decode_node(node, bad))))
            }
        }
    }
    changed
}

fn decode_node(node: &Arc<NodeView>, bad: &mut Vec<BadValue>) -> (Member, NodePart) {
    let mut record: Option<NodeRecord> = None;
    let mut instances: Vec<InstanceRecord> = Vec::new();
    let mut health: BTreeMap<InstanceId, HealthRecord> = BTreeMap::new();
    for (key, value) in &node.values {
        let skip = |e: murmur_protocol::DecodeError| BadValue {
            node: node.name.clone(),
            key: key.to_string(),
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
                    key: key.to_string(),
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
            Key::Left | Key::Keyring | Key::Unknown => {}
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
    // A departed node's instances are gone; a dead one's are listed as down (never
    // answered); a node whose record did not decode has none (we would not know where
    // it lives).
    let (MemberStatus::Alive | MemberStatus::Dead, Some(record), Ok(node_name)) =
        (node.status, record.as_ref(), NodeName::new(&node.name))
    else {
        return (member, NodePart { status: node.status, instances: answered, ever_alive: false });
    };
    let host =
        Arc::new(Host { node: node_name, zone: record.zone.clone(), proxy: record.proxy, generation: node.generation });
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
            host: host.clone(),
            address: inst.address,
            port: inst.port,
            sidecar: inst.sidecar,
            tags: inst.tags,
            attributes: inst.attributes,
            weight: inst.weight,
            health: status,
            health_since_unix_ms: since,
            health_output: output,
        }));
    }
    (member, NodePart { status: node.status, instances: answered, ever_alive: false })
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
        let mut values: Vec<(Arc<str>, Arc<str>)> = vec![(keys::NODE.into(), encode_value(&record).into())];
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
            values.push((Key::Instance(id.clone()).render().into(), encode_value(&rec).into()));
            values.push((Key::Health(id).render().into(), encode_value(&HealthRecord::new(*health, 1, "")).into()));
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

    /// A view of nodes held elsewhere too, so that the same `Arc` can be in two views.
    fn shared(nodes: &[&Arc<NodeView>]) -> ClusterView {
        ClusterView { nodes: nodes.iter().map(|n| (n.name.clone(), Arc::clone(n))).collect() }
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName::new(name).expect("valid")
    }

    /// An incremental build holds what a full one does; only the indexes differ (a full
    /// build stamps every service with its own version).
    fn assert_same(incremental: &Snapshot, full: &Snapshot) {
        assert_eq!(incremental.members, full.members);
        assert_eq!(incremental.services, full.services);
        assert_eq!(incremental.down, full.down);
        let indexed: Vec<_> = incremental.service_index.keys().collect();
        assert_eq!(indexed, full.service_index.keys().collect::<Vec<_>>());
    }

    #[test]
    fn indexes_move_only_for_the_services_that_changed() {
        let a = |health, status| Arc::new(node("a", 1, status, &[("web", "a-1", health, &["v1"])]));
        let b = Arc::new(node("b", 1, MemberStatus::Alive, &[("db", "b-1", Health::Passing, &[])]));
        let mut builder = SnapshotBuilder::default();
        let (s1, _) = builder.build(&shared(&[&a(Health::Passing, MemberStatus::Alive), &b]), 1);
        assert_eq!((s1.index_of(&svc("web")), s1.index_of(&svc("db")), s1.catalog_index), (1, 1, 1));
        // A health flip moves its service only, not the catalog.
        let (s2, _) = builder.build(&shared(&[&a(Health::Critical, MemberStatus::Alive), &b]), 2);
        assert_eq!((s2.index_of(&svc("web")), s2.index_of(&svc("db")), s2.catalog_index), (2, 1, 1));
        // A new service moves the catalog; a service nobody has answers the catalog's.
        let c = Arc::new(node("c", 1, MemberStatus::Alive, &[("api", "c-1", Health::Passing, &[])]));
        let (s3, _) = builder.build(&shared(&[&a(Health::Critical, MemberStatus::Alive), &b, &c]), 3);
        assert_eq!((s3.index_of(&svc("api")), s3.index_of(&svc("web")), s3.catalog_index), (3, 2, 3));
        assert_eq!(s3.index_of(&svc("nosuch")), 3);
        // A node's death moves its instances to `down`: its services move, the catalog
        // does not.
        let (s4, _) = builder.build(&shared(&[&a(Health::Critical, MemberStatus::Dead), &b, &c]), 4);
        assert!(!s4.services.contains_key(&svc("web")));
        assert_eq!(s4.down.get(&svc("web")).expect("down").len(), 1);
        assert_eq!((s4.index_of(&svc("web")), s4.index_of(&svc("db")), s4.catalog_index), (4, 1, 3));
        // Forgotten: the service is gone, and its index (now the catalog's) does not go back.
        let (s5, _) = builder.build(&shared(&[&b, &c]), 5);
        assert!(!s5.down.contains_key(&svc("web")) && !s5.service_index.contains_key(&svc("web")));
        assert_eq!((s5.index_of(&svc("web")), s5.catalog_index), (5, 5));
        // A tag change is a catalog change.
        let b2 = Arc::new(node("b", 1, MemberStatus::Alive, &[("db", "b-1", Health::Passing, &["primary"])]));
        let (s6, _) = builder.build(&shared(&[&b2, &c]), 6);
        assert_eq!((s6.index_of(&svc("db")), s6.catalog_index), (6, 6));
    }

    #[test]
    fn health_and_tags_filter_lookups() {
        let view = ClusterView::of(vec![
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
        ]);
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
        let (first, _) = builder.build(&shared(&[&a, &b, &c]), 1);
        assert_eq!(first.services.get(&svc("web")).expect("listed").len(), 2);
        // c's health flips: web is rebuilt, db is the same list as before.
        let c2 = Arc::new(node("c", 1, MemberStatus::Alive, &[("web", "c-1", Health::Critical, &[])]));
        let view = shared(&[&a, &b, &c2]);
        let (second, _) = builder.build(&view, 2);
        assert!(Arc::ptr_eq(
            first.services.get(&svc("db")).expect("listed"),
            second.services.get(&svc("db")).expect("listed")
        ));
        assert!(!Arc::ptr_eq(
            first.services.get(&svc("web")).expect("listed"),
            second.services.get(&svc("web")).expect("listed")
        ));
        let (full, _) = build_snapshot(&view, 2);
        assert_same(&second, &full);
        // b goes: db disappears; a node that moves to another service moves its instance.
        let a2 = Arc::new(node("a", 1, MemberStatus::Alive, &[("db", "a-1", Health::Passing, &[])]));
        let view = shared(&[&a2, &c]);
        let (third, _) = builder.build(&view, 3);
        assert_same(&third, &build_snapshot(&view, 3).0);
        assert_eq!(third.services.get(&svc("db")).expect("listed").len(), 1);
        assert_eq!(third.services.get(&svc("web")).expect("listed").len(), 1);
        assert_eq!(third.members.len(), 2);
        // A node going dead takes its instances out.
        let c3 = Arc::new(node("c", 1, MemberStatus::Dead, &[("web", "c-1", Health::Passing, &[])]));
        let view = shared(&[&c3]);
        let (fourth, _) = builder.build(&view, 4);
        assert_same(&fourth, &build_snapshot(&view, 4).0);
        assert!(fourth.services.is_empty());
    }

    #[test]
    fn each_status_change_is_reported_once() {
        let mut builder = SnapshotBuilder::default();
        let mut step = |nodes: Vec<NodeView>| {
            builder.build(&ClusterView::of(nodes), 1);
            let changes = builder.take_changes();
            changes.into_iter().map(|c| format!("{}/{} {}", c.name, c.generation, c.what)).collect::<Vec<_>>()
        };
        let a = |generation, status| node("a", generation, status, &[]);
        // Heard of before its heartbeats: nothing yet; then it joins.
        assert!(step(vec![a(1, MemberStatus::Dead)]).is_empty());
        assert_eq!(step(vec![a(1, MemberStatus::Alive)]), ["a/1 joined"]);
        assert!(step(vec![a(1, MemberStatus::Alive)]).is_empty(), "a new view, the same status");
        assert_eq!(step(vec![a(1, MemberStatus::Dead)]), ["a/1 dead"]);
        assert_eq!(step(vec![a(1, MemberStatus::Alive)]), ["a/1 alive"]);
        // A restart: the new generation replaces the old one, which is forgotten.
        assert_eq!(step(vec![a(2, MemberStatus::Alive)]), ["a/1 forgotten", "a/2 joined"]);
        assert_eq!(step(vec![a(2, MemberStatus::Left)]), ["a/2 left"]);
        assert_eq!(step(vec![]), ["a/2 forgotten"]);
        let mut me = node("me", 1, MemberStatus::Alive, &[]);
        me.is_self = true;
        assert!(step(vec![me]).is_empty(), "the local agent is not reported");
    }

    #[test]
    fn counts_follow_every_change() {
        let mut builder = SnapshotBuilder::default();
        let two = [("web", "x-1", Health::Passing, &[][..]), ("db", "x-2", Health::Critical, &[][..])];
        let view = ClusterView::of;
        builder.build(&view(vec![node("a", 1, MemberStatus::Alive, &two), node("b", 1, MemberStatus::Alive, &[])]), 1);
        assert_eq!(builder.counts(), Counts { alive: 2, dead: 0, left: 0, instances: 2 });
        builder.build(&view(vec![node("a", 1, MemberStatus::Dead, &two), node("b", 1, MemberStatus::Left, &[])]), 2);
        assert_eq!(builder.counts(), Counts { alive: 0, dead: 1, left: 1, instances: 0 });
        builder.build(&view(vec![node("a", 2, MemberStatus::Alive, &two[..1])]), 3);
        assert_eq!(builder.counts(), Counts { alive: 1, dead: 0, left: 0, instances: 1 });
    }

    #[test]
    fn two_nodes_claiming_one_instance_id_are_edited_apart() {
        let a = Arc::new(node("a", 1, MemberStatus::Alive, &[("web", "x", Health::Passing, &[])]));
        let b = Arc::new(node("b", 1, MemberStatus::Alive, &[("web", "x", Health::Passing, &[])]));
        let mut builder = SnapshotBuilder::default();
        builder.build(&shared(&[&a, &b]), 1);
        let b2 = Arc::new(node("b", 1, MemberStatus::Alive, &[("web", "x", Health::Critical, &[])]));
        let view = shared(&[&a, &b2]);
        let (snap, _) = builder.build(&view, 2);
        assert_same(&snap, &build_snapshot(&view, 2).0);
        // Either one changing keeps the same order as a full build.
        let a2 = Arc::new(node("a", 1, MemberStatus::Alive, &[("web", "x", Health::Warning, &[])]));
        let again = shared(&[&a2, &b2]);
        assert_same(&builder.build(&again, 3).0, &build_snapshot(&again, 3).0);
        builder.build(&view, 4);
        let all = snap.lookup(&svc("web"), &Query { health: HealthFilter::All, ..Default::default() });
        let by_node: Vec<_> = all.iter().map(|i| (i.host.node.to_string(), i.health)).collect();
        assert_eq!(by_node, [("a".to_owned(), Health::Passing), ("b".to_owned(), Health::Critical)]);
    }

    #[test]
    fn dead_and_left_nodes_leave_answers_but_stay_members() {
        let view = ClusterView::of(vec![
            node("a", 1, MemberStatus::Dead, &[("web", "a-1", Health::Passing, &[])]),
            node("b", 1, MemberStatus::Left, &[("web", "b-1", Health::Passing, &[])]),
        ]);
        let (snap, _) = build_snapshot(&view, 1);
        assert!(snap.lookup(&svc("web"), &Query { health: HealthFilter::All, ..Default::default() }).is_empty());
        assert_eq!(snap.members.len(), 2);
        // The dead node's instance is listed as down; the departed one's is gone.
        let down: Vec<_> = snap.down.get(&svc("web")).expect("down").iter().map(|i| i.id.to_string()).collect();
        assert_eq!(down, ["a-1"]);
    }

    #[test]
    fn a_restarted_node_replaces_its_old_generation() {
        let mut old = node("a", 1, MemberStatus::Alive, &[("web", "a-old", Health::Passing, &[])]);
        old.gossip_addr = "127.0.0.1:1".parse().expect("valid");
        let new = node("a", 2, MemberStatus::Alive, &[("web", "a-new", Health::Passing, &[])]);
        let mut builder = SnapshotBuilder::default();
        builder.build(&ClusterView::of([old]), 1);
        let (snap, _) = builder.build(&ClusterView::of([new]), 2);
        assert_eq!(snap.members.len(), 1);
        assert_eq!(snap.members.values().next().expect("one member").generation, 2);
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
        let (snap, bad) = build_snapshot(&ClusterView::of([n]), 1);
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
        let (snap, _) = build_snapshot(&ClusterView::of([n]), 1);
        assert!(snap.lookup(&svc("web"), &Query::default()).is_empty());
    }
}
