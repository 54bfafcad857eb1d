//! One QUIC connection per peer sidecar, shared by every proxied stream to it. A lost
//! connection is replaced on next use; connecting to one peer never blocks streams to
//! another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn::{ClientConfig, Connection, Endpoint};

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The connection attempt could not start (bad address, endpoint closed).
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    /// The handshake failed (peer down, wrong CA, refused).
    #[error("handshake with {0} failed: {1}")]
    Handshake(SocketAddr, String),
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// The pool.
pub struct Pool {
    endpoint: Endpoint,
    client: ClientConfig,
    // A std mutex only to find or add a slot; the per-peer async mutex is what is held
    // while connecting, so one slow peer never blocks the others.
    // Keyed by address and the node name verified in the handshake, so a connection
    // made to one node is never reused for another at the same address.
    slots: Mutex<HashMap<(SocketAddr, String), Slot>>,
}

impl Pool {
    /// A pool dialling from `endpoint` with `client`.
    pub fn new(endpoint: Endpoint, client: ClientConfig) -> Self {
        Self { endpoint, client, slots: Mutex::new(HashMap::new()) }
    }

    fn slot(&self, addr: SocketAddr, server_name: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry((addr, server_name.to_owned())).or_default().clone()
    }

    /// Forgets slots whose connection has closed.
    pub fn prune(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, s| {
            s.try_lock().map(|g| g.as_ref().is_some_and(|c| c.close_reason().is_none())).unwrap_or(true)
        });
    }

    /// The live connection to `addr`, connecting (as `server_name`) if there is none.
    pub async fn get(&self, addr: SocketAddr, server_name: &str) -> Result<Connection, PoolError> {
        let slot = self.slot(addr, server_name);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, server_name)
            .map_err(|e| PoolError::Connect(addr, e.to_string()))?;
        let conn = connecting.await.map_err(|e| PoolError::Handshake(addr, e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection to `addr` if it is `conn` (it failed).
    pub fn evict(&self, addr: SocketAddr, server_name: &str, conn: &Connection) {
        let slot = self.slot(addr, server_name);
        let Ok(mut guard) = slot.try_lock() else { return };
        if guard.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *guard = None;
        }
    }
}
