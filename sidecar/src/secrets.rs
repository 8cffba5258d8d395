//! The own service's secrets on disk: each written to `OUTRIDER_SECRETS_DIR/{name}`
//! (mode 0600, atomically, the directory 0700 when this creates it), before the
//! snapshot that carries them is acknowledged; files of secrets no longer there are
//! removed, only those listed in the manifest in the state dir (see
//! `configdocs::sync_dir`).
//!
//! A snapshot whose `secrets_withheld` says why it carries none (a plaintext stream
//! from another host, a control plane without the key) leaves the files as they are.
//! Values go nowhere else: not into `snapshot.pb` (`persist` strips them), not into
//! `SidecarState`, the log, `/config_dump` or health reports.

use crate::configdocs::{sync_dir, ManagedDir, ManagedFile, WriteError};
use outrider_proto::v1::Snapshot;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::{info, warn};

const MANIFEST: &str = "secrets-manifest.json";

const SECRETS: ManagedDir = ManagedDir {
    what: "secret",
    file_mode: Some(0o600),
    dir_mode: Some(0o700),
};

/// The secrets directory and its manifest.
pub struct SecretFiles {
    dir: PathBuf,
    manifest: PathBuf,
    /// The withholding reason last logged, so a stream's every snapshot does not
    /// repeat it.
    told: Mutex<Option<String>>,
}

impl SecretFiles {
    pub fn new(dir: PathBuf, state_dir: &Path) -> Self {
        Self {
            dir,
            manifest: state_dir.join(MANIFEST),
            told: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the directory hold `snapshot`'s secrets, unless it withholds them.
    pub async fn write(&self, snapshot: &Snapshot) -> Result<(), WriteError> {
        if !snapshot.secrets_withheld.is_empty() {
            let mut told = self.told.lock().unwrap();
            if told.as_deref() != Some(snapshot.secrets_withheld.as_str()) {
                warn!(reason = %snapshot.secrets_withheld, "the control plane sends no secrets; the secret files stay as they are");
                *told = Some(snapshot.secrets_withheld.clone());
            }
            return Ok(());
        }
        if self.told.lock().unwrap().take().is_some() {
            info!("the control plane sends secrets again");
        }
        let (dir, manifest, secrets) = (self.dir.clone(), self.manifest.clone(), snapshot.secrets.clone());
        tokio::task::spawn_blocking(move || {
            let files = secrets
                .iter()
                .map(|s| {
                    let file = ManagedFile {
                        content: &s.value,
                        revision: s.revision,
                    };
                    (s.name.as_str(), file)
                })
                .collect::<BTreeMap<_, _>>();
            let mut written = Vec::new();
            let result = sync_dir(&SECRETS, &dir, &manifest, &files, &mut written);
            if !written.is_empty() {
                info!(secrets = ?written, "wrote secrets");
            }
            result
        })
        .await
        .map_err(|e| WriteError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_proto::v1::Secret;
    use std::os::unix::fs::PermissionsExt;

    fn snapshot(secrets: &[(&str, &str, u64)]) -> Snapshot {
        Snapshot {
            secrets: secrets
                .iter()
                .map(|(name, value, revision)| Secret {
                    name: (*name).into(),
                    value: value.as_bytes().to_vec(),
                    revision: *revision,
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn secrets_are_private_files_that_follow_the_snapshot_unless_it_withholds_them() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("secrets");
        let files = SecretFiles::new(dir.clone(), state.path());
        // Not the sidecar's: a file someone else put there is never removed.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("foreign"), "x").unwrap();

        files
            .write(&snapshot(&[("db", "pw1", 1), ("api-key", "k", 2)]))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("db")).unwrap(), "pw1");
        assert_eq!((mode(&dir.join("db")), mode(&dir.join("api-key"))), (0o600, 0o600));

        files.write(&snapshot(&[("db", "pw2", 3)])).await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("db")).unwrap(), "pw2");
        assert!(!dir.join("api-key").exists());
        assert!(dir.join("foreign").exists());

        let withheld = Snapshot {
            secrets_withheld: "plaintext".into(),
            ..Snapshot::default()
        };
        files.write(&withheld).await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("db")).unwrap(), "pw2");

        files.write(&snapshot(&[])).await.unwrap();
        assert!(!dir.join("db").exists());
        assert!(dir.join("foreign").exists());
    }

    #[tokio::test]
    async fn a_new_secrets_dir_is_private_and_a_bad_name_writes_nothing() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("fresh").join("secrets");
        let files = SecretFiles::new(dir.clone(), state.path());
        files.write(&snapshot(&[("ok", "v", 1)])).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        let err = files
            .write(&snapshot(&[("ok", "v2", 2), ("../escape", "v", 2)]))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("secret \"../escape\""), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("ok")).unwrap(), "v");
    }
}
