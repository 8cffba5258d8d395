//! Config documents (`ConfigDocument`, see `docs/reference.md`): written atomically
//! into `OUTRIDER_CONFIG_DIR`, served at `GET /config/{name}` on the admin port with an
//! `ETag` and a `?wait=30s` long-poll, and optionally followed by a reload hook.
//!
//! [`ConfigDocs`] owns the directory. The agent writes a snapshot's documents through a
//! [`Writer`] before it enforces and acknowledges the snapshot (a document it cannot
//! write NACKs the snapshot); [`ConfigDocs::run`] then, after every applied snapshot,
//! makes sure the directory matches (the snapshot loaded from disk at start is written
//! there), publishes the new set on a `watch` channel that long-polls wait on, and runs
//! the reload hooks of the documents written. Writing means: the documents whose
//! revision changed (`outrider_runtime::fs::write_atomic`), and removing the ones that
//! were deleted — only files it wrote itself, listed in a manifest in the state
//! directory. Nothing here is on the request path.

use crate::state::{ConfigSummary, SidecarState};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use outrider_runtime::fs::{write_atomic, write_atomic_with, WriteOptions};
use rustix::process::{kill_process, Pid, Signal};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Mutex as AsyncMutex, MutexGuard};
use tracing::{info, warn};

/// The longest `?wait=` a client may ask for; longer asks are clamped, so a
/// long-poll always ends and a proxy in between never times it out silently.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

const MANIFEST: &str = "config-manifest.json";

/// One document as the sidecar holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub content_type: String,
    pub content: Bytes,
    pub revision: u64,
}

impl Doc {
    /// The entity tag: the document's revision, which changes with every write.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }
}

pub type DocSet = BTreeMap<String, Arc<Doc>>;

/// The documents of an applied (or prepared) snapshot.
pub fn doc_set(configs: &[ConfigSummary]) -> DocSet {
    configs
        .iter()
        .map(|c| {
            let doc = Doc {
                content_type: c.content_type.clone(),
                content: c.content.clone(),
                revision: c.revision,
            };
            (c.name.clone(), Arc::new(doc))
        })
        .collect()
}

/// Why the documents could not all be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{what} {name:?} cannot be a file name here: {reason}")]
    Name {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("config writer task failed: {0}")]
    Task(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadSpecError {
    #[error("reload hook {0:?}: expected NAME=sighup:/path/to/pidfile or NAME=http://host:port/path")]
    Syntax(String),
}

/// What to do after a document was written (`OUTRIDER_CONFIG_RELOAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadAction {
    /// `kill -HUP $(cat pidfile)`.
    Sighup(PathBuf),
    /// `POST url` with an empty body (e.g. Prometheus' `/-/reload`).
    Post(String),
}

/// Reload hooks by document name; `*` applies to every document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadHooks(Vec<(String, ReloadAction)>);

impl ReloadHooks {
    /// Parses `name=sighup:/run/app.pid,*=http://127.0.0.1:8080/-/reload`.
    pub fn parse(spec: &str) -> Result<Self, ReloadSpecError> {
        let mut hooks = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || ReloadSpecError::Syntax(item.to_owned());
            let (name, action) = item.split_once('=').ok_or_else(bad)?;
            let name = name.trim();
            if name != "*" && outrider_policy::validate_config_file_name(name).is_err() {
                return Err(bad());
            }
            let action = action.trim();
            let action = if let Some(pidfile) = action.strip_prefix("sighup:") {
                if !pidfile.starts_with('/') {
                    return Err(bad());
                }
                ReloadAction::Sighup(PathBuf::from(pidfile))
            } else if action.starts_with("http://") || action.starts_with("https://") {
                ReloadAction::Post(action.to_owned())
            } else {
                return Err(bad());
            };
            hooks.push((name.to_owned(), action));
        }
        Ok(Self(hooks))
    }

    fn for_doc<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ReloadAction> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == "*" || n == name)
            .map(|(_, a)| a)
    }
}

/// The config-document owner: the directory, the manifest and the current set.
pub struct ConfigDocs {
    dir: PathBuf,
    manifest: PathBuf,
    hooks: ReloadHooks,
    current: watch::Sender<Arc<DocSet>>,
    http: reqwest::Client,
    /// One writer at a time: the agent holds it from writing a snapshot's documents
    /// until that snapshot is in force, so [`ConfigDocs::run`] never writes an older
    /// set over a newer one in between.
    writing: AsyncMutex<()>,
    /// Written and not yet reloaded (hooks run once the set is published).
    unreloaded: Mutex<BTreeSet<String>>,
}

/// Exclusive right to write the directory; see [`ConfigDocs::writer`].
pub struct Writer<'a> {
    docs: &'a ConfigDocs,
    _held: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    /// Makes the directory match `set`. On error, the documents written before the
    /// failure stay (each is whole); the next write completes the rest.
    pub async fn write(&self, set: &DocSet) -> Result<(), WriteError> {
        let (dir, manifest, wanted) = (self.docs.dir.clone(), self.docs.manifest.clone(), set.clone());
        let written = tokio::task::spawn_blocking(move || write_all(&dir, &manifest, &wanted))
            .await
            .map_err(|e| WriteError::Task(e.to_string()))?;
        let (names, result) = written;
        self.docs.unreloaded.lock().unwrap().extend(names);
        result
    }
}

impl ConfigDocs {
    /// `trust`: what an `https://` reload hook is verified against.
    pub fn new(dir: PathBuf, state_dir: &Path, hooks: ReloadHooks, trust: &crate::trust::Trust) -> Arc<Self> {
        Arc::new(Self {
            dir,
            manifest: state_dir.join(MANIFEST),
            hooks,
            current: watch::channel(Arc::new(DocSet::new())).0,
            http: trust
                .http_client(reqwest::Client::builder())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            writing: AsyncMutex::new(()),
            unreloaded: Mutex::default(),
        })
    }

    /// Waits for the right to write the directory.
    pub async fn writer(&self) -> Writer<'_> {
        Writer {
            docs: self,
            _held: self.writing.lock().await,
        }
    }

    pub fn current(&self) -> Arc<DocSet> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DocSet>> {
        self.current.subscribe()
    }

    /// Follows applied snapshots until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, state: Arc<SidecarState>, shutdown: impl std::future::Future<Output = ()>) {
        let mut changes = state.subscribe();
        tokio::pin!(shutdown);
        loop {
            // Mark seen before reading, so a swap during the sync is not missed.
            changes.borrow_and_update();
            // Nothing applied yet: leave whatever an earlier run wrote in place.
            if state.applied.load().is_some() {
                // Read under the writer, so the set is the one in force now.
                let writer = self.writer().await;
                let set = state
                    .applied
                    .load()
                    .as_ref()
                    .map_or_else(DocSet::new, |a| doc_set(&a.configs));
                self.publish(writer, set).await;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = &mut shutdown => return,
            }
        }
    }

    /// Makes the directory match `set`, publishes it, then runs reload hooks for the
    /// documents that changed.
    pub async fn sync(&self, set: DocSet) {
        let writer = self.writer().await;
        self.publish(writer, set).await;
    }

    async fn publish(&self, writer: Writer<'_>, set: DocSet) {
        if let Err(e) = writer.write(&set).await {
            warn!(dir = %self.dir.display(), error = %e, "could not write config documents");
        }
        drop(writer);
        self.current.send_if_modified(|cur| {
            let changed = **cur != set;
            *cur = Arc::new(set);
            changed
        });
        let written = std::mem::take(&mut *self.unreloaded.lock().unwrap());
        for name in written {
            for action in self.hooks.for_doc(&name) {
                self.reload(&name, action).await;
            }
        }
    }

    async fn reload(&self, name: &str, action: &ReloadAction) {
        match action {
            ReloadAction::Sighup(pidfile) => match send_sighup(pidfile) {
                Ok(pid) => info!(doc = name, pid, "sent SIGHUP after a config change"),
                Err(e) => warn!(doc = name, pidfile = %pidfile.display(), error = %e, "reload hook failed"),
            },
            ReloadAction::Post(url) => match self.http.post(url).send().await {
                Ok(r) if r.status().is_success() => info!(doc = name, %url, "posted reload after a config change"),
                Ok(r) => warn!(doc = name, %url, status = %r.status(), "reload hook answered with an error"),
                Err(e) => warn!(doc = name, %url, error = %e, "reload hook failed"),
            },
        }
    }

    /// Routes for the admin port.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route("/config/{name}", get(get_config)).with_state(self)
    }
}

/// Writes the documents whose revision differs from the manifest (or whose file is
/// missing), removes manifest entries no longer wanted, saves the manifest if it
/// changed. Returns the names written (also when a later step failed) and the outcome.
fn write_all(dir: &Path, manifest_path: &Path, set: &DocSet) -> (Vec<String>, Result<(), WriteError>) {
    let mut written = Vec::new();
    let files = set
        .iter()
        .map(|(name, doc)| {
            let file = ManagedFile {
                content: &doc.content,
                revision: doc.revision,
            };
            (name.as_str(), file)
        })
        .collect();
    let result = sync_dir(&ManagedDir::CONFIG, dir, manifest_path, &files, &mut written);
    (written, result)
}

/// A directory the sidecar fills with files of its own, tracked by a manifest in the
/// state dir so that only those are ever removed: config documents, and secrets.
pub struct ManagedDir {
    /// What a file is, for errors and the log ("config document", "secret").
    pub what: &'static str,
    /// Permission bits of new files and of the directory when this creates it
    /// (`None`: the process defaults).
    pub file_mode: Option<u32>,
    pub dir_mode: Option<u32>,
}

impl ManagedDir {
    const CONFIG: ManagedDir = ManagedDir {
        what: "config document",
        file_mode: None,
        dir_mode: None,
    };
}

/// One file a [`ManagedDir`] should hold.
pub struct ManagedFile<'a> {
    pub content: &'a [u8],
    pub revision: u64,
}

/// Makes `dir` hold exactly `files` among the files its manifest lists: writes those
/// whose revision differs from the manifest (or whose file is missing), removes
/// entries no longer wanted, saves the manifest if it changed. `written` gets the
/// names written, also when a later step fails.
pub fn sync_dir(
    kind: &ManagedDir,
    dir: &Path,
    manifest_path: &Path,
    files: &BTreeMap<&str, ManagedFile<'_>>,
    written: &mut Vec<String>,
) -> Result<(), WriteError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| WriteError::Io { path, source }
    };
    // Names were validated by the control plane; check again, since they become paths,
    // and before anything is written, so a bad one changes nothing.
    for name in files.keys() {
        outrider_policy::validate_config_file_name(name).map_err(|reason| WriteError::Name {
            what: kind.what,
            name: (*name).to_owned(),
            reason,
        })?;
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    if let Some(mode) = kind.dir_mode {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(mode);
    }
    builder.create(dir).map_err(io(dir))?;
    let before: BTreeMap<String, u64> = std::fs::read(manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut manifest = before.clone();
    // Saves the manifest as far as it is true so far, also on the way out of an error,
    // so that files already written are still known as the sidecar's own.
    let save = |manifest: &BTreeMap<String, u64>| -> Result<(), WriteError> {
        if *manifest == before && (manifest.is_empty() || manifest_path.exists()) {
            return Ok(());
        }
        if let Some(parent) = manifest_path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        write_atomic(manifest_path, &serde_json::to_vec(manifest).unwrap_or_default()).map_err(io(manifest_path))
    };
    let options = WriteOptions {
        mode: kind.file_mode,
        ..WriteOptions::default()
    };
    for (name, file) in files {
        let path = dir.join(name);
        if manifest.get(*name) == Some(&file.revision) && path.exists() {
            continue;
        }
        if let Err(e) = write_atomic_with(&path, file.content, &options) {
            let _ = save(&manifest);
            return Err(io(&path)(e));
        }
        manifest.insert((*name).to_owned(), file.revision);
        written.push((*name).to_owned());
    }
    let gone: Vec<String> = manifest
        .keys()
        .filter(|n| !files.contains_key(n.as_str()))
        .cloned()
        .collect();
    for name in gone {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => info!(name, "removed a deleted {}", kind.what),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = save(&manifest);
                return Err(io(&path)(e));
            }
        }
        manifest.remove(&name);
    }
    save(&manifest)
}

/// Sends SIGHUP to the pid in `pidfile`; the pid must be positive, so a pid file
/// holding `0` or `-1` can never signal a process group or every process.
fn send_sighup(pidfile: &Path) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(pidfile)?;
    let raw: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "pid file holds no pid"))?;
    let pid = Pid::from_raw(raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "pid file holds no pid"))?;
    kill_process(pid, Signal::HUP)?;
    Ok(raw)
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

/// `GET /config/{name}`: 200 with the document and its `ETag`; `If-None-Match` with
/// the current tag gives 304 — at once, or after `?wait=` when nothing changed. A
/// change during the wait answers at once with the new document (or 404 if it was
/// deleted).
async fn get_config(
    State(docs): State<Arc<ConfigDocs>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(m) = outrider_policy::validate_config_file_name(&name) {
        return (StatusCode::BAD_REQUEST, m).into_response();
    }
    let wait = match q.wait.as_deref().map(str::parse::<outrider_policy::Duration>) {
        None => None,
        Some(Ok(d)) => Some(d.as_std().min(MAX_WAIT)),
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "wait: expected a duration such as \"30s\"\n").into_response();
        }
    };
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tag_of = |set: &DocSet| set.get(&name).map(|d| d.etag());
    let mut rx = docs.subscribe();
    let now = rx.borrow_and_update().clone();
    let unchanged = |set: &DocSet| {
        inm.as_deref()
            .is_some_and(|inm| etag_matches(inm, tag_of(set).as_deref()))
    };
    let set = if unchanged(&now) {
        match wait {
            None => return not_modified(&now, &name),
            Some(wait) => match tokio::time::timeout(wait, rx.wait_for(|s| !unchanged(s))).await {
                Ok(Ok(set)) => set.clone(),
                // Timed out (or the owner is gone): still the same document.
                _ => return not_modified(&now, &name),
            },
        }
    } else {
        now
    };
    match set.get(&name) {
        Some(doc) => {
            let mut r = (StatusCode::OK, doc.content.clone()).into_response();
            let h = r.headers_mut();
            if let Ok(ct) = HeaderValue::from_str(&doc.content_type) {
                h.insert(header::CONTENT_TYPE, ct);
            }
            if let Ok(tag) = HeaderValue::from_str(&doc.etag()) {
                h.insert(header::ETAG, tag);
            }
            r
        }
        None => (StatusCode::NOT_FOUND, format!("no config document {name:?}\n")).into_response(),
    }
}

/// A document that is absent matches no tag, so `If-None-Match` on a deleted
/// document is answered 404, not 304.
fn etag_matches(if_none_match: &str, current: Option<&str>) -> bool {
    let Some(current) = current else { return false };
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == current)
}

fn not_modified(set: &DocSet, name: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Some(tag) = set.get(name).and_then(|d| HeaderValue::from_str(&d.etag()).ok()) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn doc(rev: u64, body: &str) -> Arc<Doc> {
        Arc::new(Doc {
            content_type: "text/plain".into(),
            content: Bytes::copy_from_slice(body.as_bytes()),
            revision: rev,
        })
    }

    fn set(items: &[(&str, Arc<Doc>)]) -> DocSet {
        items.iter().map(|(n, d)| (n.to_string(), d.clone())).collect()
    }

    async fn get(docs: &Arc<ConfigDocs>, uri: &str, inm: Option<&str>) -> (StatusCode, Option<String>, String) {
        let mut req = Request::get(uri);
        if let Some(t) = inm {
            req = req.header("if-none-match", t);
        }
        let r = docs
            .clone()
            .router()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let tag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, tag, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn documents_are_written_and_deleted_ones_removed_but_foreign_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("mine-not"), "operator's file").unwrap();
        let docs = ConfigDocs::new(
            cfg.clone(),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        docs.sync(set(&[("a.yaml", doc(1, "a: 1")), ("b.txt", doc(2, "bee"))]))
            .await;
        assert_eq!(std::fs::read_to_string(cfg.join("a.yaml")).unwrap(), "a: 1");
        assert_eq!(std::fs::read_to_string(cfg.join("b.txt")).unwrap(), "bee");

        docs.sync(set(&[("a.yaml", doc(3, "a: 2"))])).await;
        assert_eq!(std::fs::read_to_string(cfg.join("a.yaml")).unwrap(), "a: 2");
        assert!(!cfg.join("b.txt").exists());
        assert!(cfg.join("mine-not").exists(), "files the sidecar did not write stay");
        let left: Vec<_> = std::fs::read_dir(&cfg)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temp files left behind: {left:?}");
    }

    #[tokio::test]
    async fn names_up_to_the_file_name_limit_are_written_and_a_bad_one_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        let docs = ConfigDocs::new(
            cfg.clone(),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        // 200 is the write limit; 253 is what the API accepted before it.
        let (limit, stored) = ("n".repeat(200), "s".repeat(253));
        let writer = docs.writer().await;
        writer
            .write(&set(&[(&limit, doc(1, "a")), (&stored, doc(1, "b"))]))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(cfg.join(&limit)).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(cfg.join(&stored)).unwrap(), "b");

        let err = writer
            .write(&set(&[("fresh.txt", doc(2, "c")), ("../escape", doc(2, "d"))]))
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::Name { .. }), "{err}");
        assert!(!cfg.join("fresh.txt").exists(), "nothing of a refused set is written");
        assert!(cfg.join(&limit).exists(), "nor anything removed");
    }

    #[tokio::test]
    async fn a_write_that_fails_names_the_file_and_the_documents_written_so_far_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        // A directory where a document goes: its rename fails.
        std::fs::create_dir_all(cfg.join("b.txt").join("inside")).unwrap();
        let docs = ConfigDocs::new(
            cfg.clone(),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        let err = docs
            .writer()
            .await
            .write(&set(&[("a.txt", doc(1, "a")), ("b.txt", doc(1, "b"))]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("b.txt"), "{err}");
        assert_eq!(std::fs::read_to_string(cfg.join("a.txt")).unwrap(), "a");
        let manifest: BTreeMap<String, u64> =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest.keys().collect::<Vec<_>>(), ["a.txt"], "a.txt is known as ours");
    }

    #[tokio::test]
    async fn admin_endpoint_serves_etag_and_304_and_404() {
        let dir = tempfile::tempdir().unwrap();
        let docs = ConfigDocs::new(
            dir.path().join("c"),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        docs.sync(set(&[("app.json", doc(5, "{}"))])).await;
        assert_eq!(
            get(&docs, "/config/app.json", None).await,
            (StatusCode::OK, Some("\"5\"".into()), "{}".into())
        );
        let (status, tag, _) = get(&docs, "/config/app.json", Some("\"5\"")).await;
        assert_eq!((status, tag.as_deref()), (StatusCode::NOT_MODIFIED, Some("\"5\"")));
        assert_eq!(get(&docs, "/config/nope", None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&docs, "/config/..", None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            get(&docs, "/config/app.json?wait=soon", None).await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn long_poll_returns_when_the_document_changes() {
        let dir = tempfile::tempdir().unwrap();
        let docs = ConfigDocs::new(
            dir.path().join("c"),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        docs.sync(set(&[("app.json", doc(5, "old"))])).await;
        let poll = tokio::spawn({
            let docs = docs.clone();
            async move { get(&docs, "/config/app.json?wait=60s", Some("\"5\"")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!poll.is_finished(), "the poll waits while nothing changes");
        docs.sync(set(&[("app.json", doc(6, "new"))])).await;
        let r = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, (StatusCode::OK, Some("\"6\"".into()), "new".into()));
    }

    #[tokio::test]
    async fn long_poll_times_out_with_304() {
        let dir = tempfile::tempdir().unwrap();
        let docs = ConfigDocs::new(
            dir.path().join("c"),
            dir.path(),
            ReloadHooks::default(),
            &crate::trust::Trust::default(),
        );
        docs.sync(set(&[("app.json", doc(5, "old"))])).await;
        let r = get(&docs, "/config/app.json?wait=100ms", Some("\"5\"")).await;
        assert_eq!(r.0, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn reload_hook_sends_sighup_to_the_pid_in_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep` dies of SIGHUP unless it inherited it ignored: run the tests without
        // `nohup`, which would make this one wait the 30 s out and fail.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfile = dir.path().join("app.pid");
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        let hooks = ReloadHooks::parse(&format!("app.json=sighup:{}", pidfile.display())).unwrap();
        let docs = ConfigDocs::new(dir.path().join("c"), dir.path(), hooks, &crate::trust::Trust::default());
        docs.sync(set(&[("other", doc(1, "x"))])).await;
        assert!(child.try_wait().unwrap().is_none(), "no hook for other documents");
        docs.sync(set(&[("app.json", doc(2, "x"))])).await;
        // Waiting must not block this runtime's only thread: the hook may run on it.
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::HUP.as_raw()));
    }

    #[test]
    fn reload_specs_parse_or_name_the_bad_item() {
        let h = ReloadHooks::parse("a.yaml=sighup:/run/app.pid, *=http://127.0.0.1:8080/-/reload").unwrap();
        assert_eq!(
            h.0,
            vec![
                ("a.yaml".into(), ReloadAction::Sighup("/run/app.pid".into())),
                ("*".into(), ReloadAction::Post("http://127.0.0.1:8080/-/reload".into())),
            ]
        );
        for bad in ["a.yaml", "a=sighup:rel.pid", "a=ftp://x", "../x=http://h/"] {
            assert!(ReloadHooks::parse(bad).is_err(), "{bad}");
        }
    }
}
