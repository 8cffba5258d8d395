//! Paged, filtered sidecar listings, proven against both backends.

use super::tests::{reg, store_test, TestStore};
use super::*;
use serde_json::json;

fn ids(rows: &[SidecarRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

/// Every page of `filter`, `limit` at a time, as ids.
async fn all_pages(s: &Store, filter: &SidecarFilter, limit: u32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_sidecars_page(filter, limit, after.as_ref()).await.unwrap();
        pages.push(page.rows.iter().map(|r| r.id.clone()).collect());
        match page.next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

store_test!(sidecar_pages_follow_each_other_in_order_without_gaps, |s| {
    for (id, service) in [
        ("default/web-2", "web"),
        ("default/api-1", "api"),
        ("default/web-1", "web"),
    ] {
        s.register_sidecar(&reg(id, service, id)).await.unwrap();
    }
    let pages = all_pages(s, &SidecarFilter::default(), 2).await;
    assert_eq!(
        pages,
        [vec!["default/api-1", "default/web-1"], vec!["default/web-2"]],
        "ordered by service, version, pod"
    );
    let whole = s.list_sidecars(None).await.unwrap();
    assert_eq!(pages.concat(), ids(&whole), "the same rows as the unpaged listing");
    // A page that ends exactly at the last row says there is no next one.
    let page = s.list_sidecars_page(&SidecarFilter::default(), 3, None).await.unwrap();
    assert_eq!((page.rows.len(), page.next), (3, None));
    // The cursor is a sort key, so it still works once its row is gone.
    let first = s.list_sidecars_page(&SidecarFilter::default(), 1, None).await.unwrap();
    s.disconnect_sidecar("default/api-1", "default/api-1", "api")
        .await
        .unwrap();
    s.prune_sidecars(now_ms() + 1).await.unwrap();
    let rest = s
        .list_sidecars_page(&SidecarFilter::default(), 10, first.next.as_ref())
        .await
        .unwrap();
    assert_eq!(ids(&rest.rows), ["default/web-1", "default/web-2"]);
});

store_test!(sidecar_pages_filter_by_service_and_text_in_the_database, |s| {
    for (id, service) in [
        ("default/web-1", "web"),
        ("default/api-1", "api"),
        ("prod/Web_x", "shop"),
    ] {
        s.register_sidecar(&reg(id, service, id)).await.unwrap();
    }
    let by_service = SidecarFilter {
        service: Some("web".into()),
        ..Default::default()
    };
    assert_eq!(all_pages(s, &by_service, 10).await, [vec!["default/web-1"]]);
    let text = |t: &str| SidecarFilter {
        text: Some(t.into()),
        ..Default::default()
    };
    // Case-insensitive, over id, service, version, pod and address.
    assert_eq!(
        all_pages(s, &text("WEB"), 10).await,
        [vec!["prod/Web_x", "default/web-1"]],
        "shop before web"
    );
    assert_eq!(all_pages(s, &text("shop"), 10).await, [vec!["prod/Web_x"]]);
    // LIKE wildcards in the text are taken literally.
    assert_eq!(all_pages(s, &text("b_x"), 10).await, [vec!["prod/Web_x"]]);
    assert_eq!(all_pages(s, &text("%"), 10).await, [Vec::<String>::new()]);
    assert_eq!(
        all_pages(s, &text(""), 10).await[0].len(),
        3,
        "empty text does not filter"
    );
});

store_test!(sidecar_pages_filter_by_the_status_rows_derive, |s| {
    for id in ["default/web-1", "default/web-2", "default/web-3", "default/web-4"] {
        s.register_sidecar(&reg(id, "web", id)).await.unwrap();
    }
    s.disconnect_sidecar("default/web-2", "default/web-2", "web")
        .await
        .unwrap();
    s.record_health(
        "default/web-3",
        "default/web-3",
        &json!({"appHealthy": false}).to_string(),
        "web",
    )
    .await
    .unwrap();
    s.record_health(
        "default/web-4",
        "default/web-4",
        &json!({"appHealthy": true}).to_string(),
        "web",
    )
    .await
    .unwrap();
    let at = |now: i64, status| SidecarFilter {
        status: Some(StatusFilter {
            status,
            now_ms: now,
            unhealthy_after_ms: 5_000,
            disconnected_after_ms: 30_000,
        }),
        ..Default::default()
    };
    let now = now_ms();
    let listed = |pages: Vec<Vec<String>>| pages.concat();
    assert_eq!(
        listed(all_pages(s, &at(now, SidecarStatus::Healthy), 1).await),
        ["default/web-1", "default/web-4"]
    );
    assert_eq!(
        listed(all_pages(s, &at(now, SidecarStatus::Unhealthy), 1).await),
        ["default/web-3"]
    );
    assert_eq!(
        listed(all_pages(s, &at(now, SidecarStatus::Disconnected), 1).await),
        ["default/web-2"]
    );
    // Silence: later, the connected ones are unhealthy, then disconnected.
    assert_eq!(
        listed(all_pages(s, &at(now + 10_000, SidecarStatus::Unhealthy), 10).await),
        ["default/web-1", "default/web-3", "default/web-4"]
    );
    assert_eq!(
        listed(all_pages(s, &at(now + 60_000, SidecarStatus::Disconnected), 10).await).len(),
        4
    );
    // The database and SidecarRow::status agree on every row.
    for later in [0, 10_000, 60_000] {
        for status in [
            SidecarStatus::Healthy,
            SidecarStatus::Unhealthy,
            SidecarStatus::Disconnected,
        ] {
            let page = s.list_sidecars_page(&at(now + later, status), 10, None).await.unwrap();
            for r in &page.rows {
                assert_eq!(r.status(now + later, 5_000, 30_000), status, "{}", r.id);
            }
        }
    }
});

store_test!(
    batched_health_reports_land_only_for_the_session_that_owns_the_row,
    |s| {
        for id in ["default/web-1", "default/web-2"] {
            s.register_sidecar(&reg(id, "web", id)).await.unwrap();
        }
        let batch: Vec<(String, String, i64, String)> = vec![
            (
                "default/web-1".into(),
                "default/web-1".into(),
                4_000_000_000_000,
                json!({"requestsTotal": 7}).to_string(),
            ),
            // A stale session (the pod reconnected since): ignored.
            (
                "default/web-2".into(),
                "old-session".into(),
                4_000_000_000_000,
                json!({"requestsTotal": 9}).to_string(),
            ),
        ];
        s.record_health_batch(&batch).await.unwrap();
        let rows = s.list_sidecars(Some("web")).await.unwrap();
        let web1 = rows.iter().find(|r| r.id == "default/web-1").unwrap();
        let web2 = rows.iter().find(|r| r.id == "default/web-2").unwrap();
        assert_eq!(web1.last_seen_ms, 4_000_000_000_000);
        assert_eq!(web1.health, Some(json!({"requestsTotal": 7})));
        assert!(web2.health.is_none() && web2.last_seen_ms < 4_000_000_000_000);

        // More rows than one statement carries.
        let many: Vec<(String, String, i64, String)> = (0..1200)
            .map(|i| (format!("default/x-{i}"), "s".into(), 1, "{}".into()))
            .chain(std::iter::once((
                "default/web-2".into(),
                "default/web-2".into(),
                5,
                "{}".into(),
            )))
            .collect();
        s.record_health_batch(&many).await.unwrap();
        let rows = s.list_sidecars(Some("web")).await.unwrap();
        assert_eq!(rows.iter().find(|r| r.id == "default/web-2").unwrap().last_seen_ms, 5);
    }
);

store_test!(
    services_that_fell_silent_in_a_window_are_found_by_their_last_report,
    |s| {
        let seen = |id: &str, at: i64| (id.to_owned(), id.to_owned(), at, "{}".to_owned());
        for (id, service) in [
            ("default/web-1", "web"),
            ("default/api-1", "api"),
            ("default/db-1", "db"),
        ] {
            s.register_sidecar(&reg(id, service, id)).await.unwrap();
        }
        s.record_health_batch(&[
            seen("default/web-1", 1_000),
            seen("default/api-1", 2_000),
            seen("default/db-1", 3_000),
        ])
        .await
        .unwrap();
        s.disconnect_sidecar("default/db-1", "default/db-1", "db")
            .await
            .unwrap();
        let mut silent = s.services_silent_between(500, 2_000).await.unwrap();
        silent.sort();
        assert_eq!(silent, ["api", "web"]);
        assert!(s.services_silent_between(2_000, 2_500).await.unwrap().is_empty());
    }
);

store_test!(
    batched_acks_move_applied_revisions_forward_only_and_clear_the_last_nack,
    |s| {
        for id in ["default/web-1", "default/web-2", "default/web-3"] {
            s.register_sidecar(&reg(id, "web", id)).await.unwrap();
        }
        s.record_nack("default/web-1", "default/web-1", 3, "bad").await.unwrap();
        s.record_ack("default/web-3", "default/web-3", 9).await.unwrap();
        let ack = |id: &str, session: &str, rev: u64| (id.to_owned(), session.to_owned(), rev);
        s.record_ack_batch(&[
            ack("default/web-1", "default/web-1", 4),
            // A stale session (the pod reconnected since): ignored.
            ack("default/web-2", "old-session", 4),
            // Older than what the row holds: never moves it back.
            ack("default/web-3", "default/web-3", 5),
        ])
        .await
        .unwrap();
        let rows = s.list_sidecars(Some("web")).await.unwrap();
        let row = |id: &str| rows.iter().find(|r| r.id == id).unwrap();
        assert_eq!(row("default/web-1").applied_revision, 4);
        assert!(row("default/web-1").last_nack.is_none());
        assert_eq!(row("default/web-2").applied_revision, 0);
        assert_eq!(row("default/web-3").applied_revision, 9);

        let many: Vec<_> = (0..1200)
            .map(|i| ack(&format!("default/x-{i}"), "s", 1))
            .chain(std::iter::once(ack("default/web-2", "default/web-2", 6)))
            .collect();
        s.record_ack_batch(&many).await.unwrap();
        let rows = s.list_sidecars(Some("web")).await.unwrap();
        assert_eq!(
            rows.iter().find(|r| r.id == "default/web-2").unwrap().applied_revision,
            6
        );
    }
);

store_test!(
    a_second_live_registration_of_a_pod_is_refused_unless_it_is_the_same_process,
    |s| {
        let now = super::db::now_ms();
        let live_since = now - 5_000;
        let mut first = reg("default/web-1", "web", "first");
        first.instance = "process-a".into();
        s.register_sidecar_unless_live(&first, live_since).await.unwrap();

        // Another process with the same pod name while the first one's stream is live.
        let mut impostor = reg("default/web-1", "web", "second");
        impostor.instance = "process-b".into();
        impostor.address = "10.9.9.9".into();
        let err = s.register_sidecar_unless_live(&impostor, live_since).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists), "{err:?}");
        let row = &s.list_sidecars(Some("web")).await.unwrap()[0];
        assert_eq!((row.session.as_str(), row.address.as_str()), ("first", "127.0.0.1"));

        // The same process reconnecting before its old stream was seen to end.
        let mut again = reg("default/web-1", "web", "third");
        again.instance = "process-a".into();
        s.register_sidecar_unless_live(&again, live_since).await.unwrap();
        assert_eq!(s.list_sidecars(Some("web")).await.unwrap()[0].session, "third");

        // A registration nobody has heard from since `live_since`, or one whose stream
        // closed, may be taken over.
        s.register_sidecar_unless_live(&impostor, now + 60_000).await.unwrap();
        assert_eq!(s.list_sidecars(Some("web")).await.unwrap()[0].session, "second");
        s.disconnect_sidecar("default/web-1", "second", "web").await.unwrap();
        let mut next = reg("default/web-1", "web", "fourth");
        next.instance = "process-c".into();
        s.register_sidecar_unless_live(&next, live_since).await.unwrap();
        assert_eq!(s.list_sidecars(Some("web")).await.unwrap()[0].session, "fourth");
    }
);
