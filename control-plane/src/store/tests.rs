//! The store's behaviours, each proven against both backends: a fresh PostgreSQL
//! database per test (`OUTRIDER_TEST_DATABASE_URL`, default the local server) and a
//! fresh SQLite file.

use super::*;
use outrider_policy::PolicyKind;
use serde_json::json;

/// A store on a database of its own; the PostgreSQL one is dropped afterwards.
pub(crate) struct TestStore {
    pub store: Store,
    _dir: tempfile::TempDir,
    pg_admin: Option<(String, String)>,
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        Self {
            store,
            _dir: dir,
            pg_admin: None,
        }
    }

    pub async fn postgres() -> Self {
        let admin_url = std::env::var("OUTRIDER_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db = format!("outrider_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::any::install_default_drivers();
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for the store tests: {e}"));
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{db}");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(&url), dir.path()).await.unwrap();
        Self {
            store,
            _dir: dir,
            pg_admin: Some((admin_url, db)),
        }
    }

    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin_url, db)) = self.pg_admin {
            if let Ok(mut admin) = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        }
    }
}

/// Runs one async test body against both backends.
macro_rules! store_test {
    ($name:ident, |$s:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($s: &Store) $body

            #[tokio::test]
            async fn postgres() {
                let t = TestStore::postgres().await;
                run(&t.store).await;
                t.cleanup().await;
            }

            #[tokio::test]
            async fn sqlite() {
                let t = TestStore::sqlite().await;
                run(&t.store).await;
                t.cleanup().await;
            }
        }
    };
}
pub(crate) use store_test;

fn rl(rps: f64) -> serde_json::Value {
    json!({"rules": [{"name": "all", "requestsPerSecond": rps, "burst": rps}]})
}

pub(crate) fn reg(id: &str, service: &str, session: &str) -> SidecarRegistration {
    SidecarRegistration {
        id: id.into(),
        service: service.into(),
        version: "v1".into(),
        namespace: "default".into(),
        pod: id.into(),
        address: "127.0.0.1".into(),
        inbound_port: 15006,
        outbound_port: 15001,
        admin_port: 15000,
        build_version: "test".into(),
        session: session.into(),
        replica: "r1".into(),
        held_revision: 0,
        instance: String::new(),
    }
}

store_test!(put_then_get_returns_the_document_and_its_revision, |s| {
    let p = s
        .put_policy("web", PolicyKind::RateLimit, &rl(5.0), Precondition::None, "alice")
        .await
        .unwrap();
    assert_eq!(p.revision, 1);
    let got = s.get_policy("web", PolicyKind::RateLimit).await.unwrap().unwrap();
    assert_eq!(got.document, rl(5.0));
    assert_eq!(got.revision, 1);
    assert!(s.get_policy("web", PolicyKind::Routing).await.unwrap().is_none());
});

store_test!(revisions_are_global_and_monotonic_across_services_and_kinds, |s| {
    let a = s
        .put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    let b = s
        .put_config("api", "app.yaml", "text/yaml", b"x: 1", Precondition::None, "a")
        .await
        .unwrap();
    let c = s
        .delete_policy("web", PolicyKind::RateLimit, Precondition::None, "a")
        .await
        .unwrap();
    assert!(a.revision < b.revision && b.revision < c);
    assert_eq!(s.latest_revision().await.unwrap(), c);
    assert_eq!(s.service_revision("web").await.unwrap(), c);
    assert_eq!(s.service_revision("api").await.unwrap(), b.revision);
});

store_test!(stale_precondition_is_refused_and_changes_nothing, |s| {
    let first = s
        .put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy(
        "web",
        PolicyKind::RateLimit,
        &rl(2.0),
        Precondition::revision(first.revision),
        "a",
    )
    .await
    .unwrap();
    let err = s
        .put_policy(
            "web",
            PolicyKind::RateLimit,
            &rl(3.0),
            Precondition::revision(first.revision),
            "b",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { current: Some(2) }),
        "{err:?}"
    );
    assert_eq!(
        s.get_policy("web", PolicyKind::RateLimit)
            .await
            .unwrap()
            .unwrap()
            .document,
        rl(2.0)
    );
    assert_eq!(
        s.latest_revision().await.unwrap(),
        2,
        "a refused write leaves no revision"
    );
    let err = s
        .put_policy("api", PolicyKind::RateLimit, &rl(3.0), Precondition::Exists, "b")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed { current: None }));
});

store_test!(
    a_revision_list_matches_any_of_its_revisions_and_absent_only_a_new_document,
    |s| {
        let first = s
            .put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::Absent, "a")
            .await
            .unwrap();
        let err = s
            .put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::Absent, "a")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { current: Some(r) } if r == first.revision));
        let listed = Precondition::AnyOf(vec![first.revision + 9, first.revision]);
        let second = s
            .put_policy("web", PolicyKind::RateLimit, &rl(2.0), listed, "a")
            .await
            .unwrap();
        let none_match = Precondition::AnyOf(vec![first.revision, second.revision + 1]);
        let err = s
            .delete_policy("web", PolicyKind::RateLimit, none_match, "a")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }));
        assert_eq!(
            s.latest_revision().await.unwrap(),
            second.revision,
            "refused writes leave no revision"
        );
    }
);

store_test!(history_keeps_actor_and_documents_before_and_after, |s| {
    s.put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "alice")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "bob")
        .await
        .unwrap();
    s.put_policy("api", PolicyKind::RateLimit, &rl(9.0), Precondition::None, "bob")
        .await
        .unwrap();
    let all = s.list_revisions(None, 100).await.unwrap();
    assert_eq!(all.iter().map(|r| r.revision).collect::<Vec<_>>(), [3, 2, 1]);
    let web = s.list_revisions(Some("web"), 100).await.unwrap();
    assert_eq!(web.len(), 2);
    let rec = s.get_revision(2).await.unwrap().unwrap();
    assert_eq!(rec.summary.actor, "bob");
    assert_eq!(rec.summary.kind, "rate-limit");
    assert_eq!(rec.before, Some(rl(1.0)));
    assert_eq!(rec.after, Some(rl(2.0)));
    assert!(s.get_revision(99).await.unwrap().is_none());
});

store_test!(revert_restores_the_state_before_a_revision, |s| {
    s.put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "a")
        .await
        .unwrap();
    let r = s.revert(2, "ops").await.unwrap();
    assert_eq!(r.summary.revision, 3);
    assert_eq!(r.summary.reverts, Some(2));
    assert_eq!(r.summary.actor, "ops");
    assert_eq!(
        s.get_policy("web", PolicyKind::RateLimit)
            .await
            .unwrap()
            .unwrap()
            .document,
        rl(1.0)
    );
    // Reverting the creation deletes the policy.
    s.revert(1, "ops").await.unwrap();
    assert!(s.get_policy("web", PolicyKind::RateLimit).await.unwrap().is_none());
    assert!(matches!(s.revert(42, "ops").await.unwrap_err(), StoreError::NotFound));
});

store_test!(config_documents_keep_bytes_and_revert, |s| {
    let bin = vec![0u8, 159, 146, 150];
    s.put_config(
        "web",
        "blob.bin",
        "application/octet-stream",
        &bin,
        Precondition::None,
        "a",
    )
    .await
    .unwrap();
    let text = s
        .put_config("web", "app.yaml", "text/yaml", b"a: 1", Precondition::None, "a")
        .await
        .unwrap();
    s.put_config(
        "web",
        "app.yaml",
        "text/yaml",
        b"a: 2",
        Precondition::revision(text.revision),
        "a",
    )
    .await
    .unwrap();
    assert_eq!(s.get_config("web", "blob.bin").await.unwrap().unwrap().content, bin);
    assert_eq!(s.list_configs("web").await.unwrap().len(), 2);
    s.revert(3, "a").await.unwrap();
    assert_eq!(s.get_config("web", "app.yaml").await.unwrap().unwrap().content, b"a: 1");
    s.delete_config("web", "blob.bin", Precondition::None, "a")
        .await
        .unwrap();
    assert!(s.get_config("web", "blob.bin").await.unwrap().is_none());
    let last = s.latest_revision().await.unwrap();
    s.revert(last, "a").await.unwrap();
    assert_eq!(s.get_config("web", "blob.bin").await.unwrap().unwrap().content, bin);
});

store_test!(delete_of_a_missing_document_is_not_found, |s| {
    let err = s
        .delete_policy("web", PolicyKind::Logging, Precondition::None, "a")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound));
    assert_eq!(s.latest_revision().await.unwrap(), 0);
});

store_test!(changes_since_lists_each_changed_service_once, |s| {
    s.put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy("api", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "a")
        .await
        .unwrap();
    let (mut services, newest) = s.changes_since(1).await.unwrap();
    services.sort();
    assert_eq!(services, ["api", "web"]);
    assert_eq!(newest, 3);
    let (services, newest) = s.changes_since(3).await.unwrap();
    assert!(services.is_empty());
    assert_eq!(newest, 3);
});

store_test!(a_nack_is_cleared_by_its_prefix_only, |s| {
    s.register_sidecar(&reg("default/web-1", "web", "s1")).await.unwrap();
    async fn nack(s: &Store) -> Option<String> {
        s.list_sidecars(Some("web")).await.unwrap()[0].last_nack.clone()
    }
    s.record_nack("default/web-1", "s1", 0, "destinations: disk full")
        .await
        .unwrap();
    s.clear_nack("default/web-1", "s1", "policy: ").await.unwrap();
    assert_eq!(nack(s).await.as_deref(), Some("destinations: disk full"));
    s.clear_nack("default/web-1", "s1", "destinations: ").await.unwrap();
    assert_eq!(nack(s).await, None);
    s.record_nack("default/web-1", "s1", 3, "rules[0]: bad").await.unwrap();
    s.clear_nack("default/web-1", "s1", "destinations: ").await.unwrap();
    assert_eq!(nack(s).await.as_deref(), Some("rules[0]: bad"));
});

store_test!(sidecar_registration_health_and_disconnect, |s| {
    s.register_sidecar(&reg("default/web-1", "web", "s1")).await.unwrap();
    s.register_sidecar(&reg("default/web-2", "web", "s2")).await.unwrap();
    s.register_sidecar(&reg("default/api-1", "api", "s3")).await.unwrap();
    let counts = s.healthy_counts(now_ms() - 5_000).await.unwrap();
    assert_eq!(counts.get("web"), Some(&2));
    s.record_ack("default/web-1", "s1", 7).await.unwrap();
    s.record_nack("default/web-2", "s2", 8, "bad policy").await.unwrap();
    s.record_health("default/web-1", "s1", &json!({"requestsTotal": 3}).to_string(), "web")
        .await
        .unwrap();
    let rows = s.list_sidecars(Some("web")).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].applied_revision, 7);
    assert_eq!(rows[0].health, Some(json!({"requestsTotal": 3})));
    assert_eq!(rows[1].last_nack.as_deref(), Some("bad policy"));
    let now = now_ms();
    assert_eq!(rows[0].status(now, 5_000, 30_000), SidecarStatus::Healthy);
    assert_eq!(rows[0].status(now + 10_000, 5_000, 30_000), SidecarStatus::Unhealthy);
    assert_eq!(rows[0].status(now + 60_000, 5_000, 30_000), SidecarStatus::Disconnected);

    // A close from a stale session does not disconnect the sidecar's new stream.
    s.register_sidecar(&reg("default/web-1", "web", "s1b")).await.unwrap();
    s.disconnect_sidecar("default/web-1", "s1", "web").await.unwrap();
    assert!(s.list_sidecars(Some("web")).await.unwrap()[0].connected);
    s.disconnect_sidecar("default/web-1", "s1b", "web").await.unwrap();
    let rows = s.list_sidecars(Some("web")).await.unwrap();
    assert_eq!(rows[0].status(now_ms(), 5_000, 30_000), SidecarStatus::Disconnected);
    assert_eq!(s.healthy_counts(now_ms() - 5_000).await.unwrap().get("web"), Some(&1));
    assert_eq!(s.list_services().await.unwrap(), ["api", "web"]);
});

#[tokio::test]
async fn sqlite_store_keeps_policies_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(None, dir.path()).await.unwrap();
        s.put_policy("web", PolicyKind::RateLimit, &rl(5.0), Precondition::None, "a")
            .await
            .unwrap();
        s.close().await;
    }
    let s = Store::open(None, dir.path()).await.unwrap();
    assert_eq!(
        s.get_policy("web", PolicyKind::RateLimit)
            .await
            .unwrap()
            .unwrap()
            .document,
        rl(5.0)
    );
}

#[tokio::test]
async fn concurrent_postgres_writers_commit_in_revision_order() {
    let t = TestStore::postgres().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = t.store.clone();
        tasks.push(tokio::spawn(async move {
            s.put_policy(
                &format!("svc-{i}"),
                PolicyKind::RateLimit,
                &rl(1.0),
                Precondition::None,
                "a",
            )
            .await
            .unwrap()
        }));
    }
    let mut revs: Vec<u64> = Vec::new();
    for t in tasks {
        revs.push(t.await.unwrap().revision);
    }
    revs.sort();
    assert_eq!(revs, (1..=16).collect::<Vec<_>>(), "no gaps, no duplicates");
    t.cleanup().await;
}

store_test!(canary_rollouts_are_exclusive_and_driven_by_one_lease_holder, |s| {
    let spec = json!({"subset": "v2", "steps": [10, 100], "interval": "1s"});
    let r = s.start_rollout("web", &spec, "alice").await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.step, r.step_started_ms), ("running", 0, 0));
    assert_eq!(r.actor, "alice");
    assert!(
        s.start_rollout("web", &spec, "bob").await.unwrap().is_none(),
        "one at a time"
    );
    assert!(s.claim_rollout("web", "cp-a", 60_000).await.unwrap());
    assert!(
        !s.claim_rollout("web", "cp-b", 60_000).await.unwrap(),
        "the lease is held"
    );
    let mut step = r.clone();
    step.step = 1;
    assert!(!s.save_rollout(&step, "cp-b").await.unwrap(), "no lease, no write");
    assert!(s.save_rollout(&step, "cp-a").await.unwrap());
    assert_eq!(s.get_rollout("web").await.unwrap().unwrap().step, 1);
    assert_eq!(s.running_rollouts().await.unwrap().len(), 1);
    assert!(s.abort_rollout("web", "stop").await.unwrap());
    assert!(!s.abort_rollout("web", "stop").await.unwrap());
    assert!(
        !s.save_rollout(&step, "cp-a").await.unwrap(),
        "an aborted rollout stays aborted"
    );
    assert_eq!(s.get_rollout("web").await.unwrap().unwrap().state, "aborted");
    // A new rollout may start once the previous one ended; an expired lease moves.
    let again = s.start_rollout("web", &spec, "bob").await.unwrap().unwrap();
    assert_eq!(
        (again.state.as_str(), again.step, again.actor.as_str()),
        ("running", 0, "bob")
    );
    assert!(s.claim_rollout("web", "cp-b", -1).await.unwrap());
    assert!(
        s.claim_rollout("web", "cp-a", 60_000).await.unwrap(),
        "cp-b's lease had expired"
    );
});

store_test!(a_holding_rollout_stays_active_and_keeps_its_step_window, |s| {
    let spec = json!({"subset": "v2", "steps": [10, 100], "interval": "1s"});
    let mut r = s.start_rollout("web", &spec, "alice").await.unwrap().unwrap();
    assert!(s.claim_rollout("web", "cp-a", 60_000).await.unwrap());
    r.state = "holding".into();
    r.window = json!({"callers": {"client-1": {"v2": [7, 1]}}});
    assert!(s.save_rollout(&r, "cp-a").await.unwrap());
    let held = s.active_rollout("web").await.unwrap().expect("holding is active");
    assert_eq!((held.state.as_str(), &held.window), ("holding", &r.window));
    assert!(
        s.start_rollout("web", &spec, "bob").await.unwrap().is_none(),
        "holding blocks a second start"
    );
    assert_eq!(s.running_rollouts().await.unwrap().len(), 1);
    assert!(
        s.claim_rollout("web", "cp-a", 60_000).await.unwrap(),
        "its driver keeps the lease"
    );
    assert!(s.abort_rollout("web", "stop").await.unwrap());
    assert!(s.active_rollout("web").await.unwrap().is_none());
});

store_test!(routing_policies_and_their_revision_are_listed_for_discovery, |s| {
    assert_eq!(s.routing_revision().await.unwrap(), 0);
    let doc = json!({"routes": [{"name": "d", "backends": [{"subset": "v1", "weight": 100}]}]});
    let p = s
        .put_policy("web", PolicyKind::Routing, &doc, Precondition::None, "t")
        .await
        .unwrap();
    s.put_policy("api", PolicyKind::RateLimit, &rl(5.0), Precondition::None, "t")
        .await
        .unwrap();
    let listed = s.list_routing_policies().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "web");
    assert_eq!(s.routing_revision().await.unwrap(), p.revision);
});

store_test!(
    config_documents_past_the_service_budget_are_refused_and_nothing_is_written,
    |s| {
        use outrider_policy::limits::{DOCUMENT_MAX_BYTES, SERVICE_CONFIG_MAX_BYTES, SERVICE_CONFIG_MAX_DOCUMENTS};
        let full = vec![b'x'; DOCUMENT_MAX_BYTES];
        let n = SERVICE_CONFIG_MAX_BYTES / DOCUMENT_MAX_BYTES;
        for i in 0..n {
            s.put_config("web", &format!("doc-{i}"), "text/plain", &full, Precondition::None, "t")
                .await
                .unwrap();
        }
        let revision = s.service_revision("web").await.unwrap();
        let err = s
            .put_config("web", "one-more", "text/plain", b"x", Precondition::None, "t")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge(_)), "{err:?}");
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(s.get_config("web", "one-more").await.unwrap().is_none());
        assert_eq!(
            s.service_revision("web").await.unwrap(),
            revision,
            "no revision for a refused write"
        );
        assert!(
            s.check_config_room("web", "one-more", 1).await.is_err(),
            "a dry run sees the same"
        );
        // Replacing a document counts its new size only, not old and new together.
        s.put_config("web", "doc-0", "text/plain", &full, Precondition::None, "t")
            .await
            .unwrap();
        // Other services have budgets of their own.
        s.put_config("api", "one-more", "text/plain", b"x", Precondition::None, "t")
            .await
            .unwrap();
        for i in 0..SERVICE_CONFIG_MAX_DOCUMENTS {
            s.put_config("many", &format!("d{i}"), "text/plain", b"", Precondition::None, "t")
                .await
                .unwrap();
        }
        let err = s
            .put_config("many", "too-many", "text/plain", b"", Precondition::None, "t")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge(_)), "{err:?}");
    }
);

/// `sslmode` in the URL is honoured (the store's PostgreSQL client is built with
/// rustls): `require` speaks TLS where the server offers it and fails with a TLS
/// error where it does not; `prefer` connects either way.
#[tokio::test]
async fn postgres_sslmode_require_speaks_tls_and_prefer_still_connects() {
    let t = TestStore::postgres().await;
    let server_ssl: String = sqlx::query_scalar("SHOW ssl").fetch_one(&t.store.pool).await.unwrap();
    let url = t.store.url().to_owned();
    let with = |mode: &str| format!("{url}{}sslmode={mode}", if url.contains('?') { '&' } else { '?' });
    let dir = tempfile::tempdir().unwrap();

    let preferred = Store::open(Some(&with("prefer")), dir.path()).await.unwrap();
    preferred.close().await;

    match Store::open(Some(&with("require")), dir.path()).await {
        Ok(required) => {
            assert_eq!(server_ssl, "on", "sslmode=require connected to a server without SSL");
            let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&required.pool)
                .await
                .unwrap();
            assert!(encrypted, "sslmode=require gave a plaintext session");
            required.close().await;
        }
        Err(e) => {
            assert_eq!(
                server_ssl, "off",
                "sslmode=require failed against a server with SSL: {e}"
            );
            let text = e.to_string();
            assert!(!text.contains("without TLS support"), "{text}");
            assert!(matches!(e, StoreError::Db(sqlx::Error::Tls(_))), "{text}");
        }
    }
    t.cleanup().await;
}
