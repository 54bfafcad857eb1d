//! The registry replica: one `Arc<Snapshot>` in a watch channel, rebuilt whole from the
//! gossip view on every change and swapped once. Readers clone the `Arc` and drop the
//! borrow at once; lookups never touch the network or a lock held across I/O.

mod build;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use build::{build_snapshot, BadValue};
pub use snapshot::{HealthFilter, Instance, Member, MemberStatus, Query, Snapshot};

use crate::gossip::ClusterView;
use crate::metrics::Metrics;

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
        loop {
            let view = view_rx.borrow_and_update().clone();
            version += 1;
            let (snapshot, bad) = build_snapshot(&view, version);
            // Count and log each bad value once, not on every rebuild.
            for b in bad.iter().filter(|b| !last_bad.contains(b)) {
                metrics.gossip.bad_values.inc();
                warn!(node = %b.node, key = %b.key, error = %b.error, "skipped a gossip value that does not decode");
            }
            last_bad = bad;
            let m = &metrics.members;
            let count = |s: MemberStatus| snapshot.members.iter().filter(|x| x.status == s).count() as u64;
            m.alive.set(count(MemberStatus::Alive));
            m.dead.set(count(MemberStatus::Dead));
            m.left.set(count(MemberStatus::Left));
            m.instances.set(snapshot.services.values().map(|v| v.len() as u64).sum());
            m.snapshots.inc();
            tx.send_replace(Arc::new(snapshot));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = view_rx.changed() => if changed.is_err() {
                    return if cancel.is_cancelled() { Ok(()) } else { Err(anyhow::anyhow!("gossip view closed")) };
                }
            }
        }
    });
    (RegistryReader { rx }, task)
}
