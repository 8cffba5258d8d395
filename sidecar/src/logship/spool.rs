//! The bounded on-disk buffer used while the sink is failing: a FIFO of batch files
//! in `OUTRIDER_STATE_DIR/log-spool/`, each written atomically (`outrider_runtime::fs`), each
//! carrying the file positions it covers so that delivering it later can advance the
//! checkpoint. It survives restarts and is delivered first after one.

use super::sink::Record;
use super::tail::Position;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// A batch on its way to the sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Checkpoint to write once the sink accepted this batch (and all before it).
    pub positions: Vec<Position>,
}

impl Batch {
    pub fn bytes(&self) -> u64 {
        self.records.iter().map(Record::size).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("log spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log spool {0}: corrupt batch file")]
    Corrupt(PathBuf),
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// (sequence number, file size), oldest first.
    queue: VecDeque<(u64, u64)>,
    total: u64,
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the spool and lists the batches a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut found: Vec<(u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".batch").and_then(|s| s.parse::<u64>().ok()) {
                found.push((seq, entry.metadata().map_or(0, |m| m.len())));
            } else if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        found.sort_unstable();
        let total = found.iter().map(|(_, s)| s).sum();
        let next_seq = found.last().map_or(0, |(s, _)| s + 1);
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            queue: found.into(),
            total,
            next_seq,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether `bytes` more fit. An empty spool always takes one batch, so a batch
    /// larger than the bound is still buffered rather than lost.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.queue.is_empty() || self.total + bytes <= self.max_bytes
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.batch"))
    }

    pub fn push(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let path = self.path(self.next_seq);
        let size = write_batch(&path, batch)?;
        self.queue.push_back((self.next_seq, size));
        self.total += size;
        self.next_seq += 1;
        Ok(())
    }

    /// Replaces the oldest batch with what is left of it to deliver (the sink took
    /// the rest), so that a retry never resends what was accepted.
    pub fn replace_front(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let Some((seq, old)) = self.queue.front().copied() else {
            return Ok(());
        };
        let size = write_batch(&self.path(seq), batch)?;
        self.queue[0].1 = size;
        self.total = self.total - old + size;
        Ok(())
    }

    /// The oldest batch, without removing it.
    pub fn front(&self) -> Result<Option<Batch>, SpoolError> {
        let Some((seq, _)) = self.queue.front() else {
            return Ok(None);
        };
        let path = self.path(*seq);
        let data = std::fs::read(&path).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        decode(&data).map(Some).ok_or(SpoolError::Corrupt(path))
    }

    /// Removes the oldest batch (delivered, or unreadable).
    pub fn pop_front(&mut self) {
        if let Some((seq, size)) = self.queue.pop_front() {
            let _ = std::fs::remove_file(self.path(seq));
            self.total -= size;
        }
    }
}

/// Writes `batch` to `path` atomically; returns the file's size.
fn write_batch(path: &Path, batch: &Batch) -> Result<u64, SpoolError> {
    let io = |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    };
    let mut data = serde_json::to_vec(&batch.positions).unwrap_or_else(|_| b"[]".to_vec());
    data.push(b'\n');
    for r in &batch.records {
        // Serialized JSON never holds a raw tab or newline, so both are safe
        // separators.
        data.extend_from_slice(r.unix_ms.to_string().as_bytes());
        data.push(b'\t');
        data.extend_from_slice(r.json.as_bytes());
        data.push(b'\n');
    }
    // Durable: a spooled batch may hold access records that exist nowhere else.
    outrider_runtime::fs::write_atomic(path, &data).map_err(io)?;
    Ok(data.len() as u64)
}

/// Reads one batch file's bytes, as [`Spool::push`] wrote them: a JSON line of
/// positions, then one `unix_ms<TAB>json` line per record. `None` for anything else
/// (a torn or foreign file): the caller drops it rather than shipping garbage.
/// Pure, so that the reader can be tested and fuzzed without a disk.
pub fn decode(data: &[u8]) -> Option<Batch> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines();
    let positions = serde_json::from_str(lines.next()?).ok()?;
    let records = lines
        .map(|line| {
            let (ts, json) = line.split_once('\t')?;
            Some(Record {
                unix_ms: ts.parse().ok()?,
                json: json.to_owned(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Batch { records, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u64) -> Batch {
        Batch {
            records: (0..n)
                .map(|i| Record {
                    unix_ms: i,
                    json: format!("{{\"n\":{i},\"t\":\"a\\tb\"}}"),
                })
                .collect(),
            positions: Vec::new(),
        }
    }

    #[test]
    fn batches_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&batch(2)).unwrap();
        s.push(&batch(3)).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.front().unwrap().unwrap(), batch(2));
        s.pop_front();
        assert_eq!(s.front().unwrap().unwrap(), batch(3));
        s.pop_front();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn replacing_the_front_keeps_only_what_is_left_and_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&batch(5)).unwrap();
        s.push(&batch(2)).unwrap();
        let before = s.bytes();
        s.replace_front(&batch(1)).unwrap();
        assert!(s.bytes() < before);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.front().unwrap().unwrap(), batch(1));
        assert_eq!(
            s.bytes(),
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
        );
    }

    #[test]
    fn torn_or_foreign_batch_files_decode_to_nothing() {
        assert_eq!(
            decode(b"[]\n1\t{}\n"),
            Some(Batch {
                records: vec![Record {
                    unix_ms: 1,
                    json: "{}".into()
                }],
                positions: Vec::new()
            })
        );
        for bad in [
            &b""[..],
            b"not json\n",
            b"[]\n1 no tab\n",
            b"[]\nx\t{}\n",
            b"[]\n1\t\xff\n",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_bound_refuses_more_once_reached() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 100).unwrap();
        assert!(s.has_room(1000), "an empty spool takes one batch of any size");
        s.push(&batch(10)).unwrap();
        assert!(!s.has_room(10));
    }
}
