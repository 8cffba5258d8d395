//! Atomic file replacement: a reader (or a crash) sees the old file or the new one,
//! never half of one. Used for snapshots, config documents, spool files and checkpoints.
//!
//! The recipe: write a temp file in the same directory (so the rename stays on one file
//! system), fsync it, rename it over the target, fsync the directory (so the rename
//! itself survives a power loss). The temp name is short and independent of the
//! target's, so a target name near the 255-byte limit still has room for it.

use rand::Rng;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How [`write_atomic_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the new file (e.g. `0o600` for keys and secrets); set when the
    /// temp file is created, so the content is never readable with wider permissions.
    /// `None`: the default for new files (0o666 less the umask).
    pub mode: Option<u32>,
    /// fsync the file and the directory. Off only where an older file after a power
    /// loss is harmless (a log checkpoint costs duplicates, not loss).
    pub durable: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            mode: None,
            durable: true,
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably. The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, &WriteOptions::default())
}

/// Replaces `path` with `bytes` atomically, as `options` say. The directory must exist.
/// On error the target is untouched and the temp file removed.
pub fn write_atomic_with(path: &Path, bytes: &[u8], options: &WriteOptions) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    }
    let (tmp, mut file) = create_temp(dir, options.mode)?;
    let result = (|| {
        file.write_all(bytes)?;
        if options.durable {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if options.durable {
        // Best effort: some file systems refuse to fsync a directory; the data itself
        // is already on disk.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `.outrider-<12 hex>.tmp`: 22 bytes whatever the target's name, created exclusively
/// so two writers in one directory never share a temp file.
fn create_temp(dir: &Path, mode: Option<u32>) -> io::Result<(PathBuf, File)> {
    let mut rng = rand::rng();
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".outrider-{:012x}.tmp", rng.random::<u64>() >> 16));
        let mut open = OpenOptions::new();
        open.write(true).create_new(true);
        if let Some(mode) = mode {
            open.mode(mode);
        }
        match open.open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_target_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snapshot.pb");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(dir.path()), vec!["snapshot.pb"]);
    }

    #[test]
    fn a_target_name_of_255_bytes_still_fits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n".repeat(255));
        write_atomic(&p, b"long").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"long");
    }

    #[test]
    fn mode_is_applied_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        let opts = WriteOptions {
            mode: Some(0o600),
            ..WriteOptions::default()
        };
        write_atomic_with(&p, b"secret", &opts).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails: the old "file" must stay.
        let p = dir.path().join("target");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"old").unwrap();
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["target"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent").join("file");
        assert_eq!(write_atomic(&p, b"x").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
