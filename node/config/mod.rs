//! Settings: the one table of them (flag, `MURMUR_*` variable, TOML key, default, help,
//! parser) and their merging, TOML file < environment < flags, into [`Settings`].
//! Each part builds and checks its own config from them (`gossip::Config::from_settings`
//! and the like), and the agent composes those into its `Config`.
//!
//! A leaf: it knows the service and upstream specs it parses, and no other part.

mod error;
mod file;
mod flags;
mod kinds;
mod settings;
pub mod spec;
pub mod upstream;

pub use error::{within, ConfigError};
pub use file::{from_file, from_toml};
pub use flags::AgentArgs;
pub use settings::{Env, Layer, ProcessEnv, Settings};
pub use spec::{CheckKind, CheckSpec, ServiceSpec};
pub use upstream::{OutlierConfig, Policy, Proto, UpstreamSpec};
