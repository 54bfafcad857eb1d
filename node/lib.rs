//! murmur: a service-discovery mesh with no central server.
//!
//! Every task runs one agent. Agents find each other by gossip ([`gossip`]: chitchat over
//! a UDP transport sealed with the cluster keyring), each keeps a full replica of the
//! registry ([`registry`]: one immutable snapshot swapped on every change), and apps look
//! names up through a DNS stub on localhost ([`dns`]). Health checks ([`health`]) and the
//! admin API ([`api`]) write only through one narrow [`local::Publisher`].
//!
//! Data flows one way: [`config`] → [`gossip`] → [`registry`] → readers ([`dns`],
//! [`api`]). [`config`] reads the settings (one table: file < env < flags); each part
//! builds and checks its own config from them and runs its tasks behind a handle
//! ([`task::Tasks`]). [`agent`] is the only module that knows every part; it composes
//! the configs and the handles, and owns start-up and the shutdown order. [`metrics`]
//! is a leaf everyone writes and the API reads; [`error`] and [`task`] are leaves too.
//!
//! Embedding: build a [`Config`], start an [`agent::Agent`], read its
//! [`registry::RegistryReader`], register through its [`local::Publisher`]; see
//! `examples/embedded.rs`.

#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dns;
pub mod error;
pub mod gossip;
pub mod health;
pub mod local;
pub mod metrics;
pub mod registry;
pub mod rlimit;
pub mod shared;
pub mod simulate;
pub mod task;

pub use agent::{Agent, Config, RunError, StartError};
pub mod proxy;
pub mod tls;

#[cfg(test)]
mod boundaries;
