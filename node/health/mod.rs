//! Health checks of the local apps. The supervisor follows the publisher's list of local
//! instances and runs one probe loop per instance; results go through the thresholds
//! and, when the status flips, through flap damping and back into gossip through the
//! [`Publisher`].

mod damping;
mod probe;
mod threshold;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use damping::Damping;
pub use probe::probe;
pub use threshold::Thresholds;

use crate::config::{CheckKind, CheckSpec};
use crate::local::{LocalInstance, Publisher};
use crate::metrics::Metrics;
use murmur_protocol::InstanceId;

/// Starts the checks of this agent's instances, one loop per instance, as they are
/// registered and removed; they stop with `cancel` or the handle's `shutdown()`.
pub fn spawn_health(publisher: Publisher, metrics: Arc<Metrics>, cancel: CancellationToken) -> crate::task::Tasks {
    let mut tasks = crate::task::Tasks::new(cancel);
    let run = run_health(publisher, metrics, tasks.token()).instrument(info_span!("health"));
    tasks.spawn("health", run);
    tasks
}

/// Runs the checks until `cancel`. Returns `Ok(())` when cancelled.
async fn run_health(
    publisher: Publisher,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), crate::error::TaskError> {
    let mut local_rx = publisher.local();
    // One loop per instance, keyed by id; replaced when its check or address changes.
    let mut loops: BTreeMap<InstanceId, (CheckSpec, SocketAddr, CancellationToken)> = BTreeMap::new();
    loop {
        let instances: Arc<Vec<LocalInstance>> = local_rx.borrow_and_update().clone();
        let wanted: BTreeMap<InstanceId, &LocalInstance> = instances
            .iter()
            .filter(|i| i.check.kind != CheckKind::None)
            .map(|i| (i.record.instance.clone(), i))
            .collect();
        loops.retain(|id, (check, target, token)| {
            let keep = wanted.get(id).is_some_and(|i| &i.check == check && target_of(i) == *target);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, inst) in wanted {
            if loops.contains_key(&id) {
                continue;
            }
            let target = target_of(inst);
            let token = cancel.child_token();
            if matches!(inst.check.kind, CheckKind::Ttl { .. }) {
                let span = info_span!("health", instance = %id, check = "ttl");
                tokio::spawn(ttl_loop(id.clone(), publisher.clone(), token.clone()).instrument(span));
            } else {
                let span = info_span!("health", instance = %id, %target);
                tokio::spawn(
                    check_loop(
                        id.clone(),
                        inst.check.clone(),
                        target,
                        publisher.clone(),
                        metrics.clone(),
                        token.clone(),
                    )
                    .instrument(span),
                );
            }
            loops.insert(id, (inst.check.clone(), target, token));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = local_rx.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

/// What an instance's check probes: its own address and port, or the check's target.
fn target_of(inst: &LocalInstance) -> SocketAddr {
    inst.check.target.unwrap_or(SocketAddr::new(inst.record.address, inst.record.port))
}

/// Removes the instance if it has been critical for its `deregister_critical_after`;
/// returns whether it did.
async fn reaped(id: &InstanceId, publisher: &Publisher) -> bool {
    let gone = publisher.reap(id).await;
    if gone {
        info!("instance critical for longer than its deregister_after: deregistered");
    }
    gone
}

/// A TTL check: nothing is probed. The app's reports come through the publisher; this
/// turns the instance critical when a report is older than the TTL, and reaps it when it
/// has stayed critical too long. It sleeps until the next such deadline or a change.
async fn ttl_loop(id: InstanceId, publisher: Publisher, cancel: CancellationToken) {
    let mut changes = publisher.local();
    loop {
        let Some((expires, reap)) = publisher.deadlines(&id).await else { return };
        let now = std::time::Instant::now();
        let next = expires.filter(|e| *e > now).into_iter().chain(reap).min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sleep => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
        publisher.expire(&id).await;
        if reaped(&id, &publisher).await {
            return;
        }
    }
}

async fn check_loop(
    id: InstanceId,
    check: CheckSpec,
    target: SocketAddr,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut thresholds = Thresholds::new(check.failures_before_critical, check.successes_before_passing);
    let mut damping = Damping::new(std::time::Instant::now());
    // The first probe runs at once, so a new instance appears as soon as it answers.
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if check.deregister_critical_after.is_some() && reaped(&id, &publisher).await {
            return;
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe(&check.kind, target, check.timeout) => r,
        };
        if result.passed {
            metrics.health.passed.inc();
        } else {
            metrics.health.failed.inc();
        }
        let now = std::time::Instant::now();
        let publish = match thresholds.record(result.passed) {
            Some(status) => {
                let publish = damping.flip(status, now);
                if publish.is_none() {
                    metrics.health.damped.inc();
                } else if damping.held() {
                    warn!(output = %result.output, "health flapping: held critical until it settles");
                }
                publish
            }
            None => damping.poll(thresholds.status(), now),
        };
        if let Some(status) = publish {
            metrics.health.transitions.inc();
            info!(status = status.as_str(), output = %result.output, "health changed");
            let output = match damping.held() {
                true => format!("flapping, held critical until it settles: {}", result.output),
                false => result.output,
            };
            publisher.set_health(&id, status, &output).await;
        }
    }
}
