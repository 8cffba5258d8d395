//! Secrets, proven against both backends: sealed at rest, bound to their row, kept
//! out of the history, refused without a key or with another one.

use super::tests::{store_test, TestStore};
use super::*;
use crate::vault::SecretsKey;

const VALUE: &[u8] = b"correct horse battery staple";

fn keyed(s: &Store, byte: u8) -> Store {
    s.clone().with_secrets_key(Some(SecretsKey::from_bytes(&[byte; 32])))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

store_test!(a_secret_is_stored_sealed_and_read_back_only_for_snapshots, |s| {
    let s = keyed(s, 1);
    let meta = s
        .put_secret("web", "db-password", VALUE, Precondition::None, "ops")
        .await
        .unwrap();
    assert_eq!((meta.name.as_str(), meta.size), ("db-password", VALUE.len() as u64));
    // The row holds neither the value nor anything that starts like it.
    let (sealed, key_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT sealed, key_id FROM secrets WHERE service = 'web' AND name = 'db-password'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert!(!contains(&sealed, VALUE) && !contains(&sealed, &VALUE[..8]));
    assert_eq!(key_id, SecretsKey::from_bytes(&[1; 32]).id());
    assert_eq!(s.get_secret("web", "db-password").await.unwrap(), Some(meta.clone()));
    assert_eq!(s.list_secrets("web").await.unwrap(), vec![meta.clone()]);
    assert!(s.list_secrets("api").await.unwrap().is_empty());
    let values = s.secret_values("web").await.unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!((values[0].value.as_slice(), values[0].revision), (VALUE, meta.revision));
    assert!(s.secret_values("api").await.unwrap().is_empty());
});

store_test!(the_history_of_a_secret_has_its_name_and_size_but_never_its_value, |s| {
    let s = keyed(s, 1);
    let put = s
        .put_secret("web", "token", VALUE, Precondition::None, "ops")
        .await
        .unwrap();
    let again = s
        .put_secret("web", "token", b"second value", Precondition::None, "ops")
        .await
        .unwrap();
    let deleted = s
        .delete_secret("web", "token", Precondition::None, "ops")
        .await
        .unwrap();
    for rev in [put.revision, again.revision, deleted] {
        let r = s.get_revision(rev).await.unwrap().unwrap();
        assert_eq!(
            (r.summary.kind.as_str(), r.summary.actor.as_str()),
            (SECRET_KIND, "ops")
        );
        let docs = format!("{:?} {:?}", r.before, r.after);
        assert!(
            !docs.contains("correct horse") && !docs.contains("second value"),
            "{docs}"
        );
    }
    let r = s.get_revision(again.revision).await.unwrap().unwrap();
    assert_eq!(
        r.before,
        Some(serde_json::json!({"name": "token", "size": VALUE.len()}))
    );
    assert_eq!(r.after, Some(serde_json::json!({"name": "token", "size": 12})));
    // Nothing else in the history mentions the value either.
    let docs: Vec<(Option<String>, Option<String>)> = sqlx::query_as("SELECT before_doc, after_doc FROM revisions")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    assert!(!format!("{docs:?}").contains("horse"));
    // And a revert, which would need the value, is refused naming why.
    assert!(matches!(s.revert(again.revision, "ops").await, Err(StoreError::Refused(m)) if m.contains("secret")));
    assert_eq!(s.latest_revision().await.unwrap(), deleted);
});

store_test!(secret_writes_honour_preconditions_and_the_service_count, |s| {
    let s = keyed(s, 1);
    let first = s
        .put_secret("web", "a", b"1", Precondition::Absent, "ops")
        .await
        .unwrap();
    assert!(matches!(
        s.put_secret("web", "a", b"2", Precondition::Absent, "ops").await,
        Err(StoreError::PreconditionFailed { current: Some(r) }) if r == first.revision
    ));
    assert!(matches!(
        s.delete_secret("web", "a", Precondition::revision(first.revision + 10), "ops")
            .await,
        Err(StoreError::PreconditionFailed { .. })
    ));
    s.put_secret("web", "a", b"2", Precondition::revision(first.revision), "ops")
        .await
        .unwrap();
    for i in 1..outrider_policy::limits::SERVICE_SECRETS_MAX {
        s.put_secret("web", &format!("s{i}"), b"x", Precondition::None, "ops")
            .await
            .unwrap();
    }
    assert!(matches!(
        s.put_secret("web", "one-too-many", b"x", Precondition::None, "ops")
            .await,
        Err(StoreError::TooLarge(_))
    ));
    assert!(matches!(
        s.check_secret_room("web", "one-too-many").await,
        Err(StoreError::TooLarge(_))
    ));
    // Replacing one that exists is no new secret.
    s.put_secret("web", "a", b"3", Precondition::None, "ops").await.unwrap();
    s.check_secret_room("web", "a").await.unwrap();
    assert!(matches!(
        s.delete_secret("web", "missing", Precondition::None, "ops").await,
        Err(StoreError::NotFound)
    ));
});

store_test!(
    without_a_key_secrets_are_refused_and_with_another_key_never_opened,
    |s| {
        assert!(matches!(
            s.put_secret("web", "a", VALUE, Precondition::None, "ops").await,
            Err(StoreError::SecretsKeyMissing)
        ));
        let one = keyed(s, 1);
        one.put_secret("web", "a", VALUE, Precondition::None, "ops")
            .await
            .unwrap();
        // No key: metadata still reads and deletes work, values do not.
        assert_eq!(s.list_secrets("web").await.unwrap().len(), 1);
        assert!(matches!(
            s.secret_values("web").await,
            Err(StoreError::SecretsKeyMissing)
        ));
        assert_eq!(s.secrets_sealed_with_other_keys().await.unwrap(), 1);
        // Another key: recognised by its id, and reported naming both ids.
        let two = keyed(s, 2);
        assert_eq!(two.secrets_sealed_with_other_keys().await.unwrap(), 1);
        assert_eq!(one.secrets_sealed_with_other_keys().await.unwrap(), 0);
        match two.secret_values("web").await {
            Err(e @ StoreError::SecretUnreadable { .. }) => {
                let m = e.to_string();
                assert!(m.contains(SecretsKey::from_bytes(&[1; 32]).id()), "{m}");
                assert!(m.contains(SecretsKey::from_bytes(&[2; 32]).id()), "{m}");
            }
            other => panic!("expected SecretUnreadable, got {other:?}"),
        }
        // A sealed value moved to another secret's row does not open there.
        one.put_secret("web", "b", b"other", Precondition::None, "ops")
            .await
            .unwrap();
        sqlx::query("UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE name = 'a') WHERE name = 'b'")
            .execute(&s.pool)
            .await
            .unwrap();
        assert!(
            matches!(one.secret_values("web").await, Err(StoreError::SecretUnreadable { name, .. }) if name == "b")
        );
        s.delete_secret("web", "b", Precondition::None, "ops").await.unwrap();
        assert_eq!(one.secret_values("web").await.unwrap()[0].value, VALUE);
    }
);
