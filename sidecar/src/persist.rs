//! Static stability: the last acknowledged snapshot (`snapshot.pb`, written before the
//! ACK) and the destinations the sidecar holds (`destinations.pb`, written before their
//! ACK, at most once a second), kept in the state directory so a sidecar that starts
//! while the control plane is away still limits and routes.
//!
//! Each file is a fixed header followed by the protobuf message, so that a torn,
//! truncated, bit-flipped or foreign file is refused instead of enforced:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "OUTRIDER"
//!      8     2  format version (1), little-endian
//!     10     1  kind: 1 snapshot, 2 destinations
//!     11     1  length of the owning service's name (n)
//!     12     4  length of the message in bytes, little-endian
//!     16     4  CRC-32 (IEEE) of bytes 0..16, the name and the message, little-endian
//!     20     n  the owning service's name (UTF-8)
//!   20+n     …  the message (protobuf)
//! ```
//!
//! [`decode`] is pure (bytes in, a value or the reason out), for fuzzing. A file it
//! refuses is renamed aside (`snapshot.pb.corrupt`) by [`load`], and the sidecar starts
//! empty and waits for the control plane. Files of the headerless format of earlier
//! sidecars are refused the same way: nothing in them can tell a flipped byte from a
//! real policy, and a first start without state only waits for the control plane.

use outrider_proto::v1::{DestinationTable, Snapshot};
use prost::Message;
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.pb";
const DESTINATIONS: &str = "destinations.pb";
/// Appended to the name of a file that was refused at start.
const ASIDE: &str = ".corrupt";

const MAGIC: &[u8; 8] = b"OUTRIDER";
const FORMAT_VERSION: u16 = 1;
/// Magic, version, kind, name length, message length, checksum.
pub const HEADER_LEN: usize = 20;

/// What a persisted file holds (byte 10 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot = 1,
    Destinations = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Snapshot),
            2 => Some(Kind::Destinations),
            _ => None,
        }
    }
}

/// A decoded state file: whose it is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    /// The service of the sidecar that wrote it.
    pub service: String,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Snapshot(Snapshot),
    Destinations(DestinationTable),
}

impl Content {
    fn kind(&self) -> Kind {
        match self {
            Content::Snapshot(_) => Kind::Snapshot,
            Content::Destinations(_) => Kind::Destinations,
        }
    }
}

/// Why bytes are not a state file this sidecar may use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("no Outrider header (not a state file, or one written by an older sidecar without checksums)")]
    NoHeader,
    #[error("format version {0}, this sidecar reads version {FORMAT_VERSION}")]
    Version(u16),
    #[error("unknown content kind {0}")]
    UnknownKind(u8),
    #[error("truncated or extended: the header says {expected} bytes, the file has {actual}")]
    Length { expected: usize, actual: usize },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged")]
    Checksum { stored: u32, computed: u32 },
    #[error("the service name in the header is not UTF-8")]
    ServiceName,
    #[error("the message does not decode: {0}")]
    Message(String),
    #[error("the header names service {header:?}, the snapshot inside {inside:?}")]
    ServiceMismatch { header: String, inside: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Refused at load; `aside` is where the file was moved (none if the move failed,
    /// in which case the next save replaces it).
    #[error("{path} refused: {reason}; {}", match aside { Some(a) => format!("moved aside to {a}"), None => "left in place".into() })]
    Refused {
        path: String,
        reason: String,
        aside: Option<String>,
    },
}

/// The header and `payload` of a state file owned by `service`.
fn frame(kind: Kind, service: &str, payload: &[u8]) -> Vec<u8> {
    // Service names are DNS labels (at most 63 bytes); anything longer is cut to what
    // the length byte can say, and then no longer matches at load: refused, not misread.
    let name = &service.as_bytes()[..service.len().min(usize::from(u8::MAX))];
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..16]);
    crc.update(name);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// The bytes of a state file holding `p`; [`decode`] gives `p` back.
pub fn encode(p: &Persisted) -> Vec<u8> {
    let payload = match &p.content {
        Content::Snapshot(s) => s.encode_to_vec(),
        Content::Destinations(d) => d.encode_to_vec(),
    };
    frame(p.content.kind(), &p.service, &payload)
}

/// Reads a state file: header, length and checksum first, the message only after both
/// held. Pure and total: any input gives a value or a reason, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Persisted, DecodeError> {
    if bytes.len() < HEADER_LEN {
        // A short file that does not even start like one is more likely foreign.
        if !MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Err(DecodeError::NoHeader);
        }
        return Err(DecodeError::Short { len: bytes.len() });
    }
    let (head, rest) = bytes.split_at(HEADER_LEN);
    if &head[..8] != MAGIC {
        return Err(DecodeError::NoHeader);
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = Kind::from_byte(head[10]).ok_or(DecodeError::UnknownKind(head[10]))?;
    let name_len = usize::from(head[11]);
    let payload_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
    let expected = name_len.saturating_add(payload_len);
    if rest.len() != expected {
        return Err(DecodeError::Length {
            expected,
            actual: rest.len(),
        });
    }
    let stored = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..16]);
    crc.update(rest);
    let computed = crc.finalize();
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let (name, payload) = rest.split_at(name_len);
    let service = std::str::from_utf8(name)
        .map_err(|_| DecodeError::ServiceName)?
        .to_owned();
    let bad = |e: prost::DecodeError| DecodeError::Message(e.to_string());
    let content = match kind {
        Kind::Snapshot => {
            let s = Snapshot::decode(payload).map_err(bad)?;
            if s.service != service {
                return Err(DecodeError::ServiceMismatch {
                    header: service,
                    inside: s.service,
                });
            }
            Content::Snapshot(s)
        }
        Kind::Destinations => Content::Destinations(DestinationTable::decode(payload).map_err(bad)?),
    };
    Ok(Persisted { service, content })
}

/// Writes atomically (`outrider_runtime::fs::write_atomic`: temp file, fsync, rename,
/// fsync of the directory): after a crash the file holds either the previous snapshot
/// or this one, never a torn mix. An error (a full or read-only disk) leaves the
/// previous file as it was.
/// Secrets never reach this file: they live in `OUTRIDER_SECRETS_DIR` (0600) only, and
/// those files are what survives a restart.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), PersistError> {
    let body = if snapshot.secrets.is_empty() {
        snapshot.encode_to_vec()
    } else {
        Snapshot {
            secrets: Vec::new(),
            ..snapshot.clone()
        }
        .encode_to_vec()
    };
    let bytes = frame(Kind::Snapshot, &snapshot.service, &body);
    write(dir, &dir.join(FILE), &bytes)
}

/// The persisted snapshot of `service`, if any. A file that fails its checks (damaged,
/// truncated, another format, another service's: a state directory reused by mistake
/// must not impose a foreign policy) is moved aside and reported.
pub fn load(dir: &Path, service: &str) -> Result<Option<Snapshot>, PersistError> {
    match read(&dir.join(FILE), service, Kind::Snapshot)? {
        Some(Content::Snapshot(s)) => Ok(Some(s)),
        _ => Ok(None),
    }
}

/// Writes the held destinations of `service`'s sidecar atomically, like [`save`].
pub fn save_destinations(dir: &Path, service: &str, table: &DestinationTable) -> Result<(), PersistError> {
    let bytes = frame(Kind::Destinations, service, &table.encode_to_vec());
    write(dir, &dir.join(DESTINATIONS), &bytes)
}

/// The persisted destinations, if any; refused files as in [`load`].
pub fn load_destinations(dir: &Path, service: &str) -> Result<Option<DestinationTable>, PersistError> {
    match read(&dir.join(DESTINATIONS), service, Kind::Destinations)? {
        Some(Content::Destinations(d)) => Ok(Some(d)),
        _ => Ok(None),
    }
}

fn write(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: target.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    outrider_runtime::fs::write_atomic(target, bytes).map_err(io)
}

/// The content of `p` if it is a `kind` file of `service`; `None` when there is no file.
fn read(p: &Path, service: &str, kind: Kind) -> Result<Option<Content>, PersistError> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: p.display().to_string(),
                source,
            })
        }
    };
    let reason = match decode(&bytes) {
        Ok(d) if d.content.kind() != kind => format!("it holds {:?}, not {kind:?}", d.content.kind()),
        Ok(d) if d.service != service => format!("it belongs to service {:?}, not {service:?}", d.service),
        Ok(d) => return Ok(Some(d.content)),
        Err(e) => e.to_string(),
    };
    let aside = aside_path(p);
    let moved = std::fs::rename(p, &aside).ok().map(|()| aside.display().to_string());
    Err(PersistError::Refused {
        path: p.display().to_string(),
        reason,
        aside: moved,
    })
}

fn aside_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(ASIDE);
    p.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_proto::v1::DestinationService;

    fn web(revision: u64) -> Snapshot {
        Snapshot {
            revision,
            nonce: format!("n{revision}"),
            service: "web".into(),
            rate_limit: r#"{"rules":[{"name":"all","requestsPerSecond":5}]}"#.into(),
            ..Default::default()
        }
    }

    fn snapshot_file(s: &Snapshot) -> Vec<u8> {
        encode(&Persisted {
            service: s.service.clone(),
            content: Content::Snapshot(s.clone()),
        })
    }

    #[test]
    fn a_saved_snapshot_loads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "web").unwrap().is_none());
        save(dir.path(), &web(7)).unwrap();
        assert_eq!(load(dir.path(), "web").unwrap(), Some(web(7)));
    }

    #[test]
    fn a_snapshot_is_saved_without_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let with = Snapshot {
            secrets: vec![outrider_proto::v1::Secret {
                name: "db".into(),
                value: b"hunter2-hunter2".to_vec(),
                revision: 7,
            }],
            ..web(7)
        };
        save(dir.path(), &with).unwrap();
        let raw = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(load(dir.path(), "web").unwrap(), Some(web(7)));
    }

    #[test]
    fn encode_and_decode_round_trip_both_kinds() {
        let table = DestinationTable {
            services: vec![DestinationService {
                service: "api".into(),
                ..Default::default()
            }],
            routing_revision: 4,
        };
        for p in [
            Persisted {
                service: "web".into(),
                content: Content::Snapshot(web(3)),
            },
            Persisted {
                service: "web".into(),
                content: Content::Destinations(table.clone()),
            },
        ] {
            assert_eq!(decode(&encode(&p)), Ok(p));
        }
        let dir = tempfile::tempdir().unwrap();
        save_destinations(dir.path(), "web", &table).unwrap();
        assert_eq!(load_destinations(dir.path(), "web").unwrap(), Some(table));
    }

    #[test]
    fn every_single_flipped_bit_is_refused() {
        let good = snapshot_file(&web(9));
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit} flipped went unnoticed");
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_the_policy_is_a_checksum_mismatch() {
        let mut bad = snapshot_file(&web(9));
        let last = bad.len() - 3;
        bad[last] ^= 0x20;
        assert!(
            matches!(decode(&bad), Err(DecodeError::Checksum { .. })),
            "{:?}",
            decode(&bad)
        );
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let good = snapshot_file(&web(9));
        for cut in [0, 1, 8, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 2, good.len() - 1] {
            let err = decode(&good[..cut]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Short { .. } | DecodeError::Length { .. }),
                "cut at {cut}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn a_headerless_file_of_the_previous_format_is_refused() {
        let legacy = web(9).encode_to_vec();
        assert_eq!(decode(&legacy), Err(DecodeError::NoHeader));
    }

    #[test]
    fn a_snapshot_of_another_service_is_refused_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            &Snapshot {
                service: "api".into(),
                ..web(2)
            },
        )
        .unwrap();
        let err = load(dir.path(), "web").unwrap_err();
        assert!(err.to_string().contains("belongs to service \"api\""), "{err}");
        assert!(!dir.path().join(FILE).exists());
        assert!(dir.path().join("snapshot.pb.corrupt").exists());
        assert!(load(dir.path(), "web").unwrap().is_none(), "refused once, then absent");
    }

    #[test]
    fn a_header_and_snapshot_that_disagree_on_the_service_are_refused() {
        let s = web(2);
        let bytes = frame(Kind::Snapshot, "api", &s.encode_to_vec());
        assert!(matches!(decode(&bytes), Err(DecodeError::ServiceMismatch { .. })));
    }

    #[test]
    fn destinations_saved_as_the_snapshot_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = frame(Kind::Destinations, "web", &DestinationTable::default().encode_to_vec());
        std::fs::write(dir.path().join(FILE), bytes).unwrap();
        let err = load(dir.path(), "web").unwrap_err();
        assert!(err.to_string().contains("holds Destinations"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_the_error_says_where() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &web(5)).unwrap();
        let p = dir.path().join(FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2 + HEADER_LEN / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let err = load(dir.path(), "web").unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("snapshot.pb.corrupt"),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.path().join("snapshot.pb.corrupt")).unwrap(), bytes);
        // The next save starts afresh beside it.
        save(dir.path(), &web(6)).unwrap();
        assert_eq!(load(dir.path(), "web").unwrap(), Some(web(6)));
    }

    #[test]
    fn decode_answers_random_and_mangled_bytes_without_panicking() {
        use rand::{Rng, SeedableRng};
        // Seeded, so a failure is the same on every run.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let good = snapshot_file(&web(9));
        for _ in 0..2000 {
            let len = rng.random_range(0..good.len() * 2);
            let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            assert!(decode(&noise).is_err());
            // A valid header over a random body, with a matching length and checksum:
            // only the protobuf decoder stands between it and the sidecar.
            let mut forged = frame(Kind::Snapshot, "web", &noise);
            let _ = decode(&forged);
            let at = rng.random_range(0..forged.len());
            forged[at] = rng.random();
            let _ = decode(&forged);
        }
    }

    #[test]
    fn a_failed_save_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &web(5)).unwrap();
        // The state dir's path is now a file: nothing can be created under it.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let err = save(&blocked, &web(6)).unwrap_err();
        assert!(matches!(err, PersistError::Io { .. }), "{err}");
        assert_eq!(load(dir.path(), "web").unwrap(), Some(web(5)));
    }
}
