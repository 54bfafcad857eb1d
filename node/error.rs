//! How an error and its causes read on one line, where it has to become text: a log
//! field, a config error's message, an access-log `cause`. A leaf every part may use.

use std::error::Error;

/// Why a long-running task of a part ended before it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// It ended on its own, without an error (its input closed).
    #[error("stopped unexpectedly")]
    Stopped,
    /// It panicked: a bug; the join error carries the panic.
    #[error("panicked")]
    Panicked(#[source] tokio::task::JoinError),
    /// It failed; the part's own error is the source.
    #[error(transparent)]
    Failed(Box<dyn Error + Send + Sync>),
}

impl TaskError {
    /// A part's own error.
    pub fn failed(e: impl Error + Send + Sync + 'static) -> TaskError {
        TaskError::Failed(Box::new(e))
    }
}

/// `error`, then each of its sources, joined with ": ".
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_cause_is_named_in_order() {
        let io = std::io::Error::other("disk full");
        let outer = crate::gossip::StartError::KeyFile { path: "/k".into(), source: io };
        let text = super::chain(&outer);
        assert!(text.starts_with("--gossip-key-file: cannot write /k") && text.ends_with(": disk full"), "{text}");
    }
}
