//! Tokens and propagation, proven against both backends.

use super::tests::{reg, store_test, TestStore};
use super::*;
use outrider_policy::PolicyKind;
use serde_json::json;

fn rl(rps: f64) -> serde_json::Value {
    json!({"rules": [{"name": "all", "requestsPerSecond": rps}]})
}

store_test!(tokens_are_found_by_hash_until_revoked, |s| {
    assert!(!s.has_tokens().await.unwrap());
    s.create_token("alice", Role::Editor, "h-alice").await.unwrap();
    s.create_token("bob", Role::Viewer, "h-bob").await.unwrap();
    assert!(s.has_tokens().await.unwrap());
    let a = s.token_by_hash("h-alice").await.unwrap().unwrap();
    assert_eq!((a.name.as_str(), a.role), ("alice", Role::Editor));
    assert!(s.token_by_hash("nope").await.unwrap().is_none());
    s.revoke_token("alice").await.unwrap();
    assert!(s.token_by_hash("h-alice").await.unwrap().is_none());
    assert!(matches!(s.revoke_token("alice").await, Err(StoreError::NotFound)));
    let names: Vec<(String, bool)> = s
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.revoked_at_ms.is_some()))
        .collect();
    assert_eq!(names, vec![("alice".into(), true), ("bob".into(), false)]);
    s.revoke_token("bob").await.unwrap();
    assert!(!s.has_tokens().await.unwrap(), "only revoked tokens left");
});

store_test!(a_token_name_cannot_be_taken_twice_even_after_revocation, |s| {
    s.create_token("alice", Role::Editor, "h1").await.unwrap();
    s.revoke_token("alice").await.unwrap();
    assert!(matches!(
        s.create_token("alice", Role::Admin, "h2").await,
        Err(StoreError::AlreadyExists)
    ));
});

store_test!(the_last_live_admin_token_is_kept_and_any_other_token_revoked, |s| {
    s.create_token("root", Role::Admin, "h-root").await.unwrap();
    s.create_token("alice", Role::Editor, "h-alice").await.unwrap();
    assert!(
        !s.revoke_token_keeping_an_admin("root").await.unwrap(),
        "the last admin stays"
    );
    assert!(s.token_by_hash("h-root").await.unwrap().is_some());
    assert!(
        s.revoke_token_keeping_an_admin("alice").await.unwrap(),
        "an admin is left"
    );
    s.create_token("second", Role::Admin, "h-second").await.unwrap();
    assert!(s.revoke_token_keeping_an_admin("root").await.unwrap());
    assert!(!s.revoke_token_keeping_an_admin("second").await.unwrap());
    assert!(matches!(
        s.revoke_token_keeping_an_admin("nobody").await,
        Err(StoreError::NotFound)
    ));
    assert!(s.has_tokens().await.unwrap(), "the API never reopens");
});

store_test!(propagation_counts_acks_of_sidecars_connected_at_write_time, |s| {
    s.register_sidecar(&reg("a", "web", "sa")).await.unwrap();
    s.register_sidecar(&reg("b", "web", "sb")).await.unwrap();
    s.register_sidecar(&reg("c", "api", "sc")).await.unwrap();
    let r1 = s
        .put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "t")
        .await
        .unwrap()
        .revision;
    let p = s.propagation(r1).await.unwrap();
    assert_eq!((p.applied, p.pending, p.last_ack_seconds), (0, 2, None));

    let delays = s.record_propagation("a", "sa", r1).await.unwrap();
    assert_eq!(delays.len(), 1);
    s.record_ack("a", "sa", r1).await.unwrap();
    // A repeated ACK of the same revision counts once.
    assert!(s.record_propagation("a", "sa", r1).await.unwrap().is_empty());
    let p = s.propagation(r1).await.unwrap();
    assert_eq!((p.applied, p.pending), (1, 1));
    assert!(p.last_ack_seconds.unwrap() >= 0.0);

    // b acks a later revision: it applied r1 too.
    let r2 = s
        .put_policy("web", PolicyKind::RateLimit, &rl(2.0), Precondition::None, "t")
        .await
        .unwrap()
        .revision;
    assert_eq!(s.record_propagation("b", "sb", r2).await.unwrap().len(), 2);
    s.record_ack("b", "sb", r2).await.unwrap();
    let all = s.propagation_range(r1, r2).await.unwrap();
    assert_eq!((all[&r1].applied, all[&r1].pending), (2, 0));
    assert_eq!((all[&r2].applied, all[&r2].pending), (1, 1));

    // A stale session's ACK and a sidecar of another service count for nothing.
    assert!(s.record_propagation("a", "old", r2).await.unwrap().is_empty());
    assert!(s.record_propagation("c", "sc", r2).await.unwrap().is_empty());
});

store_test!(a_sidecar_that_connects_after_a_write_does_not_count_for_it, |s| {
    let r1 = s
        .put_policy("web", PolicyKind::RateLimit, &rl(1.0), Precondition::None, "t")
        .await
        .unwrap()
        .revision;
    // Registration stamps connected_at at "now", which may equal the write's ms.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.register_sidecar(&reg("late", "web", "s")).await.unwrap();
    assert!(s.record_propagation("late", "s", r1).await.unwrap().is_empty());
    let p = s.propagation(r1).await.unwrap();
    assert_eq!((p.applied, p.pending), (0, 0));
});
