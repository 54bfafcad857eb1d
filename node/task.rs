//! The tasks of one part, behind the part's handle: spawned under the part's own
//! cancellation token, watched for one that ends on its own, and stopped together by
//! the handle's `shutdown()`, which waits for them (as chitchat's `ChitchatHandle` and
//! hickory's `Server` do). A leaf every part may use.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::TaskError;

/// How long `shutdown` waits for tasks to end before it aborts them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A part's tasks. Each runs until the token is cancelled; one that ends before is
/// reported by [`Tasks::ended`].
pub struct Tasks {
    cancel: CancellationToken,
    set: JoinSet<(&'static str, Result<(), TaskError>)>,
}

impl Tasks {
    /// Tasks stopped by `cancel` (a child of the agent's token, so that the agent can
    /// stop every part at once, and the part alone can stop itself).
    pub fn new(cancel: CancellationToken) -> Tasks {
        Tasks { cancel, set: JoinSet::new() }
    }

    /// The token the part's tasks watch.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts `task`, named `name` in what [`Tasks::ended`] reports.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = Result<(), TaskError>> + Send + 'static) {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Resolves when a task ends without being asked to: its name and why (a task that
    /// returns `Ok` before the token is cancelled stopped unexpectedly). Never resolves
    /// while they all run, or when there are none.
    pub async fn ended(&mut self) -> (&'static str, TaskError) {
        loop {
            match self.set.join_next().await {
                None => std::future::pending().await,
                Some(Err(e)) => return ("a task", TaskError::Panicked(e)),
                Some(Ok((name, Err(e)))) => return (name, e),
                Some(Ok((name, Ok(())))) if !self.cancel.is_cancelled() => return (name, TaskError::Stopped),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Cancels the tasks and waits for them, aborting those still running after
    /// [`STOP_TIMEOUT`].
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
    }

    /// Stops the tasks at once, without waiting for them to finish what they do.
    pub async fn abort(&mut self) {
        self.cancel.cancel();
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_is_reported_and_shutdown_waits_for_the_rest() {
        let mut tasks = Tasks::new(CancellationToken::new());
        let token = tasks.token();
        tasks.spawn("runs", async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.spawn("quits", async { Ok(()) });
        let (name, why) = tasks.ended().await;
        assert_eq!(name, "quits");
        assert!(matches!(why, TaskError::Stopped), "{why}");
        let finished = tokio::time::timeout(Duration::from_secs(1), tasks.shutdown()).await;
        assert!(finished.is_ok(), "shutdown returns once the cancelled task ended");
        let idle = tokio::time::timeout(Duration::from_millis(50), tasks.ended()).await;
        assert!(idle.is_err(), "nothing more to report once all have stopped");
    }
}
