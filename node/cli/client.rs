//! A small client of the admin API over hyper (HTTP/1.1 on one connection per call).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use thiserror::Error;
use tokio::net::TcpStream;

/// Time a CLI call may take, beyond the wait a blocking query asks for.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the agent failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No agent answers at that address.
    #[error("cannot reach the agent API at {0}: {1} (is `murmur agent` running? set --api)")]
    Connect(SocketAddr, String),
    /// The agent answered with an error status.
    #[error("the agent refused: HTTP {0}: {1}")]
    Status(u16, String),
    /// The reply was not what the API returns.
    #[error("unexpected reply from the agent: {0}")]
    BadReply(String),
}

/// The client of one agent.
pub struct ApiClient {
    addr: SocketAddr,
    token: Option<String>,
}

/// A reply's body and its `X-Consul-Index`, when it has one.
pub struct Reply {
    /// The body as the agent sent it (JSON for every `/v1` path).
    pub body: String,
    /// The index a blocking query waits past.
    pub index: Option<u64>,
}

impl ApiClient {
    /// A client of the agent at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, token: None }
    }

    /// Sends `token` (`Authorization: Bearer`) with every call.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// `GET path`, returning the body of a 2xx reply.
    pub async fn get(&self, path: &str) -> Result<String, ClientError> {
        Ok(self.call("GET", path, None, Duration::ZERO).await?.body)
    }

    /// `GET path` of a blocking query that may take `wait` to answer.
    pub async fn get_blocking(&self, path: &str, wait: Duration) -> Result<Reply, ClientError> {
        self.call("GET", path, None, wait).await
    }

    /// `method path` with a JSON body.
    pub async fn send(&self, method: &str, path: &str, json: String) -> Result<String, ClientError> {
        Ok(self.call(method, path, Some(json), Duration::ZERO).await?.body)
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, json: String) -> Result<String, ClientError> {
        self.send("PUT", path, json).await
    }

    /// `DELETE path`; the body of the reply.
    pub async fn delete(&self, path: &str) -> Result<String, ClientError> {
        Ok(self.call("DELETE", path, None, Duration::ZERO).await?.body)
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>, wait: Duration) -> Result<Reply, ClientError> {
        tokio::time::timeout(CALL_TIMEOUT + wait, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Connect(self.addr, "timed out".into()))?
    }

    async fn call_inner(&self, method: &str, path: &str, body: Option<String>) -> Result<Reply, ClientError> {
        let conn_err = |e: &dyn std::fmt::Display| ClientError::Connect(self.addr, e.to_string());
        let stream = TcpStream::connect(self.addr).await.map_err(|e| conn_err(&e))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| conn_err(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadReply(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| conn_err(&e))?;
        let status = resp.status();
        let index = resp.headers().get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let bytes = resp.into_body().collect().await.map_err(|e| conn_err(&e))?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            let msg = serde_json::from_str::<crate::api::types::ErrorJson>(&text).map(|e| e.error).unwrap_or(text);
            return Err(ClientError::Status(status.as_u16(), msg));
        }
        Ok(Reply { body: text, index })
    }
}
