//! Reverts and error classification, proven against both backends.

use super::tests::{store_test, TestStore};
use super::*;
use outrider_policy::PolicyKind;
use serde_json::json;

fn rl(rps: f64) -> serde_json::Value {
    json!({"rules": [{"name": "all", "requestsPerSecond": rps}]})
}

/// Makes `revisions` append-only, so a write that records anything after its INSERT fails.
async fn forbid_history_updates(s: &Store) {
    let statements: &[&str] = match s.backend() {
        Backend::Postgres => &[
            "CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'revisions are append-only'; END $$",
            "CREATE TRIGGER append_only BEFORE UPDATE ON revisions FOR EACH ROW EXECUTE FUNCTION append_only()",
        ],
        Backend::Sqlite => &["CREATE TRIGGER append_only BEFORE UPDATE ON revisions
             BEGIN SELECT RAISE(ABORT, 'revisions are append-only'); END"],
    };
    for sql in statements {
        sqlx::query(sql).execute(&s.pool).await.unwrap();
    }
}

store_test!(a_revert_is_recorded_with_reverts_in_its_own_revision_row, |s| {
    forbid_history_updates(s).await;
    s.put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "a")
        .await
        .unwrap();
    let r = s.revert(2, "ops").await.unwrap();
    assert_eq!((r.summary.revision, r.summary.reverts), (3, Some(2)));
    // What every other reader sees, read back from the table rather than from revert().
    let stored = s.get_revision(3).await.unwrap().unwrap();
    assert_eq!(stored, r);
    assert_eq!(stored.before, Some(rl(2.0)));
    assert_eq!(stored.after, Some(rl(1.0)));
    let listed = s.list_revisions(Some("web"), 1).await.unwrap();
    assert_eq!(listed[0].reverts, Some(2));
    assert_eq!(
        s.latest_revision().await.unwrap(),
        3,
        "a revert takes exactly one revision"
    );
});

store_test!(a_revert_of_a_revert_restores_the_reverted_change, |s| {
    forbid_history_updates(s).await;
    s.put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "a")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "a")
        .await
        .unwrap();
    s.revert(2, "ops").await.unwrap();
    let again = s.revert(3, "ops").await.unwrap();
    assert_eq!((again.summary.revision, again.summary.reverts), (4, Some(3)));
    let p = s.get_policy("web", PolicyKind::RateLimit).await.unwrap().unwrap();
    assert_eq!((p.document, p.revision), (rl(2.0), 4));

    // Through a deletion: revert the creation (a delete), then revert that (a put).
    let created = s
        .put_config("web", "app.yaml", "text/yaml", b"a: 1", Precondition::None, "a")
        .await
        .unwrap();
    let deleted = s.revert(created.revision, "ops").await.unwrap();
    assert_eq!(deleted.summary.operation, "delete");
    assert_eq!(deleted.summary.reverts, Some(created.revision));
    assert!(s.get_config("web", "app.yaml").await.unwrap().is_none());
    let restored = s.revert(deleted.summary.revision, "ops").await.unwrap();
    assert_eq!(restored.summary.operation, "put");
    assert_eq!(restored.summary.reverts, Some(deleted.summary.revision));
    let c = s.get_config("web", "app.yaml").await.unwrap().unwrap();
    assert_eq!(
        (c.content.as_slice(), c.revision),
        (&b"a: 1"[..], restored.summary.revision)
    );
});

store_test!(a_revert_that_cannot_apply_leaves_no_revision, |s| {
    s.put_policy("web", PolicyKind::Logging, &json!({}), Precondition::None, "a")
        .await
        .unwrap();
    s.delete_policy("web", PolicyKind::Logging, Precondition::None, "a")
        .await
        .unwrap();
    // Reverting the creation would delete a policy that is already gone.
    assert!(matches!(s.revert(1, "ops").await, Err(StoreError::NotFound)));
    assert_eq!(s.latest_revision().await.unwrap(), 2);
    assert!(matches!(s.revert(99, "ops").await, Err(StoreError::NotFound)));
});

store_test!(store_errors_tell_an_unavailable_database_from_a_failed_statement, |s| {
    let dup = "INSERT INTO api_tokens (name, role, token_hash, created_at_ms) VALUES ('t', 'viewer', 'h', 0)";
    sqlx::query(dup).execute(&s.pool).await.unwrap();
    let err = StoreError::from(sqlx::query(dup).execute(&s.pool).await.unwrap_err());
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(!err.is_unavailable());
    let err = StoreError::from(
        sqlx::query("SELECT nope FROM nowhere")
            .execute(&s.pool)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, StoreError::Db(_)) && !err.is_unavailable(), "{err:?}");
    for err in [
        StoreError::NotFound,
        StoreError::AlreadyExists,
        StoreError::Corrupt("x".into()),
    ] {
        assert!(!err.is_unavailable(), "{err:?}");
    }
    s.close().await;
    let err = s.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "a closed pool is unavailable: {err:?}");
});
