//! A small client of the admin API over hyper (HTTP/1.1 on one connection per call).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use thiserror::Error;
use tokio::net::TcpStream;

/// Time a CLI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the agent failed.
#[derive(Debug, Error)]
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
}

impl ApiClient {
    /// A client of the agent at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// `GET path`, returning the body of a 2xx reply.
    pub async fn get(&self, path: &str) -> Result<String, ClientError> {
        self.call("GET", path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, json: String) -> Result<String, ClientError> {
        self.call("PUT", path, Some(json)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<String, ClientError> {
        self.call("DELETE", path, None).await
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<String, ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Connect(self.addr, "timed out".into()))?
    }

    async fn call_inner(&self, method: &str, path: &str, body: Option<String>) -> Result<String, ClientError> {
        let conn_err = |e: &dyn std::fmt::Display| ClientError::Connect(self.addr, e.to_string());
        let stream = TcpStream::connect(self.addr).await.map_err(|e| conn_err(&e))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| conn_err(&e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadReply(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| conn_err(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| conn_err(&e))?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            let msg = serde_json::from_str::<crate::api::types::ErrorJson>(&text).map(|e| e.error).unwrap_or(text);
            return Err(ClientError::Status(status.as_u16(), msg));
        }
        Ok(text)
    }
}
