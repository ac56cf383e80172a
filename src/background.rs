//! One home for work that outlives the request that started it: a write that runs to its end after
//! its client left, a cache fill other requests wait on, a write's second invalidation. The
//! gateway holds one, and shutdown ends it: what may be cut short is, and everything is waited for.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

/// Spawned work the process keeps track of. Cloning it is cheap (two `Arc`s) and every clone is
/// the same home.
/// How long shutdown waits, past the grace period, for owed work still running: a write's second
/// invalidation takes about a second at most (`cluster::WRITE_END_PATIENCE` and two Redis
/// deadlines); a cache fill nobody waits for any more (their connections closed with the grace) is
/// not worth holding the process for up to `upstream.timeout_ms`. What is left is dropped: in
/// cluster mode a write's in-progress mark expires on its own, and one process's cache dies with it.
const OWED_WORK_AT_MOST: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Background {
    tasks: TaskTracker,
    /// The work cut short at shutdown, also tracked by `tasks`. A `JoinSet` to abort rather than a
    /// `CancellationToken` every task would watch: measured with callgrind, watching the token
    /// more than doubled the instructions of a cache miss, whose fill runs here.
    unattended: Arc<Mutex<JoinSet<()>>>,
}

impl Background {
    /// Runs work that must end whether or not its client stays, but not past the shutdown grace
    /// period: there it is dropped where it stands (a write still waiting for upstream writes its
    /// audit line as it is dropped).
    pub fn spawn_unattended<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut unattended = self.unattended.lock().unwrap_or_else(|e| e.into_inner());
        while unattended.try_join_next().is_some() {}
        unattended.spawn(self.tasks.track_future(work));
    }

    /// Runs work that others wait on or are owed, to its end, which shutdown waits for: each is
    /// bounded by its own timeouts (a cache fill by `upstream.timeout_ms`, a write's second
    /// invalidation by the cluster's deadlines).
    pub fn spawn_owed<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// At shutdown, once the grace period is over: cuts the unattended work short and waits until
    /// every task has ended, those that cutting short set off included (a dropped write spawns its
    /// second invalidation while it is still tracked, so the wait covers it), for at most
    /// [`OWED_WORK_AT_MOST`] more.
    pub async fn finish(&self) {
        self.finish_within(OWED_WORK_AT_MOST).await;
    }

    async fn finish_within(&self, at_most: Duration) {
        let mut unattended =
            std::mem::take(&mut *self.unattended.lock().unwrap_or_else(|e| e.into_inner()));
        unattended.abort_all();
        while unattended.join_next().await.is_some() {}
        self.tasks.close();
        if tokio::time::timeout(at_most, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "shutdown: background work still running past the grace period was dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Sets its flag when dropped, from a task of its own: what a write's pending invalidation does.
    struct SpawnsOnDrop {
        background: Background,
        done: Arc<AtomicBool>,
    }

    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            let done = Arc::clone(&self.done);
            self.background.spawn_owed(async move {
                tokio::task::yield_now().await;
                done.store(true, Ordering::SeqCst);
            });
        }
    }

    #[tokio::test]
    async fn finish_cuts_unattended_work_short_and_waits_for_what_it_set_off() {
        let background = Background::default();
        let done = Arc::new(AtomicBool::new(false));
        let pending = SpawnsOnDrop {
            background: background.clone(),
            done: Arc::clone(&done),
        };
        // Never ends on its own: only cutting it short drops `pending`.
        background.spawn_unattended(async move {
            let _pending = pending;
            std::future::pending::<()>().await;
        });
        background.finish().await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn finish_waits_for_owed_work() {
        let background = Background::default();
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        background.spawn_owed(async move {
            // Still running when `finish` is called, on this one-thread runtime.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            flag.store(true, Ordering::SeqCst);
        });
        background.finish().await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn finish_does_not_wait_for_owed_work_past_its_bound() {
        let background = Background::default();
        background.spawn_owed(std::future::pending::<()>());
        // Returns, and not before the bound: the work never ends on its own.
        let finished = tokio::time::timeout(
            Duration::from_secs(30),
            background.finish_within(Duration::from_millis(50)),
        )
        .await;
        assert!(finished.is_ok(), "finish waited for work that never ends");
    }
}
