use super::*;
use crate::workload::{inject_object, Change};

fn pod(labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "web:1", "ports": [{"containerPort": 8080}]}]},
    })
}

fn web() -> Value {
    pod(json!({"app": "web"}), json!({}))
}

fn injected(p: &Value) -> Value {
    match inject(p, Namespace::Selected, &Settings::default()).unwrap() {
        Outcome::Injected { pod, .. } => pod,
        Outcome::Skipped(why) => panic!("skipped: {why}"),
    }
}

fn skipped(p: &Value, ns: Namespace<'_>) -> Skip {
    match inject(p, ns, &Settings::default()).unwrap() {
        Outcome::Skipped(why) => why,
        Outcome::Injected { .. } => panic!("injected"),
    }
}

fn refused(p: &Value) -> InjectError {
    inject(p, Namespace::Selected, &Settings::default()).unwrap_err()
}

fn init_container<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The value of env `name` of the sidecar: a literal string or the fieldRef path.
fn env(p: &Value, name: &str) -> Value {
    let sidecar = init_container(p, SIDECAR_CONTAINER);
    let e = sidecar["env"].as_array().unwrap().iter().find(|e| e["name"] == name);
    let e = e.unwrap_or_else(|| panic!("no env {name}"));
    if let Some(v) = e.get("value") {
        return v.clone();
    }
    e["valueFrom"]["fieldRef"]["fieldPath"].clone()
}

fn command(p: &Value) -> Vec<String> {
    serde_json::from_value(init_container(p, INIT_CONTAINER)["command"].clone()).unwrap()
}

#[test]
fn the_sidecar_is_a_native_sidecar_after_the_capture_init_container_and_before_the_apps_own() {
    let mut p = web();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "web:1"}]);
    let out = injected(&p);
    let names: Vec<_> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [INIT_CONTAINER, SIDECAR_CONTAINER, "migrate"]);
    assert_eq!(init_container(&out, SIDECAR_CONTAINER)["restartPolicy"], "Always");
    assert!(init_container(&out, INIT_CONTAINER).get("restartPolicy").is_none());
    assert_eq!(out["metadata"]["annotations"][INJECTED], "true");
    assert_eq!(
        out["spec"]["containers"].as_array().unwrap().len(),
        1,
        "no container added"
    );
}

#[test]
fn the_patch_turns_the_pod_given_into_the_injected_pod_with_add_operations_only() {
    for p in [
        web(),
        json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]},
               "metadata": {"labels": {"app": "a"}}}),
        {
            let mut p = web();
            p["spec"]["initContainers"] = json!([{"name": "x"}]);
            p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
            p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/d"}]);
            p
        },
    ] {
        let Outcome::Injected { pod: out, patch } = inject(&p, Namespace::Selected, &Settings::default()).unwrap()
        else {
            panic!("skipped")
        };
        let mut applied = p.clone();
        json_patch::patch(&mut applied, &patch).unwrap();
        assert_eq!(applied, out);
        let ops = serde_json::to_value(&patch).unwrap();
        assert!(ops.as_array().unwrap().iter().all(|op| op["op"] == "add"), "{ops}");
    }
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = injected(&web());
    assert_eq!(skipped(&once, Namespace::Selected), Skip::AlreadyInjected);
    let out = inject(&once, Namespace::Selected, &Settings::default()).unwrap();
    assert_eq!(out.patch_json(), json!([]));
    // A pod that carries a hand-written sidecar container counts as injected too.
    let mut manual = web();
    manual["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": SIDECAR_CONTAINER}));
    assert_eq!(skipped(&manual, Namespace::Selected), Skip::AlreadyInjected);
}

#[test]
fn a_pod_labelled_disabled_is_left_alone_even_in_an_enabled_namespace() {
    let ns = json!({INJECT: "enabled"});
    let ns = ns.as_object().unwrap();
    let p = pod(json!({"app": "web", INJECT: "disabled"}), json!({}));
    assert_eq!(skipped(&p, Namespace::Labels(ns)), Skip::OptedOut);
    assert_eq!(skipped(&p, Namespace::Selected), Skip::OptedOut);
    let p = pod(json!({"app": "web"}), json!({INJECT: "disabled"}));
    assert_eq!(skipped(&p, Namespace::Selected), Skip::OptedOut, "the annotation too");
}

#[test]
fn with_namespace_labels_a_pod_is_injected_when_it_or_its_namespace_is_labelled_enabled() {
    let enabled = json!({INJECT: "enabled"});
    let plain = json!({"team": "shop"});
    let (enabled, plain) = (enabled.as_object().unwrap(), plain.as_object().unwrap());
    assert_eq!(skipped(&web(), Namespace::Labels(plain)), Skip::NotSelected);
    assert!(matches!(
        inject(&web(), Namespace::Labels(enabled), &Settings::default()).unwrap(),
        Outcome::Injected { .. }
    ));
    let labelled = pod(json!({"app": "web", INJECT: "enabled"}), json!({}));
    assert!(matches!(
        inject(&labelled, Namespace::Labels(plain), &Settings::default()).unwrap(),
        Outcome::Injected { .. }
    ));
}

#[test]
fn a_host_network_pod_is_never_injected() {
    let mut p = web();
    p["spec"]["hostNetwork"] = json!(true);
    assert_eq!(skipped(&p, Namespace::Selected), Skip::HostNetwork);
}

/// (labels, annotations, the variable's fieldRef path or literal) for variable `name`.
fn check_sources(name: &str, cases: &[(Value, Value, &str)]) {
    for (labels, annotations, expected) in cases {
        let out = injected(&pod(labels.clone(), annotations.clone()));
        assert_eq!(env(&out, name), *expected, "{labels} {annotations}");
    }
}

#[test]
fn the_service_comes_from_the_annotation_then_app_kubernetes_io_name_then_app() {
    let both = json!({"app": "a", "app.kubernetes.io/name": "b"});
    check_sources(
        "OUTRIDER_SERVICE",
        &[
            (
                both.clone(),
                json!({"outrider.io/service": "c"}),
                "metadata.annotations['outrider.io/service']",
            ),
            (both, json!({}), "metadata.labels['app.kubernetes.io/name']"),
            (json!({"app": "a"}), json!({}), "metadata.labels['app']"),
        ],
    );
    assert_eq!(refused(&pod(json!({}), json!({}))), InjectError::NoService);
}

#[test]
fn a_service_or_subset_name_the_sidecar_would_refuse_is_an_error_naming_its_source() {
    let err = refused(&pod(json!({"app": "Web_1"}), json!({})));
    assert!(err.to_string().starts_with("label app \"Web_1\""), "{err}");
    let err = refused(&pod(json!({"app": "web"}), json!({"outrider.io/version": "V 2"})));
    assert!(err.to_string().starts_with("annotation outrider.io/version"), "{err}");
}

#[test]
fn the_subset_comes_from_the_annotation_then_the_version_label_else_v1() {
    let both = json!({"app": "a", "version": "v2"});
    check_sources(
        "OUTRIDER_VERSION",
        &[
            (
                both.clone(),
                json!({"outrider.io/version": "v3"}),
                "metadata.annotations['outrider.io/version']",
            ),
            (both, json!({}), "metadata.labels['version']"),
            (json!({"app": "a"}), json!({}), "v1"),
        ],
    );
}

#[test]
fn the_app_port_is_the_annotation_a_number_or_a_port_name_else_the_first_containers_first_port() {
    let mut p = web();
    p["spec"]["containers"] = json!([
        {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}]},
        {"name": "side", "ports": [{"containerPort": 7000, "name": "grpc"}]},
    ]);
    assert_eq!(env(&injected(&p), "OUTRIDER_APP_PORT"), "8080");
    p["metadata"]["annotations"] = json!({"outrider.io/app-port": "9000"});
    assert_eq!(env(&injected(&p), "OUTRIDER_APP_PORT"), "9000");
    p["metadata"]["annotations"] = json!({"outrider.io/app-port": "grpc"});
    assert_eq!(env(&injected(&p), "OUTRIDER_APP_PORT"), "7000");
    for bad in ["nope", "0", "70000", "15006"] {
        p["metadata"]["annotations"] = json!({"outrider.io/app-port": bad});
        let err = refused(&p);
        assert!(matches!(err, InjectError::Bad { .. }), "{bad}: {err}");
    }
    let mut no_ports = web();
    no_ports["spec"]["containers"][0]["ports"] = json!([]);
    let err = refused(&no_ports);
    assert_eq!(err, InjectError::NoAppPort);
}

#[test]
fn capture_overrides_become_init_flags_and_bad_ones_are_refused_naming_the_annotation() {
    let out = injected(&pod(
        json!({"app": "web"}),
        json!({
            "outrider.io/inbound-ports": "8080, 9090",
            "outrider.io/skip-outbound-ports": "5432",
            "outrider.io/skip-outbound-cidrs": "10.0.0.0/8,fd00::/8",
        }),
    ));
    assert_eq!(
        command(&out),
        [
            "outrider-sidecar",
            "init",
            "--proxy-uid",
            "2102",
            "--inbound-ports",
            "8080,9090",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8"
        ]
    );
    assert_eq!(
        command(&injected(&web())),
        ["outrider-sidecar", "init", "--proxy-uid", "2102"]
    );
    for (key, value) in [
        ("outrider.io/inbound-ports", "http"),
        ("outrider.io/inbound-ports", "15001"),
        ("outrider.io/skip-outbound-ports", "-1"),
        ("outrider.io/skip-outbound-cidrs", "10.0.0.0"),
        ("outrider.io/skip-outbound-cidrs", "10.0.0.0/33"),
        ("outrider.io/token-secret", "Not_A_Name"),
    ] {
        let err = refused(&pod(json!({"app": "web"}), json!({ key: value })));
        assert!(err.to_string().starts_with(&format!("annotation {key}")), "{err}");
    }
}

#[test]
fn the_sidecar_runs_restricted_as_the_proxy_uid_and_the_init_container_has_only_net_admin_and_net_raw() {
    let settings = Settings {
        proxy_uid: 1337,
        ..Settings::default()
    };
    let Outcome::Injected { pod: out, .. } = inject(&web(), Namespace::Selected, &settings).unwrap() else {
        panic!()
    };
    let sc = &init_container(&out, SIDECAR_CONTAINER)["securityContext"];
    assert_eq!(sc["runAsUser"], 1337);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let ic = &init_container(&out, INIT_CONTAINER)["securityContext"];
    assert_eq!(ic["runAsUser"], 0);
    assert_eq!(
        ic["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    assert_eq!(ic["allowPrivilegeEscalation"], false);
    assert_eq!(command(&out)[3], "1337");
}

#[test]
fn the_sidecar_gets_downward_api_settings_probes_on_the_health_port_and_memory_backed_secrets() {
    let out = injected(&web());
    assert_eq!(env(&out, "OUTRIDER_NAMESPACE"), "metadata.namespace");
    assert_eq!(env(&out, "OUTRIDER_POD_NAME"), "metadata.name");
    assert_eq!(env(&out, "OUTRIDER_POD_IP"), "status.podIP");
    assert_eq!(env(&out, "OUTRIDER_CONTROL_PLANE"), DEFAULT_CONTROL_PLANE);
    assert_eq!(env(&out, "OUTRIDER_INBOUND_ADDR"), "0.0.0.0:15006");
    assert_eq!(env(&out, "OUTRIDER_HEALTH_ADDR"), "0.0.0.0:15020");
    let sidecar = init_container(&out, SIDECAR_CONTAINER);
    let token = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OUTRIDER_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        json!({"name": "outrider-registration", "key": "token", "optional": true})
    );
    for (probe, path) in [
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(
            sidecar[probe]["httpGet"],
            json!({"path": path, "port": 15020}),
            "{probe}"
        );
    }
    assert!(sidecar["resources"]["requests"]["memory"].is_string());
    assert!(sidecar["resources"]["limits"]["memory"].is_string());
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    let secrets = volumes.iter().find(|v| v["name"] == "outrider-secrets").unwrap();
    assert_eq!(secrets["emptyDir"]["medium"], "Memory");
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": "outrider-config", "mountPath": "/etc/outrider/config", "readOnly": true}])
    );
}

#[test]
fn a_pod_naming_its_token_secret_gets_that_secret() {
    let out = injected(&pod(
        json!({"app": "web"}),
        json!({"outrider.io/token-secret": "web-join"}),
    ));
    let sidecar = init_container(&out, SIDECAR_CONTAINER);
    let token = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OUTRIDER_TOKEN")
        .unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "web-join");
}

#[test]
fn malformed_pods_are_errors_naming_the_field_never_panics() {
    let s = Settings::default();
    for (p, field) in [
        (json!("pod"), "the pod"),
        (json!({"metadata": {}}), "spec"),
        (json!({"metadata": [], "spec": {}}), "metadata"),
        (json!({"metadata": {"labels": "x"}, "spec": {}}), "metadata.labels"),
        (json!({"spec": {"containers": {}}}), "spec.containers"),
        (
            json!({"spec": {"containers": [{}], "initContainers": 1}}),
            "spec.initContainers",
        ),
    ] {
        let err = inject(&p, Namespace::Selected, &s).unwrap_err();
        assert_eq!(err, InjectError::Shape(field), "{p}");
    }
    assert_eq!(
        inject(&json!({"spec": {"containers": []}}), Namespace::Selected, &s).unwrap_err(),
        InjectError::NoContainers
    );
    let mut clash = web();
    clash["spec"]["volumes"] = json!([{"name": "outrider-state"}]);
    assert!(matches!(
        inject(&clash, Namespace::Selected, &s).unwrap_err(),
        InjectError::Clash(_)
    ));
}

#[test]
fn workloads_are_injected_in_their_pod_template_and_other_kinds_pass_through() {
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": web()["spec"].clone()});
    let s = Settings::default();
    for (kind, pointer) in [
        ("Deployment", "/spec/template"),
        ("StatefulSet", "/spec/template"),
        ("DaemonSet", "/spec/template"),
        ("ReplicaSet", "/spec/template"),
        ("Job", "/spec/template"),
        ("CronJob", "/spec/jobTemplate/spec/template"),
    ] {
        let mut obj = json!({"kind": kind, "metadata": {"name": "web"}});
        let mut cursor = &mut obj;
        for part in pointer.trim_start_matches('/').split('/') {
            cursor = &mut cursor[part];
        }
        *cursor = template.clone();
        let changes = inject_object(&mut obj, &s).unwrap();
        assert_eq!(changes, [(format!("{kind}/web"), Change::Injected)]);
        assert_eq!(
            obj.pointer(&format!("{pointer}/metadata/annotations/outrider.io~1injected")),
            Some(&json!("true")),
            "{kind}"
        );
    }
    let mut svc = json!({"kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
    let before = svc.clone();
    assert_eq!(
        inject_object(&mut svc, &s).unwrap(),
        [("Service/web".to_owned(), Change::PassedThrough)]
    );
    assert_eq!(svc, before);
    let mut list = json!({"kind": "List", "items": [
        {"kind": "Pod", "metadata": {"name": "a", "labels": {"app": "a"}}, "spec": web()["spec"].clone()},
        {"kind": "ConfigMap", "metadata": {"name": "c"}},
    ]});
    let changes = inject_object(&mut list, &s).unwrap();
    assert_eq!(changes.len(), 2);
    assert!(list["items"][0]["spec"]["initContainers"].is_array());
}

#[test]
fn a_workload_whose_template_cannot_be_injected_is_an_error_naming_it() {
    let mut obj = json!({"kind": "Deployment", "metadata": {"name": "api"},
                         "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
    let before = obj.clone();
    let err = inject_object(&mut obj, &Settings::default()).unwrap_err();
    assert_eq!(err.to_string(), format!("Deployment/api: {}", InjectError::NoService));
    assert_eq!(obj, before);
    let mut no_template = json!({"kind": "Deployment", "metadata": {"name": "api"}, "spec": {}});
    assert!(inject_object(&mut no_template, &Settings::default()).is_err());
}

fn with_probes(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": [
            {"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}],
             "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
             "readinessProbe": {"httpGet": {"path": "ready", "port": 8080, "scheme": "HTTPS",
                 "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}, "timeoutSeconds": 3},
             "startupProbe": {"tcpSocket": {"port": 8080}}},
            {"name": "other", "image": "o:1",
             "livenessProbe": {"httpGet": {"path": "/x", "port": 9000, "host": "10.0.0.9"}}},
        ]},
    })
}

#[test]
fn http_and_tcp_probes_move_to_the_health_port_and_the_sidecar_gets_the_originals() {
    let p = injected(&with_probes(json!({})));
    let app = &p["spec"]["containers"][0];
    assert_eq!(
        app["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/app/livez", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 10})
    );
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "timeoutSeconds": 3})
    );
    // A TCP probe too, its handler replaced (a probe has exactly one).
    assert_eq!(
        app["startupProbe"],
        json!({"httpGet": {"path": "/app-health/app/startupz", "port": 15020, "scheme": "HTTP"}})
    );
    // Another host's: left alone.
    assert_eq!(
        p["spec"]["containers"][1]["livenessProbe"]["httpGet"]["host"],
        "10.0.0.9"
    );

    let originals: Value = serde_json::from_str(env(&p, "OUTRIDER_APP_PROBES").as_str().unwrap()).unwrap();
    assert_eq!(
        originals,
        json!({
            "app/livez": {"port": 8080, "path": "/healthz", "scheme": "HTTP", "httpHeaders": [], "timeoutSeconds": 1},
            "app/readyz": {"port": 8080, "path": "/ready", "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}], "timeoutSeconds": 3},
            "app/startupz": {"port": 8080, "scheme": "TCP", "timeoutSeconds": 1},
        })
    );
}

#[test]
fn probes_stay_as_they_are_when_the_pod_says_so_or_has_none() {
    let p = injected(&with_probes(json!({"outrider.io/rewrite-probes": "false"})));
    assert_eq!(p["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"], "http");
    let sidecar = init_container(&p, SIDECAR_CONTAINER);
    let names: Vec<&str> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"OUTRIDER_APP_PROBES"), "{names:?}");
    let plain = injected(&web());
    let sidecar = init_container(&plain, SIDECAR_CONTAINER);
    assert!(!sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "OUTRIDER_APP_PROBES"));
}

#[test]
fn the_sidecar_gets_the_control_planes_bundle_inline_only_when_given_one() {
    let plain = injected(&web());
    assert!(!init_container(&plain, SIDECAR_CONTAINER)["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "OUTRIDER_CA_PEM"));
    let settings = Settings {
        ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
        ..Settings::default()
    };
    let Outcome::Injected { pod, .. } = inject(&web(), Namespace::Selected, &settings).unwrap() else {
        panic!("not injected");
    };
    assert_eq!(
        env(&pod, "OUTRIDER_CA_PEM"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    );
}
