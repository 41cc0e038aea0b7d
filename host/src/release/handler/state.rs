//! The handler's state and its locks: the running release, the record, the root
//! supervisor, the versions loaded and the history rollbacks pop; the copy read-only
//! requests read ([`Published`], swapped in when the state's lock is let go, so they never
//! wait for an install); the flag that refuses a second install at once.
//!
//! Invariant: every change of the state happens under [`StateGuard`], so what read-only
//! requests see is always the state after a whole operation, never one in the middle.
//! Publishing also tells [`crate::metrics`] the current and permanent release.

use super::*;

pub(super) struct State {
    pub(super) current: AssembledRelease,
    pub(super) record: Record,
    pub(super) root_supervisor: SupervisorRef,
    /// Every version loaded so far, to report which are still resident.
    pub(super) loaded: Vec<Weak<LoadedPlugin>>,
    /// The release that was current before each install of this host's life, most recent
    /// last: an install pushes, a rollback pops (so two rollbacks never go forward again).
    pub(super) history: Vec<Version>,
}

/// What read-only requests (`status`, `releases`) see: the state as of the last finished
/// operation, published when the state's lock is let go, so they never wait for an
/// install.
#[derive(Clone)]
pub(super) struct Published {
    pub(super) current: Version,
    pub(super) record: Record,
    pub(super) root_supervisor: SupervisorRef,
    pub(super) loaded: Vec<Weak<LoadedPlugin>>,
}

impl Published {
    pub(super) fn of(state: &State) -> Published {
        crate::metrics::host::release_published(
            &state.current.version.to_string(),
            state
                .record
                .permanent
                .as_ref()
                .map(Version::to_string)
                .as_deref(),
        );
        Published {
            current: state.current.version.clone(),
            record: state.record.clone(),
            root_supervisor: state.root_supervisor.clone(),
            loaded: state.loaded.clone(),
        }
    }
}

/// The state's lock; letting it go publishes the state for read-only requests.
pub(super) struct StateGuard<'a> {
    pub(super) state: tokio::sync::MutexGuard<'a, State>,
    pub(super) published: &'a Mutex<Arc<Published>>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        *lock(self.published) = Arc::new(Published::of(&self.state));
    }
}

/// Marks an install as running until dropped.
pub(super) struct Installing<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Installing<'a> {
    pub(super) fn begin(
        flag: &'a std::sync::atomic::AtomicBool,
    ) -> Result<Installing<'a>, ReleaseError> {
        if flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(ReleaseError::InstallInProgress);
        }
        Ok(Installing(flag))
    }
}

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// One worker per isolated plugin, by name.
pub(super) type Workers = Mutex<HashMap<String, crate::isolation::Worker>>;

impl ReleaseHandler {
    /// The state as of the last finished operation (never waits for an install).
    pub(super) fn published(&self) -> Arc<Published> {
        Arc::clone(&lock(&self.published))
    }

    /// Takes the state's lock; letting it go publishes the state.
    pub(super) async fn lock_state(&self) -> StateGuard<'_> {
        StateGuard {
            state: self.state.lock().await,
            published: &self.published,
        }
    }
}
