//! Where log shipping may read and write: `OUTRIDER_LOG_PATHS`, `OUTRIDER_SINK_DIR` and
//! `OUTRIDER_SINK_HOSTS`. A LoggingPolicy is checked against them before it is applied
//! ([`Confinement::check`], a NACK naming the field), and every file is checked again
//! when it is opened, on the canonical path, so symlinks and `..` cannot escape.
//!
//! Why both: the policy is written by whoever may edit policy, the files are written by
//! the app. The first check turns a policy that asks for too much into a clear refusal;
//! the second holds when the app's volume holds a symlink to somewhere else.

use outrider_policy::{FieldError, LoggingPolicy, SinkType};
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The default of `OUTRIDER_LOG_PATHS`: the app's log volume.
pub const DEFAULT_LOG_PATHS: &str = "/var/log/**";

/// What the settings allow; built once at start from the sidecar's configuration.
#[derive(Debug, Clone)]
pub struct Confinement {
    log_paths: Vec<Allowed>,
    /// Absolute; a relative `sink.path` is taken from here.
    sink_dir: PathBuf,
    /// Empty: any host.
    sink_hosts: Vec<HostPattern>,
    /// The sidecar's own state, config and sink directories, never read through `appLogs`.
    private: Vec<PathBuf>,
}

/// One allowed glob, as written (for messages) and by component (for containment).
#[derive(Debug, Clone)]
struct Allowed {
    text: String,
    /// The glob, and the same glob with its fixed prefix canonicalized (when that
    /// differs), so that a log volume mounted through a symlink still matches the
    /// canonical paths files are checked on.
    patterns: Vec<glob::Pattern>,
    components: Vec<String>,
}

/// Why a file a glob matched is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// It no longer exists (or a path component cannot be resolved).
    Gone,
    /// In the sidecar's state, config or sink directory: expected under a wide glob.
    Private,
    /// Its canonical path is outside `OUTRIDER_LOG_PATHS` (a symlink out, say).
    Outside,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lower case; `*.example.com` matches any subdomain, `*` any host.
    host: String,
    port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfinementError {
    #[error("OUTRIDER_LOG_PATHS: {0:?} is not an absolute glob")]
    RelativeLogPath(String),
    #[error("OUTRIDER_LOG_PATHS: {0:?} must not contain `.` or `..` segments")]
    DotLogPath(String),
    #[error("OUTRIDER_LOG_PATHS: {glob:?}: {message}")]
    BadLogPath { glob: String, message: String },
    #[error("OUTRIDER_LOG_PATHS must name at least one glob")]
    NoLogPaths,
    #[error("OUTRIDER_SINK_HOSTS: {0:?} is not a host or host:port")]
    BadHost(String),
    #[error("cannot resolve the working directory: {0}")]
    Cwd(String),
}

impl Default for Confinement {
    /// The documented defaults for the default state and config directories. Should
    /// the working directory be unreadable, it fails closed: nothing is readable.
    fn default() -> Self {
        let state = Path::new("./outrider-state");
        Self::new(
            DEFAULT_LOG_PATHS,
            &state.join("sinks"),
            "",
            &[state, Path::new("./outrider-config")],
        )
        .unwrap_or_else(|_| Self {
            log_paths: Vec::new(),
            sink_dir: state.join("sinks"),
            sink_hosts: Vec::new(),
            private: vec![state.to_owned()],
        })
    }
}

impl Confinement {
    /// `log_paths` and `sink_hosts` are the variables' comma-separated values;
    /// `private` the directories that are never read (state and config).
    pub fn new(
        log_paths: &str,
        sink_dir: &Path,
        sink_hosts: &str,
        private: &[&Path],
    ) -> Result<Self, ConfinementError> {
        let mut allowed = Vec::new();
        for glob in split_list(log_paths) {
            if !glob.starts_with('/') {
                return Err(ConfinementError::RelativeLogPath(glob.into()));
            }
            let components = components(glob);
            if components.iter().any(|c| c == "." || c == "..") {
                return Err(ConfinementError::DotLogPath(glob.into()));
            }
            let bad = |e: glob::PatternError| ConfinementError::BadLogPath {
                glob: glob.into(),
                message: e.to_string(),
            };
            let mut patterns = vec![glob::Pattern::new(glob).map_err(bad)?];
            if let Some(canonical) = canonical_glob(&components) {
                if canonical != glob {
                    patterns.push(glob::Pattern::new(&canonical).map_err(bad)?);
                }
            }
            allowed.push(Allowed {
                text: glob.into(),
                patterns,
                components,
            });
        }
        if allowed.is_empty() {
            return Err(ConfinementError::NoLogPaths);
        }
        let sink_hosts = split_list(sink_hosts)
            .map(|h| HostPattern::parse(h).ok_or_else(|| ConfinementError::BadHost(h.into())))
            .collect::<Result<_, _>>()?;
        let absolute = |p: &Path| {
            std::path::absolute(p)
                .map(|p| lexical(&p))
                .map_err(|e| ConfinementError::Cwd(e.to_string()))
        };
        let sink_dir = absolute(sink_dir)?;
        // The sink directory is private too: a sink's output read back as an app log
        // would feed itself, however the path got there (a glob, a symlink).
        let mut private: Vec<PathBuf> = private.iter().map(|p| absolute(p)).collect::<Result<_, _>>()?;
        private.push(sink_dir.clone());
        Ok(Self {
            log_paths: allowed,
            sink_dir,
            sink_hosts,
            private,
        })
    }

    /// Everything in `policy` that reaches outside the settings, each error naming its
    /// field under `logging.` (as the NACK reports it).
    pub fn check(&self, policy: &LoggingPolicy) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, l) in policy.app_logs.iter().enumerate() {
            let field = format!("logging.appLogs[{i}].path");
            let c = components(&l.path);
            if c.iter().any(|c| c == "." || c == "..") {
                errors.push(FieldError::new(field, "must not contain `.` or `..` segments"));
            } else if let Some(dir) = self.private_root_of(&fixed_prefix(&c)) {
                errors.push(FieldError::new(
                    field,
                    format!(
                        "{:?} lies in the sidecar's own directory {}, which is never shipped",
                        l.path,
                        dir.display()
                    ),
                ));
            } else if !self.log_paths.iter().any(|a| a.contains(&c)) {
                errors.push(FieldError::new(
                    field,
                    format!(
                        "{:?} reaches outside the readable log paths (OUTRIDER_LOG_PATHS: {})",
                        l.path,
                        self.log_paths_text()
                    ),
                ));
            }
        }
        let sink = &policy.sink;
        match sink.kind {
            SinkType::File => match self.sink_path(sink.path.as_deref().unwrap_or_default()) {
                Err(message) => errors.push(FieldError::new("logging.sink.path", message)),
                Ok(path) => {
                    let canonical = canonical_lenient(&path);
                    let read_by = policy.app_logs.iter().position(|l| {
                        glob::Pattern::new(&l.path).is_ok_and(|p| p.matches_path(&path) || p.matches_path(&canonical))
                    });
                    if let Some(i) = read_by {
                        errors.push(FieldError::new(
                            "logging.sink.path",
                            format!(
                                "{} matches appLogs[{i}].path: the sink would ship its own output",
                                path.display()
                            ),
                        ));
                    }
                }
            },
            SinkType::Http => {
                if let Err(message) = self.check_url(sink.url.as_deref().unwrap_or_default()) {
                    errors.push(FieldError::new("logging.sink.url", message));
                }
            }
            SinkType::Stdout => {}
        }
        errors
    }

    /// The file a file sink's `path` names: under the sink directory (a relative path
    /// is taken from there), with no `.` or `..` segments. Lexical only; [`Self::open_sink`]
    /// checks what the file system says.
    pub fn sink_path(&self, path: &str) -> Result<PathBuf, String> {
        let p = Path::new(path);
        if p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || path.split('/').any(|s| s == ".")
        {
            return Err("must not contain `.` or `..` segments".into());
        }
        let full = lexical(&self.sink_dir.join(p));
        if full == self.sink_dir || !full.starts_with(&self.sink_dir) {
            return Err(format!(
                "{path:?} is not a file under the sink directory (OUTRIDER_SINK_DIR: {})",
                self.sink_dir.display()
            ));
        }
        Ok(full)
    }

    fn check_url(&self, url: &str) -> Result<(), String> {
        if self.sink_hosts.is_empty() {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("{:?} is not a URL: {e}", outrider_policy::mask_url_credentials(url)))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default();
        if self.sink_hosts.iter().any(|h| h.matches(&host, port)) {
            return Ok(());
        }
        let allowed: Vec<String> = self.sink_hosts.iter().map(ToString::to_string).collect();
        Err(format!(
            "host {host:?} is not allowed (OUTRIDER_SINK_HOSTS: {})",
            allowed.join(",")
        ))
    }

    /// Whether the app's log file found at `path` may be read: its canonical path
    /// (symlinks and `..` resolved) must match an allowed glob and lie outside the
    /// sidecar's own directories. Returns the canonical path to open.
    pub fn may_read(&self, path: &Path) -> Option<PathBuf> {
        self.read_check(path).ok()
    }

    /// [`Self::may_read`], telling why not.
    pub fn read_check(&self, path: &Path) -> Result<PathBuf, Unreadable> {
        let canonical = std::fs::canonicalize(path).map_err(|_| Unreadable::Gone)?;
        if self.private_root_of(&canonical).is_some() {
            return Err(Unreadable::Private);
        }
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::default()
        };
        let allowed = self
            .log_paths
            .iter()
            .any(|a| a.patterns.iter().any(|p| p.matches_path_with(&canonical, opts)));
        if allowed {
            Ok(canonical)
        } else {
            Err(Unreadable::Outside)
        }
    }

    /// Opens the file sink at `path` (from [`Self::sink_path`]) for appending, after
    /// checking on the file system that it stays in the sink directory: the directory
    /// and the file's parent are canonicalized, and the file itself is opened without
    /// following a symlink.
    pub fn open_sink(&self, path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let outside = || io::Error::new(io::ErrorKind::PermissionDenied, "resolves outside the sink directory");
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(outside());
        };
        if !parent.starts_with(&self.sink_dir) {
            return Err(outside());
        }
        std::fs::create_dir_all(parent)?;
        let root = std::fs::canonicalize(&self.sink_dir)?;
        let parent = std::fs::canonicalize(parent)?;
        if !parent.starts_with(&root) {
            return Err(outside());
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(parent.join(name))
    }

    /// The private directory `path` lies in, lexically or once both are canonical.
    fn private_root_of(&self, path: &Path) -> Option<&Path> {
        let canonical = canonical_lenient(path);
        self.private.iter().map(PathBuf::as_path).find(|dir| {
            path.starts_with(dir) || canonical.starts_with(dir) || canonical.starts_with(canonical_lenient(dir))
        })
    }

    fn log_paths_text(&self) -> String {
        self.log_paths
            .iter()
            .map(|a| a.text.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Allowed {
    /// Whether every path the policy glob `c` (by component) can match is matched by
    /// this allowed glob, judged component by component: a literal must match the
    /// allowed component, a wildcard must equal it or face a `*`, and only an allowed
    /// `**` covers whatever follows. Sound rather than complete: a glob it refuses may
    /// match nothing outside, but one it accepts cannot reach outside.
    fn contains(&self, c: &[String]) -> bool {
        let mut i = 0;
        loop {
            match (self.components.get(i), c.get(i)) {
                (Some(g), _) if g == "**" => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (None, None) => return true,
                (Some(g), Some(p)) => {
                    let literal = !is_wild(p);
                    let fits = if literal {
                        glob::Pattern::new(g).is_ok_and(|g| g.matches(p))
                    } else {
                        p != "**" && (p == g || g == "*")
                    };
                    if !fits {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}

impl HostPattern {
    fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse().ok()?),
            };
            (format!("[{v6}]"), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().ok()?)),
                None => (s.clone(), None),
            }
        };
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let valid = host == "*"
            || (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')));
        valid.then_some(Self { host, port })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_fits = match self.host.strip_prefix('*') {
            Some("") => true,
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => self.host == host,
        };
        host_fits && self.port.is_none_or(|p| Some(p) == port)
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A glob's path segments, without the empty ones of a leading or doubled `/`.
fn components(glob: &str) -> Vec<String> {
    glob.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn is_wild(segment: &str) -> bool {
    segment.contains(['*', '?', '['])
}

/// The directory part of a glob before its first wildcard segment (the whole path for
/// a glob without one).
fn fixed_prefix(c: &[String]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(c.iter().take_while(|s| !is_wild(s)));
    p
}

/// The allowed glob with its fixed prefix canonicalized, when that prefix exists.
fn canonical_glob(c: &[String]) -> Option<String> {
    let fixed = c.iter().take_while(|s| !is_wild(s)).count();
    let prefix = std::fs::canonicalize(fixed_prefix(c)).ok()?;
    let mut out = prefix.to_str()?.trim_end_matches('/').to_owned();
    for s in &c[fixed..] {
        out.push('/');
        out.push_str(s);
    }
    Some(out)
}

/// `path` with its longest existing ancestor canonicalized, so a path not created yet
/// is still compared in the file system's terms.
fn canonical_lenient(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        if let Ok(c) = std::fs::canonicalize(p) {
            return rest.iter().rev().fold(c, |acc: PathBuf, s| acc.join(s));
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                p = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// Removes `.` segments and resolves `..` textually: for the sidecar's own settings,
/// which may be written relative to its working directory.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> LoggingPolicy {
        outrider_policy::parse_document(json.as_bytes()).unwrap()
    }

    fn confined(dir: &Path, hosts: &str) -> Confinement {
        Confinement::new(
            &format!("{}/logs/**", dir.display()),
            &dir.join("state/sinks"),
            hosts,
            &[&dir.join("state"), &dir.join("logs/config")],
        )
        .unwrap()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn app_logs_outside_the_allowed_globs_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let c = confined(dir.path(), "");
        let d = dir.path().display();
        let p = policy(&format!(
            r#"{{"appLogs": [{{"path": "{d}/logs/app/*.log"}}, {{"path": "/etc/hostname"}},
                             {{"path": "{d}/*/x.log"}}, {{"path": "/**"}}, {{"path": "{d}/logs/config/*"}},
                             {{"path": "{d}/logs/**/*.log"}}],
                "sink": {{"type": "stdout"}}}}"#
        ));
        let errors = c.check(&p);
        assert_eq!(
            fields(&errors),
            [
                "logging.appLogs[1].path",
                "logging.appLogs[2].path",
                "logging.appLogs[3].path",
                "logging.appLogs[4].path"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("OUTRIDER_LOG_PATHS"),
            "{}",
            errors[0].message
        );
        assert!(errors[3].message.contains("never shipped"), "{}", errors[3].message);
    }

    #[test]
    fn a_symlink_out_of_the_log_volume_and_the_state_dir_inside_it_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(logs.join("config")).unwrap();
        std::fs::write(dir.path().join("secret"), "s\n").unwrap();
        std::fs::write(logs.join("app.log"), "a\n").unwrap();
        std::fs::write(logs.join("config/doc"), "d\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), logs.join("evil.log")).unwrap();
        std::os::unix::fs::symlink(logs.join("app.log"), logs.join("alias.log")).unwrap();
        let c = confined(dir.path(), "");
        assert!(c.may_read(&logs.join("app.log")).is_some());
        assert!(c.may_read(&logs.join("evil.log")).is_none(), "a symlink out is refused");
        assert!(c.may_read(&logs.join("../secret")).is_none(), "so is `..`");
        assert!(
            c.may_read(&logs.join("config/doc")).is_none(),
            "the config dir is private"
        );
        assert_eq!(
            c.may_read(&logs.join("alias.log")),
            std::fs::canonicalize(logs.join("app.log")).ok(),
            "a symlink within is read as its target"
        );
    }

    #[test]
    fn file_sinks_stay_in_the_sink_dir_and_outside_the_app_logs() {
        let dir = tempfile::tempdir().unwrap();
        let c = confined(dir.path(), "");
        let sinks = dir.path().join("state/sinks");
        assert_eq!(c.sink_path("out/a.ndjson").unwrap(), sinks.join("out/a.ndjson"));
        assert_eq!(
            c.sink_path(&sinks.join("b").display().to_string()).unwrap(),
            sinks.join("b")
        );
        assert!(c.sink_path("/etc/passwd").is_err());
        assert!(c.sink_path("../x").is_err());
        let d = dir.path().display();
        let outside = policy(r#"{"sink": {"type": "file", "path": "/tmp/x.ndjson"}}"#);
        assert_eq!(fields(&c.check(&outside)), ["logging.sink.path"]);
        // A sink directory inside the log volume: a glob over the volume would read
        // the sink back.
        let feeding = policy(&format!(
            r#"{{"appLogs": [{{"path": "{d}/logs/**"}}], "sink": {{"type": "file", "path": "out.ndjson"}}}}"#
        ));
        let wide = Confinement::new(&format!("{d}/logs/**"), &dir.path().join("logs/ship"), "", &[]).unwrap();
        let errors = wide.check(&feeding);
        assert_eq!(fields(&errors), ["logging.sink.path"]);
        assert!(errors[0].message.contains("appLogs[0]"), "{}", errors[0].message);
        std::fs::create_dir_all(dir.path().join("logs/ship")).unwrap();
        std::fs::write(dir.path().join("logs/ship/out.ndjson"), "{}\n").unwrap();
        assert!(
            wide.may_read(&dir.path().join("logs/ship/out.ndjson")).is_none(),
            "and its files are never read"
        );
    }

    #[test]
    fn opening_a_sink_refuses_a_symlink_out_of_the_sink_dir() {
        let dir = tempfile::tempdir().unwrap();
        let c = confined(dir.path(), "");
        let sinks = dir.path().join("state/sinks");
        c.open_sink(&c.sink_path("ok/a.ndjson").unwrap()).unwrap();
        std::fs::write(dir.path().join("target"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), sinks.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), sinks.join("up")).unwrap();
        assert!(
            c.open_sink(&sinks.join("link")).is_err(),
            "the file itself is a symlink"
        );
        assert!(
            c.open_sink(&sinks.join("up/target")).is_err(),
            "a parent is a symlink out"
        );
    }

    #[test]
    fn sink_hosts_allow_exact_hosts_wildcard_subdomains_and_ports() {
        let dir = tempfile::tempdir().unwrap();
        let c = confined(dir.path(), "collector:9880, *.logging.svc, [::1]:9200");
        let check = |url: &str| {
            let p = policy(&format!(r#"{{"sink": {{"type": "http", "url": "{url}"}}}}"#));
            fields(&c.check(&p)).is_empty()
        };
        assert!(check("http://collector:9880/ingest"));
        assert!(!check("http://collector:80/ingest"), "another port");
        assert!(check("https://es.logging.svc/_bulk"));
        assert!(!check("https://logging.svc/_bulk"), "the wildcard needs a subdomain");
        assert!(check("http://[::1]:9200/_bulk"));
        assert!(!check("http://169.254.169.254/latest"));
        assert!(Confinement::new("/var/log/**", dir.path(), "", &[])
            .unwrap()
            .check_url("http://any:1/")
            .is_ok());
        assert_eq!(
            Confinement::new("/var/log/**", dir.path(), "bad host", &[]).unwrap_err(),
            ConfinementError::BadHost("bad host".into())
        );
        assert!(Confinement::new("var/log/**", dir.path(), "", &[]).is_err());
    }
}
