//! The [`Publisher`]: the one narrow write path into gossip. Registration, deregistration,
//! health and draining of this node's instances all pass through here; DNS, the API and
//! health checks never touch gossip directly.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use murmur_protocol::{encode_value, Health, HealthRecord, InstanceId, InstanceRecord, Key, NodeName};
use thiserror::Error;
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::clock::unix_ms;
use crate::config::{CheckKind, CheckSpec, ServiceSpec};
use crate::gossip::StateWriter;

/// Caps on what one agent registers, so that one local process cannot make every replica
/// in the cluster carry its junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Instances, the config's included (`--max-instances`).
    pub instances: usize,
    /// Bytes of tags and attributes (keys and values) over every instance
    /// (`--max-attribute-bytes`).
    pub attribute_bytes: usize,
    /// API registrations and removals a second (a burst of twice that is allowed).
    pub per_second: u32,
}

/// One instance this agent registers, with its check and current health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInstance {
    /// What is gossiped.
    pub record: InstanceRecord,
    /// How it is checked.
    pub check: CheckSpec,
    /// Services allowed to call it through the sidecar (empty: any).
    pub allow: Vec<murmur_protocol::ServiceName>,
    /// Current health.
    pub health: Health,
    /// Who registered it.
    pub origin: Origin,
}

/// Who registered an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The agent's own config (flags, env, file) or the program embedding it: the
    /// operator's policy, which the API may not change.
    Config,
    /// The admin API: any local process.
    Api,
}

/// Why a registration change was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The instance is not registered here.
    #[error("instance `{0}` is not registered on this agent")]
    NotFound(String),
    /// The agent is draining and takes no new instances.
    #[error("the agent is draining and accepts no new instances")]
    Draining,
    /// The id is taken by an instance of another service.
    #[error("instance id `{0}` is already used by service `{1}`; choose another id")]
    IdTaken(String, String),
    /// Past the cap on instances.
    #[error("this agent already carries {0} instances, its cap (--max-instances); remove some first")]
    TooMany(usize),
    /// Past the cap on tag and attribute bytes.
    #[error("tags and attributes would take {0} bytes on this agent, past its cap of {1} (--max-attribute-bytes)")]
    TooLarge(usize, usize),
    /// Registrations come too fast.
    #[error("more than {0} registrations a second through the API; slow down")]
    RateLimited(u32),
    /// The instance comes from the agent's config, which the API may not change.
    #[error("instance `{0}` is declared in the agent's config and cannot be changed through the API; change the config and restart the agent")]
    ReadOnly(String),
    /// A status report for an instance whose check is not a TTL check.
    #[error("the check of instance `{0}` is not a TTL check: only TTL checks take reports")]
    NotTtl(String),
}

/// What the checks need to know of an instance's health over time.
#[derive(Debug, Clone)]
struct Timeline {
    /// The last status report of a TTL check (its registration until the first).
    reported: std::time::Instant,
    /// Since when it is critical, if it is.
    critical_since: Option<std::time::Instant>,
    /// The output last published.
    output: String,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<InstanceId, LocalInstance>,
    timelines: BTreeMap<InstanceId, Timeline>,
    draining: bool,
    /// Tokens of the API's registration rate limit, and when they were last filled.
    tokens: f64,
    filled: Option<std::time::Instant>,
}

/// Bytes an instance's tags and attributes take.
fn attribute_bytes(record: &InstanceRecord) -> usize {
    record.tags.iter().map(|t| t.as_str().len()).sum::<usize>()
        + record.attributes.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()
}

impl State {
    /// Takes one token of the registration rate limit (`per_second`, bursts of twice).
    fn take_token(&mut self, per_second: u32, now: std::time::Instant) -> bool {
        let burst = f64::from(per_second) * 2.0;
        let filled = self.filled.replace(now);
        self.tokens = match filled {
            None => burst,
            Some(at) => {
                (self.tokens + now.saturating_duration_since(at).as_secs_f64() * f64::from(per_second)).min(burst)
            }
        };
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The write handle. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    writer: StateWriter,
    node: NodeName,
    advertise: IpAddr,
    sidecar: bool,
    limits: RegistrationLimits,
    // An async mutex held across the gossip write of each operation, so that the table
    // and gossip change together: a health result can never land after "draining" or
    // after a deregistration.
    state: Arc<Mutex<State>>,
    local_tx: Arc<watch::Sender<Arc<Vec<LocalInstance>>>>,
}

impl Publisher {
    /// A publisher for node `node`, whose instances default to address `advertise`;
    /// `sidecar` says whether this agent's proxy fronts them.
    /// API registrations are held to `limits`.
    pub fn new(
        writer: StateWriter,
        node: NodeName,
        advertise: IpAddr,
        sidecar: bool,
        limits: RegistrationLimits,
    ) -> Self {
        let (local_tx, _) = watch::channel(Arc::new(Vec::new()));
        Self { writer, node, advertise, sidecar, limits, state: Arc::default(), local_tx: Arc::new(local_tx) }
    }

    /// This agent's instances, updated on every change (the health supervisor follows it).
    pub fn local(&self) -> watch::Receiver<Arc<Vec<LocalInstance>>> {
        self.local_tx.subscribe()
    }

    async fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().await
    }

    fn announce(&self, state: &State) {
        self.local_tx.send_replace(Arc::new(state.instances.values().cloned().collect()));
    }

    /// The instance id a spec gets: its own, or `<node>-<port>`.
    pub fn instance_id(&self, spec: &ServiceSpec) -> InstanceId {
        spec.id.clone().unwrap_or_else(|| {
            // A node name is a label of at most 63 bytes; with "-65535" it may be too
            // long, so the node part is cut to keep the id a valid label.
            let port = spec.port.to_string();
            let node: String = self.node.as_str().chars().take(62 - port.len()).collect();
            let node = node.trim_end_matches('-');
            InstanceId::new(&format!("{node}-{port}")).unwrap_or_else(|_| spec_fallback_id(spec))
        })
    }

    /// Registers (or replaces) an instance on behalf of `origin`. A new instance starts
    /// critical until its first check passes, unless it has no check; a replaced one with
    /// the same check and target keeps its health (its check loop goes on). The API may
    /// not replace an instance the config declared.
    pub async fn register(&self, spec: &ServiceSpec, origin: Origin) -> Result<InstanceId, PublishError> {
        let id = self.instance_id(spec);
        let record = InstanceRecord {
            service: spec.name.clone(),
            instance: id.clone(),
            address: spec.address.unwrap_or(self.advertise),
            port: spec.port,
            sidecar: self.sidecar,
            tags: spec.tags.clone(),
            attributes: spec.attributes.clone(),
            weight: spec.weight,
        };
        let mut state = self.lock().await;
        if state.draining {
            return Err(PublishError::Draining);
        }
        if origin == Origin::Api {
            let limits = self.limits;
            if !state.take_token(limits.per_second, std::time::Instant::now()) {
                return Err(PublishError::RateLimited(limits.per_second));
            }
            let replaced = state.instances.get(&id);
            if replaced.is_none() && state.instances.len() >= limits.instances {
                return Err(PublishError::TooMany(limits.instances));
            }
            let others: usize =
                state.instances.values().filter(|i| i.record.instance != id).map(|i| attribute_bytes(&i.record)).sum();
            let bytes = others + attribute_bytes(&record);
            if bytes > limits.attribute_bytes {
                return Err(PublishError::TooLarge(bytes, limits.attribute_bytes));
            }
        }
        let mut kept = None;
        if let Some(other) = state.instances.get(&id) {
            if other.record.service != spec.name {
                return Err(PublishError::IdTaken(id.to_string(), other.record.service.to_string()));
            }
            if other.origin == Origin::Config && origin == Origin::Api {
                return Err(PublishError::ReadOnly(id.to_string()));
            }
            let same_target = other.record.address == record.address && other.record.port == record.port;
            if same_target && other.check == spec.check {
                kept = Some(other.health);
            }
        }
        let health = match kept {
            Some(status) => HealthRecord::new(status, unix_ms(), "re-registered"),
            None if spec.check.kind == CheckKind::None => HealthRecord::new(Health::Passing, unix_ms(), "no check"),
            None => HealthRecord::new(Health::Critical, unix_ms(), "waiting for the first check"),
        };
        {
            state.instances.insert(
                id.clone(),
                LocalInstance {
                    record: record.clone(),
                    check: spec.check.clone(),
                    allow: spec.allow.clone(),
                    health: health.status,
                    origin,
                },
            );
            let now = std::time::Instant::now();
            let critical_since = match kept {
                Some(_) => state.timelines.get(&id).and_then(|t| t.critical_since),
                None => (health.status == Health::Critical).then_some(now),
            };
            state
                .timelines
                .insert(id.clone(), Timeline { reported: now, critical_since, output: health.output.clone() });
            self.announce(&state);
        }
        // Health first, so that no peer ever sees the instance without its health.
        self.writer.set(&Key::Health(id.clone()).render(), encode_value(&health)).await;
        self.writer.set(&Key::Instance(id.clone()).render(), encode_value(&record)).await;
        drop(state);
        Ok(id)
    }

    /// Removes an instance on behalf of `origin` (the API may not remove one the config
    /// declared).
    pub async fn deregister(&self, id: &InstanceId, origin: Origin) -> Result<(), PublishError> {
        let mut state = self.lock().await;
        if origin == Origin::Api && !state.take_token(self.limits.per_second, std::time::Instant::now()) {
            return Err(PublishError::RateLimited(self.limits.per_second));
        }
        match state.instances.get(id) {
            None => return Err(PublishError::NotFound(id.to_string())),
            Some(i) if i.origin == Origin::Config && origin == Origin::Api => {
                return Err(PublishError::ReadOnly(id.to_string()))
            }
            Some(_) => {}
        }
        self.remove(&mut state, id).await;
        Ok(())
    }

    async fn remove(&self, state: &mut State, id: &InstanceId) {
        state.instances.remove(id);
        state.timelines.remove(id);
        self.announce(state);
        self.writer.delete(&Key::Instance(id.clone()).render()).await;
        self.writer.delete(&Key::Health(id.clone()).render()).await;
    }

    /// Removes an instance that has stayed critical for its check's
    /// `deregister_critical_after`, whoever registered it (Consul's
    /// `DeregisterCriticalServiceAfter`). Returns whether it was removed.
    pub async fn reap(&self, id: &InstanceId) -> bool {
        let mut state = self.lock().await;
        let Some(after) = state.instances.get(id).and_then(|i| i.check.deregister_critical_after) else {
            return false;
        };
        let due = state.timelines.get(id).and_then(|t| t.critical_since).is_some_and(|since| since.elapsed() >= after);
        if due {
            self.remove(&mut state, id).await;
        }
        due
    }

    /// When the instance turns critical unless something changes: when its TTL runs
    /// out (TTL checks) and when it is reaped (when it has `deregister_critical_after`
    /// and is critical). `None` once it is gone.
    pub async fn deadlines(&self, id: &InstanceId) -> Option<(Option<std::time::Instant>, Option<std::time::Instant>)> {
        let state = self.lock().await;
        let inst = state.instances.get(id)?;
        let timeline = state.timelines.get(id)?;
        let expires = match inst.check.kind {
            CheckKind::Ttl { ttl } => Some(timeline.reported + ttl),
            _ => None,
        };
        let reaped =
            inst.check.deregister_critical_after.zip(timeline.critical_since).map(|(after, since)| since + after);
        Some((expires, reaped))
    }

    /// A TTL check's report from the app (`pass`, `warn` or `fail` with a note): holds
    /// for the check's TTL. Published when the status or the note changed.
    pub async fn report(&self, id: &InstanceId, status: Health, output: &str) -> Result<(), PublishError> {
        let mut state = self.lock().await;
        match state.instances.get(id) {
            None => return Err(PublishError::NotFound(id.to_string())),
            Some(i) if !matches!(i.check.kind, CheckKind::Ttl { .. }) => {
                return Err(PublishError::NotTtl(id.to_string()))
            }
            Some(_) => {}
        }
        let now = std::time::Instant::now();
        let flips = state.instances.get(id).is_some_and(|i| i.health != status);
        // A report that flips the status is a gossip change like a registration, and is
        // held to the same rate: an app cannot flood the cluster through its reports.
        if flips && !state.take_token(self.limits.per_second, now) {
            return Err(PublishError::RateLimited(self.limits.per_second));
        }
        if let Some(t) = state.timelines.get_mut(id) {
            t.reported = now;
        }
        self.publish_health(&mut state, id, status, output).await;
        Ok(())
    }

    /// A TTL check whose last report is older than its TTL turns critical.
    pub async fn expire(&self, id: &InstanceId) {
        let mut state = self.lock().await;
        let Some(CheckKind::Ttl { ttl }) = state.instances.get(id).map(|i| i.check.kind.clone()) else { return };
        if state.timelines.get(id).is_some_and(|t| t.reported.elapsed() >= ttl) {
            let output = format!("TTL expired: no report for {ttl:?}");
            self.publish_health(&mut state, id, Health::Critical, &output).await;
        }
    }

    /// Publishes a health change from the checks. Ignored once the agent is draining
    /// (draining wins over anything a check says) or when the instance is gone.
    pub async fn set_health(&self, id: &InstanceId, status: Health, output: &str) {
        let mut state = self.lock().await;
        self.publish_health(&mut state, id, status, output).await;
    }

    /// Publishes `status` for `id` unless the agent is draining, the instance is gone,
    /// or neither the status nor the output changed.
    async fn publish_health(&self, state: &mut State, id: &InstanceId, status: Health, output: &str) {
        if state.draining {
            return;
        }
        let Some(inst) = state.instances.get_mut(id) else {
            return;
        };
        let was = std::mem::replace(&mut inst.health, status);
        let timeline = state.timelines.get_mut(id);
        if let Some(t) = timeline {
            if was == status && t.output == output {
                return;
            }
            t.output = output.to_owned();
            match status {
                Health::Critical => {
                    t.critical_since.get_or_insert_with(std::time::Instant::now);
                }
                _ => t.critical_since = None,
            }
        }
        self.announce(state);
        let rec = HealthRecord::new(status, unix_ms(), output);
        self.writer.set(&Key::Health(id.clone()).render(), encode_value(&rec)).await;
    }

    /// The local instance a Consul id names: an instance id, or failing that the name of
    /// the one local service of that name (Consul's default id is the service's name;
    /// murmur's is `<node>-<port>`, so a client that relies on the default still finds
    /// its instance).
    pub fn resolve(&self, id: &str) -> Option<InstanceId> {
        let local = self.local_tx.borrow();
        if let Some(i) = local.iter().find(|i| i.record.instance.as_str() == id) {
            return Some(i.record.instance.clone());
        }
        let mut named = local.iter().filter(|i| i.record.service.as_str() == id);
        match (named.next(), named.next()) {
            (Some(one), None) => Some(one.record.instance.clone()),
            _ => None,
        }
    }

    /// The local instance whose check has Consul id `check_id`: its own `CheckID`, or
    /// `service:<id>` as [`Publisher::resolve`] reads `<id>`.
    pub fn resolve_check(&self, check_id: &str) -> Option<InstanceId> {
        let own = self
            .local_tx
            .borrow()
            .iter()
            .find(|i| i.check.id.as_deref() == Some(check_id))
            .map(|i| i.record.instance.clone());
        own.or_else(|| self.resolve(check_id.strip_prefix("service:")?))
    }

    /// Marks every instance draining: peers take them out of answers at once.
    pub async fn mark_draining(&self) {
        let mut state = self.lock().await;
        state.draining = true;
        for inst in state.instances.values_mut() {
            inst.health = Health::Draining;
        }
        self.announce(&state);
        let rec = encode_value(&HealthRecord::new(Health::Draining, unix_ms(), "agent is leaving"));
        for id in state.instances.keys() {
            self.writer.set(&Key::Health(id.clone()).render(), rec.clone()).await;
        }
    }
}

/// An id from the service name and port, for the rare node name that cannot prefix one.
fn spec_fallback_id(spec: &ServiceSpec) -> InstanceId {
    InstanceId::new(&format!("{}-{}", spec.name, spec.port))
        .unwrap_or_else(|_| spec.name.as_str().parse().expect("a service name is a valid instance id"))
}
