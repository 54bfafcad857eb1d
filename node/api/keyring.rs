//! `/v1/operator/keyring`: gossip key rotation at run time, in Consul's shape (`GET`
//! lists, `POST` installs, `PUT` makes primary, `DELETE` removes, the key in a JSON body
//! `{"Key": ...}`), so `consul keyring`'s HTTP calls work unchanged. `?force=true` skips
//! the checks on other members. Reads need the token too, when one is set: the answer
//! holds the keys.

use std::collections::BTreeMap;

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::consul_types::{KeyringJson, KeyringMemberJson, KeyringRequestJson};
use super::{status_text, ApiError, ApiState};
use crate::gossip::{key_base64, key_id_hex, KeyChange, Keyring, KeyringError, KeyringReport};

/// Where the keyring is served.
pub const PATH: &str = "/v1/operator/keyring";

/// The query of the changes.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ChangeParams {
    /// Make the change though some live member is not ready for it.
    #[serde(default)]
    force: bool,
}

fn keyring_error(e: KeyringError) -> ApiError {
    let status = match e {
        KeyringError::Insecure | KeyringError::NotEverywhere { .. } | KeyringError::StillPrimary { .. } => {
            StatusCode::CONFLICT
        }
        KeyringError::NotInstalled(_) => StatusCode::NOT_FOUND,
        KeyringError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError(status, e.to_string())
}

/// What `report` says, as Consul's list reads.
fn keyring_json(cluster: &str, report: &KeyringReport) -> KeyringJson {
    let mut keys = BTreeMap::new();
    let mut primary_keys = BTreeMap::new();
    for m in report.alive() {
        let Some(r) = &m.record else { continue };
        for (i, k) in r.keys.iter().enumerate() {
            *keys.entry(key_base64(k)).or_insert(0) += 1;
            if i == 0 {
                *primary_keys.entry(key_base64(k)).or_insert(0) += 1;
            }
        }
    }
    let members = report
        .members
        .iter()
        .map(|m| KeyringMemberJson {
            name: m.name.clone(),
            status: status_text(m.status).to_owned(),
            epoch: m.record.as_ref().map(|r| r.epoch),
            primary: m.record.as_ref().and_then(|r| r.keys.first()).map(key_id_hex),
            key_ids: m.record.as_ref().map(|r| r.keys.iter().map(key_id_hex).collect()).unwrap_or_default(),
        })
        .collect();
    KeyringJson {
        wan: false,
        datacenter: cluster.to_owned(),
        segment: String::new(),
        keys,
        primary_keys,
        num_nodes: report.alive().count(),
        messages: BTreeMap::new(),
        epoch: report.local.epoch,
        members,
    }
}

/// `GET`: every key, how many live members hold it and seal with it, and each member.
pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<KeyringJson>>, ApiError> {
    let report = state.keyring.report().await.map_err(keyring_error)?;
    Ok(Json(vec![keyring_json(&state.agent.cluster, &report)]))
}

async fn change(
    state: &ApiState,
    body: &KeyringRequestJson,
    force: bool,
    make: fn([u8; crate::gossip::KEY_LEN]) -> KeyChange,
) -> Result<Json<Vec<KeyringJson>>, ApiError> {
    let key = Keyring::decode_key("Key", &body.key).map_err(|e| keyring_error(KeyringError::BadKey(e)))?;
    state.keyring.change(make(key), force).await.map_err(keyring_error)?;
    list(State(state.clone())).await
}

/// `POST`: installs a key on every member.
pub(super) async fn install(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<ChangeParams>,
    Json(body): Json<KeyringRequestJson>,
) -> Result<Json<Vec<KeyringJson>>, ApiError> {
    change(&state, &body, q.force, KeyChange::Install).await
}

/// `PUT`: makes a key that every live member holds the primary.
pub(super) async fn make_primary(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<ChangeParams>,
    Json(body): Json<KeyringRequestJson>,
) -> Result<Json<Vec<KeyringJson>>, ApiError> {
    change(&state, &body, q.force, KeyChange::Use).await
}

/// `DELETE`: removes a key that no live member seals with.
pub(super) async fn remove(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<ChangeParams>,
    Json(body): Json<KeyringRequestJson>,
) -> Result<Json<Vec<KeyringJson>>, ApiError> {
    change(&state, &body, q.force, KeyChange::Remove).await
}
