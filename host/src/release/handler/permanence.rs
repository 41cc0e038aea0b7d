//! The record's operations: making the current release permanent and removing an
//! assembled one, each under the state's lock, the record written atomically
//! ([`super::super::record`]) before the state takes it.

use super::*;

impl ReleaseHandler {
    pub(super) async fn record_permanent(&self, version: &Version) -> Result<(), ReleaseError> {
        let mut state = self.lock_state().await;
        if state.record.permanent.as_ref() == Some(version) {
            return Ok(());
        }
        if state.current.version != *version {
            let status = statuses(&self.root, &state.current.version, &state.record)
                .into_iter()
                .find(|release| release.version == *version)
                .map(|release| release.status)
                .ok_or_else(|| ReleaseError::UnknownRelease {
                    version: version.clone(),
                    root: self.root.clone(),
                })?;
            return Err(ReleaseError::BadStatus {
                version: version.clone(),
                status,
            });
        }
        let record = state.record.made_permanent(version);
        write_record(&self.root, &record)?;
        state.record = record;
        tracing::info!(release = %version, "release made permanent");
        Ok(())
    }

    pub(super) async fn remove_release(&self, version: &Version) -> Result<(), ReleaseError> {
        let mut state = self.lock_state().await;
        if state.record.permanent.as_ref() == Some(version) {
            return Err(ReleaseError::InUse {
                version: version.clone(),
                status: "permanent",
            });
        }
        if state.current.version == *version {
            return Err(ReleaseError::InUse {
                version: version.clone(),
                status: "current",
            });
        }
        let directory = releases_directory(&self.root).join(version.to_string());
        if !directory.is_dir() {
            return Err(ReleaseError::UnknownRelease {
                version: version.clone(),
                root: self.root.clone(),
            });
        }
        if state.record.old.contains(version) {
            let mut record = state.record.clone();
            record.old.remove(version);
            write_record(&self.root, &record)?;
            state.record = record;
        }
        std::fs::remove_dir_all(&directory).map_err(|source| ReleaseError::Write {
            path: directory,
            source,
        })?;
        Ok(())
    }
}
