//! Proxy mode: the sidecar data path.
pub mod balance;
pub mod ewma;
pub mod outlier;
pub mod retry;
