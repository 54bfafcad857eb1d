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
use crate::config::{CheckKind, CheckSpec, RegistrationLimits, ServiceSpec};
use crate::gossip::StateWriter;

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
}

#[derive(Default)]
struct State {
    instances: BTreeMap<InstanceId, LocalInstance>,
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
        state.instances.remove(id);
        self.announce(&state);
        self.writer.delete(&Key::Instance(id.clone()).render()).await;
        self.writer.delete(&Key::Health(id.clone()).render()).await;
        Ok(())
    }

    /// Publishes a health change from the checks. Ignored once the agent is draining
    /// (draining wins over anything a check says) or when the instance is gone.
    pub async fn set_health(&self, id: &InstanceId, status: Health, output: &str) {
        let mut state = self.lock().await;
        if state.draining {
            return;
        }
        let Some(inst) = state.instances.get_mut(id) else {
            return;
        };
        inst.health = status;
        self.announce(&state);
        let rec = HealthRecord::new(status, unix_ms(), output);
        self.writer.set(&Key::Health(id.clone()).render(), encode_value(&rec)).await;
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
