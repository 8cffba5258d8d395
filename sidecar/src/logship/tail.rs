//! Following the app's log files: glob matching (new files are picked up on the next
//! scan), reading complete lines, multiline grouping, and rotation.
//!
//! Files are tracked by (device, inode), not by name. Rename rotation: the old inode
//! keeps being read through its open handle until its end, while the new file under
//! the old name is a new inode and is read from its start. Copytruncate: the size
//! falling below the read offset, or the first bytes changing (truncated and already
//! rewritten past the old offset), resets the offset to 0. A position is the end of
//! the last record handed out, so a half-written line or an unfinished multiline
//! record is re-read after a restart rather than lost.
//!
//! Confinement: a file a glob matches is followed only if its canonical path passes
//! [`Confinement::may_read`], and it is opened by that canonical path and checked to be
//! the same inode, so a symlink in the app's volume cannot point the sidecar elsewhere.
//!
//! The consumer may refuse a record (its batch is full): the file then rewinds to the
//! end of the last record taken, so what a batch covers always ends on a record.

use super::confine::{Confinement, Unreadable};
use super::parse::Parser;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Bytes read from one file per [`Tailer::read`] call, so that one busy file cannot
/// starve the others (or the batch deadline).
const READ_CHUNK: usize = 256 * 1024;
/// A "line" longer than this is cut and shipped in pieces rather than buffered
/// without bound.
pub const MAX_LINE: usize = 1024 * 1024;
/// How many leading bytes identify a file's contents across restarts and truncation.
const FINGERPRINT_BYTES: usize = 1024;
/// An unfinished multiline record is shipped once no continuation came for this long.
const MULTILINE_TIMEOUT: Duration = Duration::from_millis(500);
/// How many refused paths are remembered (each is warned about once).
const MAX_WARNED: usize = 1024;
/// A file that was renamed away (or deleted) is closed after this long at its end.
const GONE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// Where reading a file resumes: persisted in the checkpoint once the sink has
/// accepted everything before `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub key: FileKey,
    pub path: String,
    pub offset: u64,
    /// Hash and length of the file's first bytes when it was read; guards against
    /// inode reuse and truncation while the sidecar was down.
    pub fingerprint: Option<(u64, u32)>,
}

struct Tracked {
    key: FileKey,
    path: PathBuf,
    source: usize,
    multiline: Option<regex::Regex>,
    file: File,
    /// Next byte to read.
    read_offset: u64,
    /// End of the last record handed out.
    committed: u64,
    /// Bytes of a line whose newline has not arrived.
    partial: Vec<u8>,
    /// A multiline record being assembled: its text and end offset.
    pending: Option<(String, u64)>,
    last_line_at: Instant,
    fingerprint: Option<(u64, u32)>,
    /// The path no longer names this inode (rotated or deleted); since when at EOF.
    gone: bool,
    eof_since: Option<Instant>,
}

/// One record handed out by the tailer.
pub struct Line<'a> {
    pub source: usize,
    pub path: &'a str,
    pub text: &'a str,
}

/// What the consumer says to each record: taken, or not now (its batch is full).
pub type Flow = ControlFlow<()>;

pub struct Tailer {
    sources: Vec<(String, Parser)>,
    files: HashMap<FileKey, Tracked>,
    resume: HashMap<FileKey, Position>,
    confinement: Arc<Confinement>,
    /// Paths refused by the confinement, warned about once each.
    refused: HashSet<PathBuf>,
    /// Which file reads first in the next [`Tailer::read`], so that a file with a
    /// backlog that fills every batch cannot starve the others.
    turn: usize,
}

impl Tailer {
    /// `sources`: each `appLogs[]` glob with its parser; `resume`: the checkpoint;
    /// `confinement`: what may be read at all.
    pub fn new(sources: Vec<(String, Parser)>, resume: Vec<Position>, confinement: Arc<Confinement>) -> Self {
        Self {
            sources,
            files: HashMap::new(),
            resume: resume.into_iter().map(|p| (p.key, p)).collect(),
            confinement,
            refused: HashSet::new(),
            turn: 0,
        }
    }

    /// Matches the globs again: opens new files, notices rotated and truncated ones.
    pub fn scan(&mut self) {
        let mut seen: HashMap<FileKey, (PathBuf, PathBuf, usize)> = HashMap::new();
        for (i, (pattern, _)) in self.sources.iter().enumerate() {
            let Ok(paths) = glob::glob(pattern) else { continue };
            for path in paths.flatten() {
                let real = match self.confinement.read_check(&path) {
                    Ok(real) => real,
                    // The sidecar's own files under a wide glob: expected, and new
                    // ones (spool batches) appear all the time, so not worth a warning.
                    Err(Unreadable::Private | Unreadable::Gone) => continue,
                    Err(Unreadable::Outside) => {
                        // Bounded: an app creating symlinks under new names must not
                        // grow the sidecar's memory.
                        if self.refused.len() < MAX_WARNED && self.refused.insert(path.clone()) {
                            warn!(path = %path.display(), "not shipping a file that resolves outside OUTRIDER_LOG_PATHS");
                        }
                        continue;
                    }
                };
                let Ok(meta) = std::fs::metadata(&real) else { continue };
                if !meta.is_file() {
                    continue;
                }
                let key = FileKey {
                    dev: meta.dev(),
                    ino: meta.ino(),
                };
                seen.entry(key).or_insert((path, real, i));
            }
        }
        for t in self.files.values_mut() {
            match seen.remove(&t.key) {
                Some((path, _, _)) => {
                    t.gone = false;
                    t.path = path;
                    t.check_truncation();
                }
                None => t.gone = true,
            }
        }
        for (key, (path, real, source)) in seen {
            // Opened by the checked canonical path, and only if it is still the inode
            // that was checked: a path swapped for a symlink since is not followed.
            let opened = File::open(&real).and_then(|f| {
                let m = f.metadata()?;
                if (m.dev(), m.ino()) == (key.dev, key.ino) {
                    Ok(f)
                } else {
                    Err(std::io::Error::other("replaced while being opened"))
                }
            });
            match opened {
                Ok(file) => {
                    let mut t = Tracked {
                        key,
                        path,
                        source,
                        multiline: self.sources[source].1.multiline_start.clone(),
                        file,
                        read_offset: 0,
                        committed: 0,
                        partial: Vec::new(),
                        pending: None,
                        last_line_at: Instant::now(),
                        fingerprint: None,
                        gone: false,
                        eof_since: None,
                    };
                    if let Some(p) = self.resume.remove(&key) {
                        let len = t.file.metadata().map_or(0, |m| m.len());
                        if p.offset <= len
                            && (p.fingerprint.is_none() || fingerprint(&t.file, p.fingerprint) == p.fingerprint)
                        {
                            t.read_offset = p.offset;
                            t.committed = p.offset;
                            t.fingerprint = p.fingerprint;
                        }
                    }
                    info!(path = %t.path.display(), offset = t.read_offset, "following a log file");
                    self.files.insert(key, t);
                }
                Err(e) => debug!(path = %path.display(), error = %e, "cannot open a log file yet"),
            }
        }
    }

    /// Reads what is available (a chunk per file) and hands out complete records
    /// until `emit` breaks (it takes no more now). Returns the number of physical
    /// lines taken.
    pub fn read(&mut self, emit: &mut dyn FnMut(Line<'_>) -> Flow) -> u64 {
        let mut lines = 0;
        let mut closed = Vec::new();
        let mut keys: Vec<FileKey> = self.files.keys().copied().collect();
        keys.sort_unstable_by_key(|k| (k.dev, k.ino));
        if !keys.is_empty() {
            let first = self.turn % keys.len();
            keys.rotate_left(first);
        }
        self.turn = self.turn.wrapping_add(1);
        for key in keys {
            let Some(t) = self.files.get_mut(&key) else { continue };
            let (n, flow) = t.read_chunk(emit);
            lines += n;
            if flow.is_break() {
                break;
            }
            if t.gone && t.eof_since.is_some_and(|s| s.elapsed() >= GONE_GRACE) {
                if t.flush_all(emit).is_break() {
                    break;
                }
                closed.push(t.key);
            }
        }
        for key in closed {
            if let Some(t) = self.files.remove(&key) {
                info!(path = %t.path.display(), "closed a rotated or deleted log file");
            }
        }
        lines
    }

    /// Positions to checkpoint once everything handed out so far is delivered.
    pub fn positions(&self) -> Vec<Position> {
        let mut v: Vec<Position> = self
            .files
            .values()
            .map(|t| Position {
                key: t.key,
                path: t.path.display().to_string(),
                offset: t.committed,
                fingerprint: t.fingerprint,
            })
            .collect();
        // Files not seen yet in this run keep their old position.
        v.extend(self.resume.values().cloned());
        v
    }

    /// Whether any file has bytes beyond what was read (more work right away).
    pub fn behind(&self) -> bool {
        self.files
            .values()
            .any(|t| t.file.metadata().is_ok_and(|m| m.len() > t.read_offset))
    }
}

impl Tracked {
    fn check_truncation(&mut self) {
        let len = self.file.metadata().map_or(0, |m| m.len());
        let rewritten = self.fingerprint.is_some() && fingerprint(&self.file, self.fingerprint) != self.fingerprint;
        if len < self.read_offset || rewritten {
            warn!(path = %self.path.display(), offset = self.read_offset, len, "log file was truncated; reading it from the start");
            self.read_offset = 0;
            self.committed = 0;
            self.partial.clear();
            self.fingerprint = None;
        }
    }

    /// Forgets everything read past the last record taken; it is read again.
    fn rewind(&mut self) {
        self.read_offset = self.committed;
        self.partial.clear();
        self.pending = None;
    }

    fn read_chunk(&mut self, emit: &mut dyn FnMut(Line<'_>) -> Flow) -> (u64, Flow) {
        let mut buf = vec![0u8; READ_CHUNK];
        if self.file.seek(SeekFrom::Start(self.read_offset)).is_err() {
            return (0, Flow::Continue(()));
        }
        let n = match self.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read a log file");
                0
            }
        };
        if n == 0 {
            self.eof_since.get_or_insert_with(Instant::now);
            if self.pending.is_some() && self.last_line_at.elapsed() >= MULTILINE_TIMEOUT {
                let (text, end) = self.pending.take().unwrap_or_default();
                if self.hand_out(&text, end, emit).is_break() {
                    // Kept whole, to be offered again, rather than re-read and timed anew.
                    self.pending = Some((text, end));
                    return (0, Flow::Break(()));
                }
            }
            return (0, Flow::Continue(()));
        }
        self.eof_since = None;
        let chunk_start = self.read_offset;
        self.read_offset += n as u64;
        if self.fingerprint.is_none_or(|(_, l)| (l as usize) < FINGERPRINT_BYTES) {
            self.fingerprint = fingerprint(&self.file, Some((0, FINGERPRINT_BYTES as u32)));
        }
        let mut lines = 0;
        let mut start = 0;
        let data = &buf[..n];
        for (i, b) in data.iter().enumerate() {
            if *b == b'\n' {
                let end_offset = chunk_start + i as u64 + 1;
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&data[start..i]);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if self.line(&line, end_offset, emit).is_break() {
                    self.rewind();
                    return (lines, Flow::Break(()));
                }
                lines += 1;
                start = i + 1;
            }
        }
        self.partial.extend_from_slice(&data[start..]);
        if self.partial.len() >= MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            if self.line(&line, self.read_offset, emit).is_break() {
                self.rewind();
                return (lines, Flow::Break(()));
            }
            lines += 1;
        }
        (lines, Flow::Continue(()))
    }

    /// One physical line; breaks when a record it completes was not taken (the
    /// caller rewinds).
    fn line(&mut self, bytes: &[u8], end_offset: u64, emit: &mut dyn FnMut(Line<'_>) -> Flow) -> Flow {
        let text = String::from_utf8_lossy(bytes);
        self.last_line_at = Instant::now();
        let Some(starts) = self.multiline.as_ref().map(|re| re.is_match(&text)) else {
            return self.hand_out(&text, end_offset, emit);
        };
        if starts {
            if let Some((prev, end)) = self.pending.take() {
                self.hand_out(&prev, end, emit)?;
            }
            self.pending = Some((text.into_owned(), end_offset));
        } else {
            match &mut self.pending {
                Some((prev, end)) if prev.len() < MAX_LINE => {
                    prev.push('\n');
                    prev.push_str(&text);
                    *end = end_offset;
                }
                _ => {
                    if let Some((prev, end)) = self.pending.take() {
                        self.hand_out(&prev, end, emit)?;
                    }
                    return self.hand_out(&text, end_offset, emit);
                }
            }
        }
        Flow::Continue(())
    }

    /// Offers one record; the position moves past it only if it was taken.
    fn hand_out(&mut self, text: &str, end: u64, emit: &mut dyn FnMut(Line<'_>) -> Flow) -> Flow {
        let flow = {
            let path = self.path.to_string_lossy();
            emit(Line {
                source: self.source,
                path: &path,
                text,
            })
        };
        if flow.is_continue() {
            self.committed = end;
        }
        flow
    }

    /// The last records of a file that is going away; breaks (keeping them) when
    /// they were not taken.
    fn flush_all(&mut self, emit: &mut dyn FnMut(Line<'_>) -> Flow) -> Flow {
        if let Some((text, end)) = self.pending.take() {
            if self.hand_out(&text, end, emit).is_break() {
                self.pending = Some((text, end));
                return Flow::Break(());
            }
        }
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.hand_out(&text, self.read_offset, emit)?;
            self.partial.clear();
        }
        Flow::Continue(())
    }
}

/// Hash of the file's first `len` bytes (fewer if the file is shorter).
fn fingerprint(file: &File, want: Option<(u64, u32)>) -> Option<(u64, u32)> {
    let len = want.map_or(FINGERPRINT_BYTES as u32, |(_, l)| l) as usize;
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, 0).ok()?;
    if n == 0 {
        return None;
    }
    // FNV-1a: stable across builds, unlike std's hasher, because it is persisted.
    let h = buf[..n].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    Some((h, n as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_policy::AppLog;
    use std::io::Write as _;

    fn tailer(dir: &std::path::Path, spec: &str, resume: Vec<Position>) -> Tailer {
        let spec: AppLog = serde_json::from_str(&spec.replace("DIR", &dir.display().to_string())).unwrap();
        let parser = Parser::compile(&spec).unwrap();
        let confinement = Confinement::new(&format!("{}/**", dir.display()), &dir.join("sinks"), "", &[]).unwrap();
        Tailer::new(vec![(spec.path, parser)], resume, Arc::new(confinement))
    }

    fn drain(t: &mut Tailer) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..5 {
            t.scan();
            while t.read(&mut |l| {
                out.push(l.text.to_owned());
                Flow::Continue(())
            }) > 0
            {}
        }
        out
    }

    fn append(path: &std::path::Path, lines: std::ops::Range<u32>) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in lines {
            writeln!(f, "line {i:05} padding to make lines longer than a few bytes").unwrap();
        }
    }

    fn expect(range: std::ops::Range<u32>) -> Vec<String> {
        range
            .map(|i| format!("line {i:05} padding to make lines longer than a few bytes"))
            .collect()
    }

    #[test]
    fn rename_rotation_reads_the_old_file_to_its_end_and_the_new_one_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut t = tailer(dir.path(), r#"{"path":"DIR/*.log"}"#, vec![]);
        append(&log, 0..100);
        let mut got = drain(&mut t);
        append(&log, 100..200); // written, not yet read, when the file is renamed
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&log, 200..300);
        got.extend(drain(&mut t));
        // Two files are read side by side: order holds within each, not across.
        got.sort();
        assert_eq!(got, expect(0..300));
    }

    #[test]
    fn copytruncate_is_detected_even_when_the_new_content_is_longer() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut t = tailer(dir.path(), r#"{"path":"DIR/app.log"}"#, vec![]);
        append(&log, 0..100);
        let mut got = drain(&mut t);
        std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        // More than was there before the truncation: only the first bytes tell.
        append(&log, 100..350);
        got.extend(drain(&mut t));
        assert_eq!(got, expect(0..350));
    }

    #[test]
    fn positions_resume_after_the_last_record_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, 0..10);
        // A half-written line is not handed out, and not covered by the position.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"half")
            .unwrap();
        let mut t = tailer(dir.path(), r#"{"path":"DIR/app.log"}"#, vec![]);
        assert_eq!(drain(&mut t), expect(0..10));
        let positions = t.positions();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b" done\n")
            .unwrap();
        let mut again = tailer(dir.path(), r#"{"path":"DIR/app.log"}"#, positions);
        assert_eq!(drain(&mut again), vec!["half done".to_owned()]);
    }

    #[test]
    fn multiline_records_group_continuation_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(
            &log,
            "2024-01-01 boom\n  at a()\n  at b()\n2024-01-01 next\n2024-01-01 last\n",
        )
        .unwrap();
        let mut t = tailer(
            dir.path(),
            r#"{"path":"DIR/app.log","multilineStart":"^\\d{4}-"}"#,
            vec![],
        );
        let mut got = drain(&mut t);
        assert_eq!(got, ["2024-01-01 boom\n  at a()\n  at b()", "2024-01-01 next"]);
        // The last record is shipped once no continuation came for a while.
        std::thread::sleep(MULTILINE_TIMEOUT + Duration::from_millis(50));
        got = drain(&mut t);
        assert_eq!(got, ["2024-01-01 last"]);
    }

    #[test]
    fn a_refused_record_is_offered_again_and_the_position_ends_on_the_last_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, 0..10);
        let mut t = tailer(dir.path(), r#"{"path":"DIR/app.log"}"#, vec![]);
        t.scan();
        let mut taken = Vec::new();
        // Takes three records, then is full.
        t.read(&mut |l| {
            if taken.len() == 3 {
                return Flow::Break(());
            }
            taken.push(l.text.to_owned());
            Flow::Continue(())
        });
        assert_eq!(taken, expect(0..3));
        let line_len = expect(0..1)[0].len() as u64 + 1;
        assert_eq!(
            t.positions()[0].offset,
            3 * line_len,
            "the checkpoint covers what was taken"
        );
        assert_eq!(
            drain(&mut t),
            expect(3..10),
            "the refused record comes again, nothing is skipped"
        );
    }

    #[test]
    fn a_symlink_out_of_the_allowed_globs_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "do not ship\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("evil.log")).unwrap();
        append(&dir.path().join("app.log"), 0..2);
        let mut t = tailer(dir.path(), r#"{"path":"DIR/*.log"}"#, vec![]);
        assert_eq!(drain(&mut t), expect(0..2));
    }

    #[test]
    fn new_files_matching_the_glob_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tailer(dir.path(), r#"{"path":"DIR/*.log"}"#, vec![]);
        assert!(drain(&mut t).is_empty());
        append(&dir.path().join("b.log"), 0..3);
        std::fs::write(dir.path().join("ignored.txt"), "no\n").unwrap();
        assert_eq!(drain(&mut t), expect(0..3));
    }
}
