//! Config documents end to end: PUT through the API, the file in the sidecar's config
//! directory, `GET /config/{name}` on its admin port with an ETag and a long-poll.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};
use std::time::{Duration, Instant};

async fn put(cp: &ControlPlane, name: &str, body: &str) -> u64 {
    let r = client()
        .put(cp.api(&format!("/services/web/config/{name}")))
        .header("content-type", "text/yaml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v["revision"].as_u64().unwrap()
}

#[tokio::test]
async fn a_put_document_lands_in_the_config_dir_and_is_served_with_an_etag_and_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let state = dir.path().join("sc");
    let mut s = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &state).await;
    s.wait_revision(0).await;
    let file = state.join("config").join("app.yaml");

    let put_at = Instant::now();
    let rev = put(&cp, "app.yaml", "greeting: hello\n").await;
    wait_until(SOON, || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t == "greeting: hello\n")
    })
    .await
    .expect("the document is written to the config dir");
    println!("config file written {:?} after the PUT", put_at.elapsed());

    // The file lands first, then the admin endpoint serves the document: wait for both.
    let admin = format!("{}/config/app.yaml", s.admin());
    wait_until(SOON, || async {
        client().get(&admin).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("the admin port serves the document");
    let r = client().get(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{rev}\""));
    assert_eq!(r.headers()["content-type"], "text/yaml");
    assert_eq!(r.text().await.unwrap(), "greeting: hello\n");

    let r = client()
        .get(&admin)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // A long-poll waits while nothing changes, and answers as soon as it does: well
    // before its 30 s.
    let poll = tokio::spawn({
        let admin = admin.clone();
        let etag = etag.clone();
        async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap();
            let r = c
                .get(format!("{admin}?wait=30s"))
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            let tag = r.headers()["etag"].to_str().unwrap().to_owned();
            (r.status().as_u16(), tag, r.text().await.unwrap(), Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the long-poll waits");
    let changed_at = Instant::now();
    let rev2 = put(&cp, "app.yaml", "greeting: bonjour\n").await;
    let (status, tag, body, answered_at) = tokio::time::timeout(SOON, poll).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "greeting: bonjour\n"));
    assert_eq!(tag, format!("\"{rev2}\""));
    println!("long-poll answered {:?} after the PUT", answered_at - changed_at);

    // Deleting the document removes the file the sidecar wrote.
    let r = client()
        .delete(cp.api("/services/web/config/app.yaml"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    wait_until(SOON, || async { !file.exists() })
        .await
        .expect("the file is removed");
    // The admin endpoint follows the same snapshot; it may answer a moment after the
    // file is gone, so wait for it too rather than race it.
    wait_until(SOON, || async {
        client().get(&admin).send().await.unwrap().status() == 404
    })
    .await
    .expect("the admin endpoint answers 404 for a deleted document");
}
