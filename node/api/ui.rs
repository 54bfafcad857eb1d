//! The live dashboard at `/ui`: one page, its script and its style, built into the
//! binary (no CDN, works offline), and `/v1/ui/state`, the one JSON document the page
//! polls every second: members, every instance with its health and check output, and
//! the upstreams with their endpoints. The page writes cluster data as text, never as
//! markup, and the strict content security policy allows no inline script.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::types::{InstanceJson, MemberJson, UpstreamJson};
use super::{instance_json, member_list, upstream_list, ApiState};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`.
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/app.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// One service with every instance of a live node, healthy or not.
#[derive(Debug, Serialize)]
pub(super) struct ServiceState {
    name: String,
    instances: Vec<InstanceJson>,
}

/// What the page shows.
#[derive(Debug, Serialize)]
pub(super) struct UiState {
    node: String,
    cluster: String,
    version: String,
    members: Vec<MemberJson>,
    services: Vec<ServiceState>,
    upstreams: Vec<UpstreamJson>,
}

/// `GET /v1/ui/state`.
pub(super) async fn state(State(state): State<ApiState>) -> Json<UiState> {
    let snap = state.registry.snapshot();
    let services = snap
        .services
        .iter()
        .map(|(name, list)| ServiceState {
            name: name.to_string(),
            instances: list.iter().map(|i| instance_json(i)).collect(),
        })
        .collect();
    Json(UiState {
        node: state.agent.name.clone(),
        cluster: state.agent.cluster.clone(),
        version: state.agent.version.clone(),
        members: member_list(&snap),
        services,
        upstreams: upstream_list(&state),
    })
}
