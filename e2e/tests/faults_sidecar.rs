//! The sidecar's persisted state under faults, with the real binaries
//! (`docs/reference.md`, Static stability): a full state disk NACKs instead of ACKing
//! what it could not persist, a damaged `snapshot.pb` is refused rather than enforced,
//! and a restart while the control plane is down enforces exactly the last ACKed
//! revision.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_for, wait_until};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sidecar retries a NACKed snapshot with a backoff capped at 10 s; the control
/// plane writes ACKs in batches about once a second.
const RETRY_WINDOW: Duration = Duration::from_secs(30);

const LIMIT_3: &str = r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":3}]}"#;
const LIMIT_6: &str = r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":6}]}"#;

/// A small tmpfs mounted for one test, unmounted (lazily, whatever still has files
/// open in it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this environment does not let the test mount (not root, or a
    /// container without CAP_SYS_ADMIN).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_owned())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); run as root with mount permitted",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system has no space left; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut f = std::fs::File::create(path).unwrap();
    let block = [0x5a_u8; 4096];
    let mut written = 0;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
    }
    // Whatever the page cache still holds must hit the same wall now, not later.
    let _ = f.sync_all();
    written
}

/// The value, or the sidecar's log tail and a panic with the error.
fn or_log_tail<T>(sc: &Sidecar, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        sc.proc.print_log_tail(40);
        panic!("{e}")
    })
}

/// This sidecar's row in `GET /api/v1/sidecars`.
async fn row(cp: &ControlPlane, id: &str) -> Value {
    let list = cp.get_json("/sidecars").await;
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

async fn put_limit(cp: &ControlPlane, doc: &str) -> u64 {
    let (status, body) = cp.put_policy("web", "rate-limit", doc).await;
    assert_eq!(status, 200, "{body}");
    body["revision"].as_u64().unwrap()
}

/// The revision the control plane says this sidecar applied, once it says `want`.
async fn wait_applied(cp: &ControlPlane, sc: &Sidecar, want: u64) {
    let id = sc.id();
    let r = wait_until(RETRY_WINDOW, || async {
        let r = row(cp, &id).await;
        r["appliedRevision"] == want && r["lastNack"].is_null()
    })
    .await;
    or_log_tail(sc, r.map_err(|e| e.context(format!("never ACKed {want}"))));
}

#[tokio::test]
async fn a_full_state_disk_nacks_the_new_policy_with_the_reason_and_acks_it_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sc");
    let Some(_tmpfs) = Tmpfs::mount(&state, "64k") else {
        return;
    };
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", app_port, &state).await;
    let first = put_limit(&cp, LIMIT_3).await;
    sc.wait_revision(first).await;
    wait_applied(&cp, &sc, first).await;

    let filler = state.join("filler");
    assert!(fill(&filler) > 0, "the tmpfs had room to fill");
    let second = put_limit(&cp, LIMIT_6).await;
    let id = sc.id();
    let nacked = wait_for(RETRY_WINDOW, || async {
        let r = row(&cp, &id).await;
        if r["lastNack"]["revision"] == second {
            Ok(r)
        } else {
            anyhow::bail!("no NACK of {second} yet: {r}")
        }
    })
    .await;
    let nacked = or_log_tail(&sc, nacked);
    let error = nacked["lastNack"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("state dir: ") && error.contains("No space left on device"),
        "the reason says what failed: {error}"
    );
    assert_eq!(
        nacked["appliedRevision"], first,
        "no ACK for what is not on disk: {nacked}"
    );
    assert_eq!(
        sc.config_dump().await["revision"],
        first,
        "the ACKed policy stays in force"
    );
    let codes = sc.burst(10, None).await;
    assert!(
        (3..=4).contains(&count(&codes, 200)),
        "still the first limit: {codes:?}"
    );

    // Space again: the sidecar's own retry ACKs it, without another write.
    std::fs::remove_file(&filler).unwrap();
    wait_applied(&cp, &sc, second).await;
    assert_eq!(sc.config_dump().await["revision"], second);
}

#[tokio::test]
async fn a_damaged_snapshot_file_is_refused_at_start_and_nothing_is_enforced_until_the_control_plane_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let state = dir.path().join("sc");
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", app_port, &state).await;
    let rev = put_limit(&cp, LIMIT_3).await;
    sc.wait_revision(rev).await;
    assert!(sc.proc.terminate().success());
    cp.proc.kill9();

    // One byte flipped in the middle of the file: inside the policy it holds.
    let file = state.join("snapshot.pb");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    sc.restart().await;
    let log = wait_for(SOON, || async {
        let log = sc.proc.log();
        if log.contains("ignoring the persisted snapshot") {
            Ok(log)
        } else {
            anyhow::bail!("nothing logged about the snapshot yet")
        }
    })
    .await;
    let log = or_log_tail(&sc, log);
    assert!(
        log.contains("checksum mismatch") && log.contains("snapshot.pb.corrupt"),
        "the log says why and where the file went: {}",
        sc.proc.log_tail(10)
    );
    let ready = client()
        .get(format!("{}/readyz", sc.admin()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "not ready on a refused snapshot");
    let dump = sc.config_dump().await;
    assert!(dump["revision"].as_u64().unwrap_or(0) == 0, "nothing applied: {dump}");
    let codes = sc.burst(8, None).await;
    assert_eq!(count(&codes, 200), 8, "the damaged limit is not enforced: {codes:?}");
    assert_eq!(std::fs::read(state.join("snapshot.pb.corrupt")).unwrap(), bytes);
    assert!(!file.exists(), "moved aside, not loaded again at the next start");
}

#[tokio::test]
async fn a_sidecar_restarted_while_the_control_plane_is_down_enforces_the_last_acked_revision_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", app_port, &dir.path().join("sc")).await;
    let first = put_limit(&cp, LIMIT_3).await;
    wait_applied(&cp, &sc, first).await;
    let last = put_limit(&cp, LIMIT_6).await;
    wait_applied(&cp, &sc, last).await;

    cp.proc.kill9();
    assert!(sc.proc.terminate().success());
    sc.restart().await;
    outrider_testkit::wait_for_http_ok(&format!("{}/readyz", sc.admin()), SOON)
        .await
        .expect("ready from disk");
    let dump = sc.config_dump().await;
    assert_eq!(
        (dump["source"].as_str(), dump["revision"].as_u64()),
        (Some("persisted"), Some(last)),
        "{dump}"
    );
    let codes = sc.burst(12, None).await;
    assert!(
        (6..=7).contains(&count(&codes, 200)),
        "the burst of the last ACKed revision, not the first: {codes:?}"
    );
}
