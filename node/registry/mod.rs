//! The registry replica: one `Arc<Snapshot>` in a watch channel, built from the gossip
//! view on every change (incrementally: what did not change is shared with the snapshot
//! before) and swapped once. Readers clone the `Arc` and drop the
//! borrow at once; lookups never touch the network or a lock held across I/O.

mod build;
mod snapshot;

use crate::error::TaskError;
use crate::task::Tasks;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::shared::SharedMap;
pub use build::{build_snapshot, BadValue, SnapshotBuilder};
pub use snapshot::{HealthFilter, Host, Instance, Member, MemberStatus, Query, Snapshot};

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

    /// A receiver of every snapshot published from now on (`has_changed` tells a
    /// reader that keeps something derived from the current one when to drop it).
    pub fn changes(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
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

/// Starts the builder: every new cluster view becomes a new snapshot. The tasks stop
/// with `cancel` or the handle's `shutdown()`.
pub fn spawn_registry(
    mut view_rx: watch::Receiver<Arc<ClusterView>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (RegistryReader, Tasks) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let mut tasks = Tasks::new(cancel);
    let cancel = tasks.token();
    tasks.spawn("registry", async move {
        let mut version = 0u64;
        let mut last_bad: Vec<BadValue> = Vec::new();
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
            for change in builder.take_changes() {
                info!(member = %change.name, generation = change.generation, "member {}", change.what);
            }
            let (m, counts) = (&metrics.members, builder.counts());
            m.alive.set(counts.alive);
            m.dead.set(counts.dead);
            m.left.set(counts.left);
            m.instances.set(counts.instances);
            m.snapshots.inc();
            tx.send_replace(Arc::new(snapshot));
            let built = tokio::time::Instant::now();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = view_rx.changed() => if changed.is_err() {
                    return if cancel.is_cancelled() { Ok(()) } else { Err(TaskError::Stopped) };
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
    (RegistryReader { rx }, tasks)
}
