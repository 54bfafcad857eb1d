//! The registry replica: one `Arc<Snapshot>` in a watch channel, rebuilt whole from the
//! gossip view on every change and swapped once. Readers clone the `Arc` and drop the
//! borrow at once; lookups never touch the network or a lock held across I/O.

mod build;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use build::{build_snapshot, BadValue, SnapshotBuilder};
pub use snapshot::{HealthFilter, Instance, Member, MemberStatus, Query, Snapshot};

use crate::gossip::ClusterView;
use crate::metrics::Metrics;

/// Shortest time between two snapshots: changes that come faster (a deployment, a
/// mass join) are taken together, at most 20 snapshots a second, and no answer lags the
/// replica by more than this.
const COALESCE: Duration = Duration::from_millis(50);

/// Read access to the replica; cheap to clone.
#[derive(Clone)]
pub struct RegistryReader {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl RegistryReader {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits until `pred` holds for a snapshot, or `timeout` passes; returns the last
    /// snapshot seen and whether `pred` held.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Snapshot) -> bool) -> (Arc<Snapshot>, bool) {
        let mut rx = self.rx.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        let ok = matches!(found, Ok(Ok(_)));
        (self.snapshot(), ok)
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

/// Starts the builder: every new cluster view becomes a new snapshot.
pub fn spawn_registry(
    mut view_rx: watch::Receiver<Arc<ClusterView>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (RegistryReader, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(async move {
        let mut version = 0u64;
        let mut last_bad: Vec<BadValue> = Vec::new();
        let mut statuses = MemberStatuses::default();
        let mut builder = SnapshotBuilder::default();
        loop {
            let view = view_rx.borrow_and_update().clone();
            version += 1;
            let (snapshot, bad) = builder.build(&view, version);
            // Count and log each bad value once, not on every rebuild.
            for b in bad.iter().filter(|b| !last_bad.contains(b)) {
                metrics.gossip.bad_values.inc();
                warn!(node = %b.node, key = %b.key, error = %b.error, "skipped a gossip value that does not decode");
            }
            last_bad = bad;
            for change in statuses.update(&snapshot.members) {
                info!(member = %change.name, generation = change.generation, "member {}", change.what);
            }
            let m = &metrics.members;
            let count = |s: MemberStatus| snapshot.members.iter().filter(|x| x.status == s).count() as u64;
            m.alive.set(count(MemberStatus::Alive));
            m.dead.set(count(MemberStatus::Dead));
            m.left.set(count(MemberStatus::Left));
            m.instances.set(snapshot.services.values().map(|v| v.len() as u64).sum());
            m.snapshots.inc();
            tx.send_replace(Arc::new(snapshot));
            let built = tokio::time::Instant::now();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = view_rx.changed() => if changed.is_err() {
                    return if cancel.is_cancelled() { Ok(()) } else { Err(anyhow::anyhow!("gossip view closed")) };
                }
            }
            // Changes that come in a burst (a deployment, a join) are taken together: at
            // most one snapshot per COALESCE, built from the latest view.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(built + COALESCE) => {}
            }
        }
    });
    (RegistryReader { rx }, task)
}

/// A member whose status changed between two snapshots.
#[derive(Debug, PartialEq, Eq)]
struct StatusChange {
    name: String,
    generation: u64,
    /// `joined`, `alive` (again), `dead`, `left` or `forgotten`.
    what: &'static str,
}

/// The last status of every other member, and whether it was ever seen alive, so that
/// each transition is logged once (an operator reads joins and failures from the log,
/// as with Serf or Consul). A node is heard of before its first heartbeats are: until
/// it has been alive it is not reported at all, so a join is never logged as a death.
#[derive(Default)]
struct MemberStatuses(std::collections::BTreeMap<(String, u64), (MemberStatus, bool)>);

impl MemberStatuses {
    fn update(&mut self, members: &[Member]) -> Vec<StatusChange> {
        let mut changes = Vec::new();
        let mut next = std::collections::BTreeMap::new();
        for m in members.iter().filter(|m| !m.is_self) {
            let key = (m.name.clone(), m.generation);
            let (old, was_alive) = self.0.get(&key).map_or((None, false), |(s, a)| (Some(*s), *a));
            let what = match m.status {
                _ if old == Some(m.status) => None,
                MemberStatus::Alive if was_alive => Some("alive"),
                MemberStatus::Alive => Some("joined"),
                MemberStatus::Dead if was_alive => Some("dead"),
                MemberStatus::Dead => None,
                MemberStatus::Left => Some("left"),
            };
            if let Some(what) = what {
                changes.push(StatusChange { name: m.name.clone(), generation: m.generation, what });
            }
            next.insert(key, (m.status, was_alive || m.status == MemberStatus::Alive));
        }
        for ((name, generation), _) in self.0.iter().filter(|(k, (_, alive))| *alive && !next.contains_key(*k)) {
            changes.push(StatusChange { name: name.clone(), generation: *generation, what: "forgotten" });
        }
        self.0 = next;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, generation: u64, status: MemberStatus) -> Member {
        Member::other(name, generation, status)
    }

    #[test]
    fn each_status_change_is_reported_once() {
        let mut s = MemberStatuses::default();
        let what = |c: Vec<StatusChange>| {
            c.into_iter().map(|c| format!("{}/{} {}", c.name, c.generation, c.what)).collect::<Vec<_>>()
        };
        // Heard of before its heartbeats: nothing yet; then it joins.
        assert!(s.update(&[member("a", 1, MemberStatus::Dead)]).is_empty());
        assert_eq!(what(s.update(&[member("a", 1, MemberStatus::Alive)])), ["a/1 joined"]);
        assert!(s.update(&[member("a", 1, MemberStatus::Alive)]).is_empty());
        assert_eq!(what(s.update(&[member("a", 1, MemberStatus::Dead)])), ["a/1 dead"]);
        assert_eq!(what(s.update(&[member("a", 1, MemberStatus::Alive)])), ["a/1 alive"]);
        // A restart: a new generation joins; the old one, once gone, is forgotten.
        assert_eq!(
            what(s.update(&[member("a", 1, MemberStatus::Dead), member("a", 2, MemberStatus::Alive)])),
            ["a/1 dead", "a/2 joined"]
        );
        assert_eq!(what(s.update(&[member("a", 2, MemberStatus::Left)])), ["a/2 left", "a/1 forgotten"]);
        let mut me = member("me", 1, MemberStatus::Alive);
        me.is_self = true;
        assert!(s.update(&[me]).iter().all(|c| c.name != "me"), "the local agent is not reported");
    }
}
