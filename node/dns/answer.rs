//! What the stub answers for a name, computed from one registry snapshot. Pure: a
//! snapshot, a question and a random source in, records out; no socket, no clock.
//!
//! Inside namespace `ns`:
//! - `svc.ns` A/AAAA: healthy instances' addresses, shuffled and capped; SRV: port and
//!   target `<instance>.svc.ns`, with the target's address in the additional section;
//! - `_svc._tcp.ns` SRV: the same SRV answer, in RFC 2782 form;
//! - `tag.svc.ns`: as `svc.ns`, filtered by tag; `<instance>.svc.ns`: that instance;
//! - `ns` SOA: our SOA; unknown names: NXDOMAIN with the SOA for negative caching.
//!
//! Everything outside the namespace is [`Outcome::Forward`]: the caller forwards it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::registry::{Instance, Query, Snapshot};
use murmur_protocol::{InstanceId, ServiceName, Tag};

/// Orders the instances behind an answer before it is capped (see [`Zone::answer_with`]).
pub type Arrange<'a> = &'a mut dyn FnMut(&mut [Arc<Instance>]);

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// NOERROR with records.
    Answer {
        /// Answer section.
        answers: Vec<Record>,
        /// Additional section (addresses of SRV targets).
        additionals: Vec<Record>,
    },
    /// NOERROR without records (the name exists, not with this type); SOA in authority.
    NoData(Record),
    /// NXDOMAIN; SOA in authority.
    NxDomain(Record),
    /// Not ours: forward to the upstream resolvers.
    Forward,
}

/// The namespace the stub is authoritative for, and how it answers.
#[derive(Debug, Clone)]
pub struct Zone {
    serial_base: u32,
    origin: Name,
    /// The SOA's primary server and mailbox names, built once.
    mname: Name,
    rname: Name,
    origin_text: String,
    ttl: u32,
    max_answers: usize,
    aliases: std::collections::BTreeMap<String, IpAddr>,
}

/// The namespace does not make a DNS name (config checks it first, so this is for
/// embedders who build a zone themselves).
#[derive(Debug, thiserror::Error)]
#[error("namespace `{namespace}` is not a DNS name")]
pub struct NamespaceError {
    /// The namespace.
    pub namespace: String,
    /// hickory's reason.
    pub source: hickory_proto::ProtoError,
}

impl Zone {
    /// A zone for `namespace` (already validated by config). `serial_base` (the agent's
    /// start, unix seconds) keeps the SOA serial growing across restarts.
    pub fn new(namespace: &str, ttl: u32, max_answers: usize, serial_base: u32) -> Result<Zone, NamespaceError> {
        let origin = Name::from_ascii(format!("{namespace}."))
            .map_err(|source| NamespaceError { namespace: namespace.to_owned(), source })?;
        let name = |label: &str| Name::from_ascii(format!("{label}.{namespace}.")).unwrap_or_else(|_| origin.clone());
        let (mname, rname) = (name("ns"), name("hostmaster"));
        Ok(Zone {
            serial_base,
            mname,
            rname,
            origin,
            origin_text: namespace.to_ascii_lowercase(),
            ttl,
            max_answers,
            aliases: Default::default(),
        })
    }

    /// Adds proxy-mode aliases: `alias` and `alias.<namespace>` answer `ip` (the VIP
    /// where this agent's sidecar listens), before any registry name.
    pub fn with_aliases(mut self, aliases: &[(String, IpAddr)]) -> Zone {
        for (alias, ip) in aliases {
            let alias = alias.to_ascii_lowercase();
            self.aliases.insert(format!("{alias}.{}", self.origin_text), *ip);
            self.aliases.insert(alias, *ip);
        }
        self
    }

    fn soa(&self, snapshot: &Snapshot) -> Record {
        // The serial follows the snapshot so secondaries (and people) can see change;
        // the minimum is the negative-caching TTL (RFC 2308), kept as short as answers.
        let soa = SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            self.serial_base.wrapping_add(snapshot.version as u32),
            3600,
            600,
            86400,
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}.", self.origin_text)).ok()
    }

    /// Answers `qname`/`qtype` from `snapshot`, the instances in a random order.
    pub fn answer(&self, snapshot: &Snapshot, qname: &Name, qtype: RecordType, rng: &mut impl Rng) -> Outcome {
        self.answer_with(snapshot, qname, qtype, &mut |instances| instances.shuffle(rng))
    }

    /// As [`Zone::answer`], with `arrange` ordering the instances behind the answer
    /// before it is capped. It is called at most once, and not at all when the answer
    /// comes from no instance list (an alias, the SOA, NXDOMAIN).
    pub fn answer_with(&self, snapshot: &Snapshot, qname: &Name, qtype: RecordType, arrange: Arrange<'_>) -> Outcome {
        let full = qname.to_lowercase().to_ascii();
        let full = full.trim_end_matches('.');
        if let Some(&vip) = self.aliases.get(full) {
            return self.alias_answer(snapshot, qname, qtype, vip);
        }
        let relative = if full == self.origin_text {
            ""
        } else if let Some(r) = full.strip_suffix(&self.origin_text).and_then(|r| r.strip_suffix('.')) {
            r
        } else {
            return Outcome::Forward;
        };
        let labels: Vec<&str> = if relative.is_empty() { Vec::new() } else { relative.split('.').collect() };
        match labels.as_slice() {
            [] if qtype == RecordType::SOA => {
                Outcome::Answer { answers: vec![self.soa(snapshot)], additionals: vec![] }
            }
            // The apex has only its SOA; `_tcp` is an empty non-terminal: `_svc._tcp.ns`
            // names exist below it (RFC 8020).
            [] | ["_tcp"] => Outcome::NoData(self.soa(snapshot)),
            [svc_label, "_tcp"] => self.service_answer(snapshot, qname, qtype, svc_label, true, arrange),
            [svc_label] => self.service_answer(snapshot, qname, qtype, svc_label, false, arrange),
            [filter, svc_label] => self.filtered_answer(snapshot, qname, qtype, filter, svc_label, arrange),
            _ => Outcome::NxDomain(self.soa(snapshot)),
        }
    }

    /// A proxy-mode alias: its VIP, as A (or AAAA).
    fn alias_answer(&self, snapshot: &Snapshot, qname: &Name, qtype: RecordType, vip: IpAddr) -> Outcome {
        let a = matches!(qtype, RecordType::A | RecordType::ANY);
        let aaaa = matches!(qtype, RecordType::AAAA | RecordType::ANY);
        match address_rdata(vip, a, aaaa) {
            Some(rdata) => Outcome::Answer {
                answers: vec![Record::from_rdata(qname.clone(), self.ttl, rdata)],
                additionals: vec![],
            },
            None => Outcome::NoData(self.soa(snapshot)),
        }
    }

    /// The service a label names, when the replica knows it.
    fn known(snapshot: &Snapshot, label: &str) -> Option<ServiceName> {
        ServiceName::new(label).ok().filter(|svc| snapshot.knows_service(svc))
    }

    /// `svc.<ns>`: the healthy instances; with `srv`, `_svc._tcp.<ns>`: their SRV
    /// records.
    fn service_answer(
        &self,
        snapshot: &Snapshot,
        qname: &Name,
        qtype: RecordType,
        label: &str,
        srv: bool,
        arrange: Arrange<'_>,
    ) -> Outcome {
        let service = if srv { label.strip_prefix('_') } else { Some(label) };
        let Some(svc) = service.and_then(|s| Self::known(snapshot, s)) else {
            return Outcome::NxDomain(self.soa(snapshot));
        };
        let qtype = match (srv, qtype) {
            (false, qtype) => qtype,
            (true, RecordType::SRV | RecordType::ANY) => RecordType::SRV,
            (true, _) => return Outcome::NoData(self.soa(snapshot)),
        };
        let instances = snapshot.lookup(&svc, &Query::default());
        self.records(snapshot, qname, &svc, instances, qtype, arrange)
    }

    /// `x.svc.<ns>`: instance `x` (healthy or not), else the healthy instances tagged
    /// `x`; NXDOMAIN when no instance, healthy or not, carries the tag.
    fn filtered_answer(
        &self,
        snapshot: &Snapshot,
        qname: &Name,
        qtype: RecordType,
        filter: &str,
        label: &str,
        arrange: Arrange<'_>,
    ) -> Outcome {
        let Some(svc) = Self::known(snapshot, label) else {
            return Outcome::NxDomain(self.soa(snapshot));
        };
        if let Some(inst) = InstanceId::new(filter).ok().and_then(|id| snapshot.instance(&svc, &id)) {
            return self.records(snapshot, qname, &svc, vec![inst], qtype, arrange);
        }
        let Ok(tag) = Tag::new(filter) else {
            return Outcome::NxDomain(self.soa(snapshot));
        };
        let all = Query { health: crate::registry::HealthFilter::All, tag: Some(tag.clone()), ..Default::default() };
        if snapshot.lookup(&svc, &all).is_empty() {
            return Outcome::NxDomain(self.soa(snapshot));
        }
        let healthy = snapshot.lookup(&svc, &Query { tag: Some(tag), ..Default::default() });
        self.records(snapshot, qname, &svc, healthy, qtype, arrange)
    }

    fn records(
        &self,
        snapshot: &Snapshot,
        qname: &Name,
        svc: &ServiceName,
        mut instances: Vec<Arc<Instance>>,
        qtype: RecordType,
        arrange: Arrange<'_>,
    ) -> Outcome {
        arrange(&mut instances);
        let owner = qname.clone();
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let want_a = matches!(qtype, RecordType::A | RecordType::ANY);
        let want_aaaa = matches!(qtype, RecordType::AAAA | RecordType::ANY);
        if want_a || want_aaaa {
            // Several instances may share an address (different ports): one record each.
            let mut seen = BTreeSet::new();
            for inst in &instances {
                if answers.len() >= self.max_answers {
                    break;
                }
                if !seen.insert(inst.address) {
                    continue;
                }
                if let Some(rdata) = address_rdata(inst.address, want_a, want_aaaa) {
                    answers.push(Record::from_rdata(owner.clone(), self.ttl, rdata));
                }
            }
        } else if qtype == RecordType::SRV {
            // Every healthy instance: SRV readers (Prometheus's dns_sd, HAProxy's
            // server-template) take the answer as the whole set, not a sample.
            for inst in instances.iter().take(MAX_SRV_ANSWERS) {
                let Some(target) = self.name(&format!("{}.{svc}", inst.id)) else {
                    continue;
                };
                let srv = SRV::new(1, inst.weight, inst.port, target.clone());
                answers.push(Record::from_rdata(owner.clone(), self.ttl, RData::SRV(srv)));
                if let Some(rdata) = address_rdata(inst.address, true, true) {
                    additionals.push(Record::from_rdata(target, self.ttl, rdata));
                }
            }
        }
        if answers.is_empty() {
            return Outcome::NoData(self.soa(snapshot));
        }
        Outcome::Answer { answers, additionals }
    }
}

/// Most SRV records in one answer. Every healthy instance up to this is answered (a UDP
/// reply that cannot hold them is truncated, and the client asks over TCP); the bound
/// keeps one answer's size and cost finite.
pub const MAX_SRV_ANSWERS: usize = 512;

fn address_rdata(ip: IpAddr, v4: bool, v6: bool) -> Option<RData> {
    match ip {
        IpAddr::V4(a) if v4 => Some(RData::A(A(a))),
        IpAddr::V6(a) if v6 => Some(RData::AAAA(AAAA(a))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::registry::Host;
    use murmur_protocol::{Health, NodeName};
    use rand::SeedableRng;

    use super::*;

    fn inst(svc: &str, id: &str, ip: &str, health: Health, tags: &[&str]) -> Arc<Instance> {
        Arc::new(Instance {
            service: ServiceName::new(svc).expect("valid"),
            id: InstanceId::new(id).expect("valid"),
            host: Arc::new(Host { node: NodeName::new("n").expect("valid"), zone: None, proxy: None, generation: 1 }),
            address: ip.parse().expect("valid"),
            port: 8080,
            sidecar: false,
            tags: tags.iter().map(|t| Tag::new(t).expect("valid")).collect(),
            attributes: BTreeMap::new(),
            weight: 3,
            health,
            health_since_unix_ms: 0,
            health_output: String::new(),
        })
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot { version: 7, ..Default::default() };
        let mut web: Vec<Arc<Instance>> =
            (0..12).map(|i| inst("web", &format!("w{i}"), &format!("10.0.0.{i}"), Health::Passing, &[])).collect();
        web.push(inst("web", "w-sick", "10.0.1.1", Health::Critical, &["canary"]));
        web.push(inst("web", "w-six", "fd00::1", Health::Passing, &["canary"]));
        s.services.insert(ServiceName::new("web").expect("valid"), Arc::from(web));
        s.services.insert(
            ServiceName::new("db").expect("valid"),
            Arc::from(vec![inst("db", "d1", "10.0.2.1", Health::Critical, &[])]),
        );
        s
    }

    fn ask(name: &str, qtype: RecordType) -> Outcome {
        let zone = Zone::new("myapp.local", 1, 8, 1000).expect("valid");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        zone.answer(&snapshot(), &Name::from_ascii(name).expect("valid"), qtype, &mut rng)
    }

    fn answers(o: &Outcome) -> &[Record] {
        match o {
            Outcome::Answer { answers, .. } => answers,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn a_records_are_healthy_capped_and_ttl_bound() {
        let o = ask("WEB.myapp.local.", RecordType::A);
        let a = answers(&o);
        assert_eq!(a.len(), 8);
        assert!(a.iter().all(|r| r.ttl == 1));
        assert!(
            !a.iter().any(|r| r.data == RData::A(A("10.0.1.1".parse().expect("ip")))),
            "critical instance answered"
        );
        assert_eq!(answers(&ask("web.myapp.local.", RecordType::AAAA)).len(), 1);
    }

    #[test]
    fn srv_answers_carry_targets_and_their_addresses() {
        for name in ["web.myapp.local.", "_web._tcp.myapp.local."] {
            match ask(name, RecordType::SRV) {
                Outcome::Answer { answers, additionals } => {
                    assert_eq!(answers.len(), 13, "every healthy instance, not the A/AAAA cap of 8");
                    assert_eq!(additionals.len(), 13);
                    let RData::SRV(srv) = &answers[0].data else { panic!("not SRV") };
                    assert_eq!(srv.port, 8080);
                    assert!(srv.target.to_ascii().ends_with(".web.myapp.local."));
                    assert_eq!(additionals.iter().filter(|r| r.name == srv.target).count(), 1);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn srv_answers_every_healthy_instance_up_to_the_cap() {
        let mut s = Snapshot::default();
        let many: Vec<Arc<Instance>> = (0..600)
            .map(|i| inst("big", &format!("b{i}"), &format!("10.1.{}.{}", i / 250, i % 250), Health::Passing, &[]))
            .collect();
        s.services.insert(ServiceName::new("big").expect("valid"), Arc::from(many));
        let zone = Zone::new("myapp.local", 1, 8, 0).expect("valid");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let name = Name::from_ascii("big.myapp.local.").expect("valid");
        assert_eq!(answers(&zone.answer(&s, &name, RecordType::SRV, &mut rng)).len(), MAX_SRV_ANSWERS);
        assert_eq!(answers(&zone.answer(&s, &name, RecordType::A, &mut rng)).len(), 8, "A keeps its cap");
    }

    #[test]
    fn tags_instances_and_misses() {
        // Only the healthy canary (IPv6) is answered; the critical one is filtered.
        assert!(matches!(ask("canary.web.myapp.local.", RecordType::A), Outcome::NoData(_)));
        assert_eq!(answers(&ask("canary.web.myapp.local.", RecordType::AAAA)).len(), 1);
        assert_eq!(answers(&ask("w3.web.myapp.local.", RecordType::A)).len(), 1);
        assert!(matches!(ask("nope.myapp.local.", RecordType::A), Outcome::NxDomain(_)));
        assert!(matches!(ask("nosuchtag.web.myapp.local.", RecordType::A), Outcome::NxDomain(_)));
        assert!(matches!(ask("a.b.c.myapp.local.", RecordType::A), Outcome::NxDomain(_)));
        assert!(matches!(ask("_nope._tcp.myapp.local.", RecordType::SRV), Outcome::NxDomain(_)));
        assert!(matches!(ask("_tcp.myapp.local.", RecordType::SRV), Outcome::NoData(_)), "empty non-terminal");
        // A known service with nothing healthy is NODATA, not NXDOMAIN.
        assert!(matches!(ask("db.myapp.local.", RecordType::A), Outcome::NoData(_)));
        assert!(matches!(ask("web.myapp.local.", RecordType::TXT), Outcome::NoData(_)));
        assert!(matches!(ask("myapp.local.", RecordType::SOA), Outcome::Answer { .. }));
        assert!(matches!(ask("example.com.", RecordType::A), Outcome::Forward));
        assert!(matches!(ask("xmyapp.local.", RecordType::A), Outcome::Forward));
    }

    #[test]
    fn aliases_answer_their_vip_bare_and_in_the_namespace() {
        let vip: IpAddr = "127.100.0.1".parse().expect("ip");
        let zone = Zone::new("myapp.local", 1, 8, 0).expect("valid").with_aliases(&[("web".into(), vip)]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for name in ["web.", "WEB.myapp.local."] {
            let o = zone.answer(&snapshot(), &Name::from_ascii(name).expect("valid"), RecordType::A, &mut rng);
            assert_eq!(answers(&o).len(), 1, "{name}");
            assert_eq!(answers(&o)[0].data, RData::A(A("127.100.0.1".parse().expect("ip"))));
        }
        let o = zone.answer(&snapshot(), &Name::from_ascii("web.").expect("valid"), RecordType::AAAA, &mut rng);
        assert!(matches!(o, Outcome::NoData(_)));
        // Other names are unchanged.
        let o = zone.answer(
            &snapshot(),
            &Name::from_ascii("canary.web.myapp.local.").expect("valid"),
            RecordType::AAAA,
            &mut rng,
        );
        assert_eq!(answers(&o).len(), 1);
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let Outcome::NxDomain(soa) = ask("nope.myapp.local.", RecordType::A) else { panic!("not NXDOMAIN") };
        let RData::SOA(s) = &soa.data else { panic!("not SOA") };
        assert_eq!(s.serial, 1007);
        assert_eq!(s.minimum, 1);
    }
}
