//! How a record becomes a gossip value and back: one schema-version byte, then the
//! record in bincode 2 (fixed, little-endian, bounded), all wrapped in base64 because
//! chitchat values are strings.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::DecodeError;
use crate::limits::{MAX_RECORD_LEN, MAX_VALUE_LEN};
use crate::record::Record;
use crate::SCHEMA_VERSION;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_LEN>()
}

/// Encodes a record into a gossip value.
pub fn encode_value<T: Serialize>(record: &T) -> String {
    let mut bytes = vec![SCHEMA_VERSION];
    // Serialising our own well-formed records into a Vec cannot fail: the only failure
    // modes are the size limit (records are built within limits) and writer errors
    // (a Vec never fails).
    match bincode::serde::encode_to_vec(record, bincode_config()) {
        Ok(body) => bytes.extend_from_slice(&body),
        Err(_) => bytes.truncate(0),
    }
    STANDARD_NO_PAD.encode(bytes)
}

/// Decodes a gossip value into a record, checking every limit. Never panics.
pub fn decode_value<T: DeserializeOwned + Record>(value: &str) -> Result<T, DecodeError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(DecodeError::TooLong(value.len()));
    }
    let bytes = STANDARD_NO_PAD.decode(value).map_err(|_| DecodeError::NotBase64)?;
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != SCHEMA_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (record, used): (T, usize) =
        bincode::serde::decode_from_slice(body, bincode_config()).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    record.check()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::names::{AttrKey, InstanceId, NodeName, ServiceName, Tag};
    use crate::record::{Health, HealthRecord, InstanceRecord, NodeRecord};

    fn instance() -> InstanceRecord {
        let mut attributes = BTreeMap::new();
        attributes.insert(AttrKey::new("version").expect("valid"), "1.2.3".to_owned());
        InstanceRecord {
            service: ServiceName::new("orders").expect("valid"),
            instance: InstanceId::new("node-1-8080").expect("valid"),
            address: "10.1.2.3".parse().expect("valid"),
            port: 8080,
            sidecar: true,
            tags: vec![Tag::new("canary").expect("valid")],
            attributes,
            weight: 10,
        }
    }

    #[test]
    fn records_round_trip() {
        let inst = instance();
        assert_eq!(decode_value::<InstanceRecord>(&encode_value(&inst)), Ok(inst));
        let node = NodeRecord {
            name: NodeName::new("node-1").expect("valid"),
            zone: Some("eu-1a".into()),
            agent_version: "0.1.0".into(),
            advertise: "::1".parse().expect("valid"),
            proxy: Some("127.0.0.1:7947".parse().expect("valid")),
            started_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_value::<NodeRecord>(&encode_value(&node)), Ok(node));
        let health = HealthRecord::new(Health::Draining, 42, "bye");
        assert_eq!(decode_value::<HealthRecord>(&encode_value(&health)), Ok(health));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let good = encode_value(&instance());
        let cases = [
            String::new(),
            "!!!".to_owned(),
            "AA".to_owned(),
            STANDARD_NO_PAD.encode([9u8, 1, 2, 3]),
            STANDARD_NO_PAD.encode([SCHEMA_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff]),
            good[..good.len() / 2].to_owned(),
            format!("{good}AAAA"),
            "A".repeat(MAX_VALUE_LEN + 1),
        ];
        for case in &cases {
            assert!(decode_value::<InstanceRecord>(case).is_err(), "accepted {case:?}");
        }
        // A node record is not an instance record.
        assert!(decode_value::<HealthRecord>(&good).is_err());
    }

    #[test]
    fn invalid_names_inside_a_record_are_refused() {
        // Same shape as InstanceRecord but with a free-form service string.
        #[derive(serde::Serialize)]
        struct Raw {
            service: String,
            instance: String,
            address: std::net::IpAddr,
            port: u16,
            sidecar: bool,
            tags: Vec<String>,
            attributes: BTreeMap<String, String>,
            weight: u16,
        }
        let raw = Raw {
            service: "Not A Label".into(),
            instance: "x".into(),
            address: "127.0.0.1".parse().expect("valid"),
            port: 1,
            sidecar: false,
            tags: vec![],
            attributes: BTreeMap::new(),
            weight: 1,
        };
        assert!(matches!(decode_value::<InstanceRecord>(&encode_value(&raw)), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn mutated_values_never_panic() {
        let good = encode_value(&instance());
        let bytes = STANDARD_NO_PAD.decode(&good).expect("own encoding");
        // Flip every bit of every byte once: each result must decode or fail cleanly.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[i] ^= 1 << bit;
                let _ = decode_value::<InstanceRecord>(&STANDARD_NO_PAD.encode(&m));
            }
        }
    }
}
