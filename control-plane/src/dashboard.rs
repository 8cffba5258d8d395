//! The operator dashboard: `dashboard/` (HTML, CSS, native ES modules, no build step)
//! embedded at compile time and served with a strict CSP, so this binary alone serves it.
//!
//! It is a client of the REST API like any other, with its token in the browser's
//! session storage (`docs/reference.md` describes what it shows).

use crate::api::state::AppState;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// `(path under dashboard/, contents)` for each listed file, read by the compiler.
macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../dashboard/", $path)))),*]
    };
}

const INDEX: &str = include_str!("../../dashboard/index.html");

/// Every asset the page may ask for, by its URL under `/dashboard/`. A module missing here
/// would be a 404 in the browser: the tests follow every `import` from `index.html` to
/// prove each one is listed, and that nothing listed is unused.
const ASSETS: &[(&str, &str)] = embed![
    "style.css",
    "js/main.js",
    "js/api.js",
    "js/dom.js",
    "js/diff.js",
    "js/format.js",
    "js/live.js",
    "js/sse.js",
    "js/state.js",
    "js/views/fleet.js",
    "js/views/history.js",
    "js/views/service.js",
    "js/views/services.js",
    "js/editors/shell.js",
    "js/editors/form.js",
    "js/editors/rate-limit.js",
    "js/editors/routing.js",
    "js/editors/logging.js",
    "js/editors/configs.js",
    "js/editors/authorization.js",
    "js/editors/secrets.js",
];

pub fn routes() -> Router<AppState> {
    router()
}

// Generic over the state so the tests can run it without a store or a hub.
fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/dashboard/{*path}", get(serve))
}

async fn serve(Path(path): Path<String>) -> Response {
    let found = ASSETS.iter().find(|(p, _)| *p == path);
    match (found, content_type(&path)) {
        (Some((_, body)), Some(ct)) => asset(body, ct),
        _ => {
            let mut r = (StatusCode::NOT_FOUND, "no such dashboard asset").into_response();
            r.headers_mut()
                .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            r
        }
    }
}

fn content_type(path: &str) -> Option<&'static str> {
    // Browsers run a module only when it is served as JavaScript.
    match path.rsplit_once('.')?.1 {
        "js" => Some("text/javascript; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        _ => None,
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidation is cheap on a local network.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only our own scripts and the API: no inline script, no third-party origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use std::collections::BTreeSet;
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = router::<()>().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// The module specifiers of `import … from '…'`, `export … from '…'`, `import '…'`
    /// and `import('…')` in a module's source.
    fn imports(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        for needle in ["from '", "from \"", "import '", "import \"", "import('", "import(\""] {
            let quote = needle.chars().last().unwrap();
            for (i, _) in src.match_indices(needle) {
                let rest = &src[i + needle.len()..];
                if let Some(end) = rest.find(quote) {
                    out.push(rest[..end].to_owned());
                }
            }
        }
        out
    }

    /// A specifier resolved against the URL of the module that imports it.
    fn resolve(from: &str, spec: &str) -> String {
        assert!(
            spec.starts_with("./") || spec.starts_with("../") || spec.starts_with('/'),
            "{from} imports {spec:?}: a browser resolves only relative or absolute paths without an import map"
        );
        if spec.starts_with('/') {
            return spec.to_owned();
        }
        let mut parts: Vec<&str> = from.split('/').collect();
        parts.pop(); // the importing file itself
        for seg in spec.split('/') {
            match seg {
                "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    }

    fn assert_asset_headers(path: &str, headers: &axum::http::HeaderMap, content_type: &str) {
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"),
            "{path}"
        );
    }

    #[tokio::test]
    async fn every_module_imported_from_the_page_is_served_as_javascript_and_none_is_unused() {
        let (status, headers, html) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_asset_headers("/", &headers, "text/html; charset=utf-8");
        assert!(
            html.contains(r#"<script type="module" src="/dashboard/js/main.js">"#),
            "the page loads its entry module"
        );
        let (status, headers, _) = get("/dashboard/style.css").await;
        assert_eq!(status, StatusCode::OK);
        assert_asset_headers("/dashboard/style.css", &headers, "text/css; charset=utf-8");

        let mut pending = vec!["/dashboard/js/main.js".to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(url) = pending.pop() {
            if !seen.insert(url.clone()) {
                continue;
            }
            let (status, headers, src) = get(&url).await;
            assert_eq!(status, StatusCode::OK, "{url} is imported but not embedded");
            assert_asset_headers(&url, &headers, "text/javascript; charset=utf-8");
            pending.extend(imports(&src).iter().map(|spec| resolve(&url, spec)));
        }
        let embedded: BTreeSet<String> = ASSETS
            .iter()
            .filter(|(p, _)| p.ends_with(".js"))
            .map(|(p, _)| format!("/dashboard/{p}"))
            .collect();
        assert_eq!(seen, embedded, "every embedded module is reachable from main.js");
    }

    #[tokio::test]
    async fn an_unknown_asset_path_is_404() {
        for path in [
            "/dashboard/js/nope.js",
            "/dashboard/app.js",
            "/dashboard/index.html",
            "/dashboard/js",
        ] {
            let (status, headers, _) = get(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
    }

    #[test]
    fn import_specifiers_are_found_and_resolved_against_the_importing_module() {
        let src = "import { a } from './a.js';\nimport {\n  b,\n} from \"../b.js\";\nexport { c } from './c/c.js';\nconst d = import('./d.js');\n";
        let mut found = imports(src);
        found.sort();
        assert_eq!(found, ["../b.js", "./a.js", "./c/c.js", "./d.js"]);
        assert_eq!(resolve("/dashboard/js/views/x.js", "../api.js"), "/dashboard/js/api.js");
        assert_eq!(
            resolve("/dashboard/js/main.js", "./views/x.js"),
            "/dashboard/js/views/x.js"
        );
    }
}
