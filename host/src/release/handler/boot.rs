//! Booting a host's release handler: the root checked, what dead processes left under it
//! swept (library copies, record writes, interrupted builds), the permanent release read
//! (the first boot makes the oldest assembled one permanent), its plugins loaded into the
//! table and its tree started. Also reading any assembled release, each checked
//! ([`crate::trust::check_release`]) before it is read.

use super::*;

impl ReleaseHandler {
    pub(super) async fn boot_release(
        root: &Path,
        runtime: Runtime,
    ) -> Result<ReleaseHandler, ReleaseError> {
        crate::trust::check_root(root).map_err(ReleaseError::Untrusted)?;
        // Leftovers of processes that died: library copies, record writes, builds.
        let copy_directory_error = |source| ReleaseError::CopyDirectory {
            root: root.to_owned(),
            source,
        };
        let libraries = crate::ownership::private_directories(root, &["run", "libraries"])
            .map_err(copy_directory_error)?;
        crate::ownership::remove_abandoned(&libraries, |_| true);
        remove_interrupted_writes(root);
        remove_interrupted_builds(root);
        let mut record = read_record(root)?;
        let permanent = match &record.permanent {
            Some(version) => version.clone(),
            None => {
                let oldest = assembled_versions(root)
                    .into_iter()
                    .next()
                    .ok_or_else(|| ReleaseError::NothingToBoot(root.to_owned()))?;
                record.permanent = Some(oldest.clone());
                write_record(root, &record)?;
                oldest
            }
        };
        let release = Self::read_release(root, &permanent)?;
        let loader = Loader::in_process_directory(&libraries).map_err(copy_directory_error)?;
        let table = Arc::new(PluginTable::default());
        let workers = Workers::default();
        let mut loaded = Vec::new();
        for (name, plugin) in Self::load_plugins(&loader, &workers, &release, &HashMap::new())? {
            if let Some(library) = plugin.in_process() {
                loaded.push(Arc::downgrade(library));
            }
            lock(&table.current).insert(name, plugin);
        }
        table.set_limits(&release);
        settle_workers(&workers, &release);
        let manifest_path = release.directory.join("release.toml");
        let spec = supervisor_spec(&release.manifest.supervisor, ROOT_SUPERVISOR, &table).map_err(
            |message| {
                ReleaseError::Plan(PlanError::Invalid {
                    manifest: manifest_path.clone(),
                    field: "supervisor".to_owned(),
                    message,
                })
            },
        )?;
        let root_supervisor =
            start_supervisor(&runtime, spec)
                .await
                .map_err(|source| ReleaseError::Boot {
                    version: permanent.clone(),
                    source,
                })?;
        tracing::info!(release = %permanent, "release booted");
        let state = State {
            current: release,
            record,
            root_supervisor,
            loaded,
            history: Vec::new(),
        };
        Ok(ReleaseHandler {
            root: root.to_owned(),
            runtime,
            loader: Arc::new(loader),
            table,
            workers: Arc::new(workers),
            published: Mutex::new(Arc::new(Published::of(&state))),
            state: tokio::sync::Mutex::new(state),
            installing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(super) fn read_release(
        root: &Path,
        version: &Version,
    ) -> Result<AssembledRelease, ReleaseError> {
        let directory = releases_directory(root).join(version.to_string());
        // Checked before anything in it is read: not a link, nothing another user can write.
        let exists = crate::trust::check(&directory, crate::trust::Kind::Directory)
            .and_then(|exists| {
                if exists {
                    crate::trust::check_release(&directory)?;
                }
                Ok(exists)
            })
            .map_err(ReleaseError::Untrusted)?;
        if !exists || !directory.join("release.toml").is_file() {
            return Err(ReleaseError::UnknownRelease {
                version: version.clone(),
                root: root.to_owned(),
            });
        }
        Ok(read_assembled(root, version)?)
    }
}
