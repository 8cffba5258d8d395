//! Static stability: the last acknowledged snapshot (`snapshot.pb`, written before the
//! ACK) and the destinations the sidecar holds (`destinations.pb`, written at most once
//! a second), kept in the state directory so a sidecar that starts while the control
//! plane is away still limits and routes.

use outrider_proto::v1::{DestinationTable, Snapshot};
use prost::Message;
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.pb";
const DESTINATIONS: &str = "destinations.pb";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("persisted state {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Writes atomically (`outrider_runtime::fs::write_atomic`: temp file, fsync, rename,
/// fsync of the directory): after a crash the file holds either the previous snapshot
/// or this one, never a torn mix.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), PersistError> {
    write(dir, &path(dir), snapshot)
}

/// The persisted snapshot, if any. One for another service is refused: a state
/// directory reused by mistake must not impose a foreign policy.
pub fn load(dir: &Path, service: &str) -> Result<Option<Snapshot>, PersistError> {
    let p = path(dir);
    let Some(snap) = read::<Snapshot>(&p)? else {
        return Ok(None);
    };
    if snap.service != service {
        return Err(PersistError::Corrupt {
            path: p.display().to_string(),
            reason: format!("it belongs to service {:?}, not {service:?}", snap.service),
        });
    }
    Ok(Some(snap))
}

/// Writes the held destinations atomically, like [`save`].
pub fn save_destinations(dir: &Path, table: &DestinationTable) -> Result<(), PersistError> {
    write(dir, &dir.join(DESTINATIONS), table)
}

/// The persisted destinations, if any.
pub fn load_destinations(dir: &Path) -> Result<Option<DestinationTable>, PersistError> {
    read(&dir.join(DESTINATIONS))
}

fn write(dir: &Path, target: &Path, message: &impl Message) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: target.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    outrider_runtime::fs::write_atomic(target, &message.encode_to_vec()).map_err(io)
}

/// The message in `p`; `None` when there is no such file.
fn read<M: Message + Default>(p: &Path) -> Result<Option<M>, PersistError> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                path: p.display().to_string(),
                source,
            })
        }
    };
    M::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| PersistError::Corrupt {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_snapshot_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "web").unwrap().is_none());
        let s = Snapshot {
            revision: 7,
            service: "web".into(),
            rate_limit: "{}".into(),
            ..Default::default()
        };
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path(), "web").unwrap(), Some(s));
    }

    #[test]
    fn snapshot_of_another_service_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            &Snapshot {
                service: "api".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(load(dir.path(), "web"), Err(PersistError::Corrupt { .. })));
    }

    #[test]
    fn garbage_is_reported_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"\xff\xff\xff not protobuf").unwrap();
        assert!(matches!(load(dir.path(), "web"), Err(PersistError::Corrupt { .. })));
    }
}
