//! The fleet-wide reads (one query instead of one per service or row), proven against
//! both backends to answer what the per-service and per-row reads answer.

use super::tests::{reg, store_test, TestStore};
use super::*;
use outrider_policy::PolicyKind;
use serde_json::json;
use std::collections::HashMap;

fn rl() -> serde_json::Value {
    json!({"rules": [{"name": "all", "requestsPerSecond": 5}]})
}

/// web: two policies and a config; api: a deleted policy only (history, no document);
/// solo: a sidecar and nothing else.
async fn three_services(s: &Store) {
    s.put_policy("web", PolicyKind::RateLimit, &rl(), Precondition::None, "t")
        .await
        .unwrap();
    s.put_policy("api", PolicyKind::RateLimit, &rl(), Precondition::None, "t")
        .await
        .unwrap();
    s.put_policy("web", PolicyKind::Logging, &json!({}), Precondition::None, "t")
        .await
        .unwrap();
    s.put_config("web", "app.yaml", "text/yaml", b"a: 1\n", Precondition::None, "t")
        .await
        .unwrap();
    s.register_sidecar(&reg("default/solo-1", "solo", "s1")).await.unwrap();
    s.register_sidecar(&reg("default/web-1", "web", "s2")).await.unwrap();
    s.put_policy(
        "api",
        PolicyKind::Routing,
        &json!({"routes": []}),
        Precondition::None,
        "t",
    )
    .await
    .unwrap();
    s.delete_policy("api", PolicyKind::Routing, Precondition::None, "t")
        .await
        .unwrap();
}

store_test!(
    service_revisions_answer_each_services_own_newest_revision_in_one_read,
    |s| {
        three_services(s).await;
        let all = s.service_revisions().await.unwrap();
        let mut expected = HashMap::new();
        for name in s.list_services().await.unwrap() {
            expected.insert(name.clone(), s.service_revision(&name).await.unwrap());
        }
        assert_eq!(all, expected);
        assert_eq!(all["solo"], 0, "a service without history");
        assert!(all["api"] > all["web"], "a delete is a revision too");
    }
);

store_test!(service_overviews_match_the_per_service_reads, |s| {
    three_services(s).await;
    let overviews = s.service_overviews().await.unwrap();
    let names: Vec<&str> = overviews.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        s.list_services().await.unwrap(),
        "the same services, in name order"
    );
    for o in &overviews {
        let kinds: Vec<String> = s
            .list_policies(&o.name)
            .await
            .unwrap()
            .iter()
            .map(|p| p.kind.as_str().to_owned())
            .collect();
        assert_eq!(o.policy_kinds, kinds, "{}", o.name);
        assert_eq!(
            o.configs,
            s.list_configs(&o.name).await.unwrap().len() as u64,
            "{}",
            o.name
        );
        assert_eq!(o.revision, s.service_revision(&o.name).await.unwrap(), "{}", o.name);
    }
    assert_eq!(overviews[2].policy_kinds, ["logging", "rate-limit"]);
});

store_test!(subset_counts_agree_with_the_status_every_row_derives, |s| {
    for (id, version) in [("web-1", "v1"), ("web-2", "v1"), ("web-3", "v2"), ("web-4", "v2")] {
        let mut r = reg(id, "web", id);
        r.version = version.into();
        s.register_sidecar(&r).await.unwrap();
    }
    s.register_sidecar(&reg("api-1", "api", "api-1")).await.unwrap();
    s.disconnect_sidecar("web-2", "web-2", "web").await.unwrap();
    s.record_health("web-3", "web-3", &json!({"appHealthy": false}).to_string(), "web")
        .await
        .unwrap();
    s.record_health("web-4", "web-4", &json!({"appHealthy": true}).to_string(), "web")
        .await
        .unwrap();
    let now = now_ms();
    for later in [0, 10_000, 60_000] {
        let clock = StatusClock {
            now_ms: now + later,
            unhealthy_after_ms: 5_000,
            disconnected_after_ms: 30_000,
        };
        let mut expected: Vec<SubsetCounts> = Vec::new();
        for r in s.list_sidecars(None).await.unwrap() {
            if expected
                .last()
                .is_none_or(|c| (&c.service, &c.version) != (&r.service, &r.version))
            {
                expected.push(SubsetCounts {
                    service: r.service.clone(),
                    version: r.version.clone(),
                    ..Default::default()
                });
            }
            let c = expected.last_mut().unwrap();
            match r.status(clock.now_ms, clock.unhealthy_after_ms, clock.disconnected_after_ms) {
                SidecarStatus::Healthy => c.healthy += 1,
                SidecarStatus::Unhealthy => c.unhealthy += 1,
                SidecarStatus::Disconnected => c.disconnected += 1,
            }
        }
        assert_eq!(s.subset_counts(clock).await.unwrap(), expected, "{later} ms later");
    }
    let now_counts = s
        .subset_counts(StatusClock {
            now_ms: now,
            unhealthy_after_ms: 5_000,
            disconnected_after_ms: 30_000,
        })
        .await
        .unwrap();
    let web_v2 = now_counts
        .iter()
        .find(|c| c.service == "web" && c.version == "v2")
        .unwrap();
    assert_eq!((web_v2.healthy, web_v2.unhealthy, web_v2.disconnected), (1, 1, 0));
});

store_test!(sidecars_reporting_on_a_service_are_its_callers_only, |s| {
    for id in ["a", "b", "c", "d"] {
        s.register_sidecar(&reg(id, "front", id)).await.unwrap();
    }
    let figures = |service: &str| json!({"appHealthy": true, "destinations": [{"service": service, "subset": "v1", "requestsTotal": 3}]});
    s.record_health("a", "a", &figures("web").to_string(), "web")
        .await
        .unwrap();
    s.record_health("b", "b", &figures("web-admin").to_string(), "web")
        .await
        .unwrap();
    s.record_health("c", "c", &figures("api").to_string(), "web")
        .await
        .unwrap();
    let ids: Vec<String> = s
        .sidecars_reporting_on("web")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a"], "not web-admin's callers, nor a sidecar without reports");
    let rows = s.sidecars_reporting_on("api").await.unwrap();
    assert_eq!(rows[0].health.as_ref().unwrap()["destinations"][0]["requestsTotal"], 3);
});
