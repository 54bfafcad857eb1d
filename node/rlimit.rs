//! The open-files limit. A sidecar holds two descriptors per proxied connection (and
//! more per UDP flow), so the soft limit most systems start a process with, 1,024, is
//! reached at about 500 connections. The agent raises its soft limit to the hard limit
//! at start, as Go's runtime, nginx's `worker_rlimit_nofile` and Envoy's deployment
//! guides do, and reports both in `/v1/agent/self`.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use serde::{Deserialize, Serialize};

/// The open-files limit of this process, as `getrlimit` reports it (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFiles {
    /// The soft limit: what the process is held to.
    pub soft: Option<u64>,
    /// The hard limit: what the soft one may be raised to.
    pub hard: Option<u64>,
}

/// The limit as it stands.
pub fn open_files() -> OpenFiles {
    let l = getrlimit(Resource::Nofile);
    OpenFiles { soft: l.current, hard: l.maximum }
}

/// Raises the soft limit to the hard one. Returns the limit after the attempt, and the
/// error when the kernel refused (the limit is then unchanged, and the agent runs on).
pub fn raise_open_files() -> (OpenFiles, Option<std::io::Error>) {
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return (OpenFiles { soft: before.current, hard: before.maximum }, None);
    }
    let want = Rlimit { current: before.maximum, maximum: before.maximum };
    let err = setrlimit(Resource::Nofile, want).err().map(std::io::Error::from);
    (open_files(), err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // A test process may share its limit with others; it only ever goes up.
        let before = open_files();
        let (after, err) = raise_open_files();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(after.soft, after.hard, "before {before:?}, after {after:?}");
        assert_eq!(after.hard, before.hard);
    }
}
