//! The lock a miss takes so that concurrent misses of one variant, generation and version share
//! one upstream fetch, its states named as pingora-cache's `lock.rs` names them. The first miss
//! leads the fill and holds a [`WritePermit`]; the others hold a [`ReadLock`] and read the
//! [`LockStatus`] the leader leaves. It knows nothing of how a fill fetches or stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::key::AgentKey;
use crate::error::GatewayError;
use crate::route::Family;
use crate::telemetry;
use crate::upstream::Buffered;

/// What one fill answers: the variant, and the generation and version it started under, so that a
/// read after an invalidation never joins a fill that began before it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct FillKey {
    pub(super) key: AgentKey,
    pub(super) family: Family,
    pub(super) query: Box<str>,
    pub(super) spelling: Option<Box<str>>,
    pub(super) generation: u64,
    pub(super) version: Option<Arc<str>>,
    pub(super) keep: bool,
}

/// Where a fill stands, as the requests waiting on it see it.
#[derive(Clone)]
pub(super) enum LockStatus {
    /// The leader's fetch is in flight.
    Waiting,
    /// Upstream answered and the answer may be shared: the waiters are served it as a hit would be.
    Done(Arc<Buffered>),
    /// The fetch failed: the waiters share the failure (each may still answer from a stale copy).
    TransientError(GatewayError),
    /// The answer is not for sharing (personal, or too large to keep): each waiter fetches its own.
    GiveUp,
    /// The leader went away without an answer (a panic, or the runtime ending): the waiters try
    /// again, one of them as the new leader.
    Dangling,
}

/// The fills in flight: what each leader will leave, and its span (none without tracing), which
/// the requests that join it are linked to.
type Table =
    HashMap<FillKey, (watch::Receiver<LockStatus>, tracing::Span), foldhash::fast::RandomState>;

#[derive(Default)]
pub(super) struct FillLocks {
    /// Shared with each [`WritePermit`], which takes its fill out of the table however it ends.
    table: Arc<Mutex<Table>>,
}

/// What taking a fill's lock gave this request.
pub(super) enum Locked {
    /// No fill of this key was in flight: this request leads one.
    Lead(WritePermit),
    /// Another request leads the fill: this one waits for it.
    Wait(ReadLock),
}

impl FillLocks {
    pub(super) fn lock(&self, key: FillKey) -> Locked {
        // Nothing panics while the table is held, and each step leaves it whole: a poisoned lock
        // is still a good table.
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((status, leading)) = table.get(&key) {
            telemetry::span::link(leading, &telemetry::span::current());
            return Locked::Wait(ReadLock {
                status: status.clone(),
            });
        }
        let (publish, status) = watch::channel(LockStatus::Waiting);
        table.insert(key.clone(), (status, telemetry::span::current()));
        Locked::Lead(WritePermit {
            table: Arc::clone(&self.table),
            key,
            publish,
        })
    }
}

/// The leader's hold on a fill. Released with a status; dropped without one, its waiters find it
/// [`LockStatus::Dangling`].
pub(super) struct WritePermit {
    table: Arc<Mutex<Table>>,
    key: FillKey,
    publish: watch::Sender<LockStatus>,
}

impl WritePermit {
    pub(super) fn release(self, status: LockStatus) {
        let _ = self.publish.send(status);
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// A waiter's hold on another request's fill.
pub(super) struct ReadLock {
    status: watch::Receiver<LockStatus>,
}

impl ReadLock {
    /// The status the leader left: never [`LockStatus::Waiting`].
    pub(super) async fn wait(mut self) -> LockStatus {
        match self
            .status
            .wait_for(|s| !matches!(s, LockStatus::Waiting))
            .await
        {
            Ok(status) => status.clone(),
            // The permit was dropped without a status.
            Err(_) => LockStatus::Dangling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn key() -> FillKey {
        FillKey {
            key: AgentKey::new(&Arc::from("acme"), "a1"),
            family: Family::Agents2,
            query: "".into(),
            spelling: None,
            generation: 0,
            version: None,
            keep: true,
        }
    }

    fn lead(locks: &FillLocks) -> WritePermit {
        match locks.lock(key()) {
            Locked::Lead(permit) => permit,
            Locked::Wait(_) => panic!("a fill was already in flight"),
        }
    }

    fn wait(locks: &FillLocks) -> ReadLock {
        match locks.lock(key()) {
            Locked::Wait(lock) => lock,
            Locked::Lead(_) => panic!("no fill in flight to wait on"),
        }
    }

    #[tokio::test]
    async fn waiters_read_what_the_leader_released() {
        let locks = FillLocks::default();
        let permit = lead(&locks);
        let (first, second) = (wait(&locks), wait(&locks));
        permit.release(LockStatus::Done(Arc::new(Buffered {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        })));
        for lock in [first, second] {
            assert!(matches!(lock.wait().await, LockStatus::Done(a) if a.body == "{}"));
        }
        // Released, the fill is out of the table: the next miss leads its own.
        lead(&locks);
    }

    #[tokio::test]
    async fn a_leader_gone_without_a_status_leaves_its_waiters_a_dangling_lock() {
        let locks = FillLocks::default();
        let permit = lead(&locks);
        let waiter = wait(&locks);
        drop(permit);
        assert!(matches!(waiter.wait().await, LockStatus::Dangling));
        lead(&locks);
    }
}
