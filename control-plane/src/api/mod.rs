//! The HTTP layer: the REST API under `/api/v1`, plus `/healthz`, `/readyz`,
//! `/metrics` and the dashboard, assembled in [`app`].
//!
//! One module per resource (policies, config documents, secrets, …) holds its handlers; each returns `outrider-api` types and
//! takes its inputs through `extract`, failing with `error::ApiError`. Resource
//! modules use `state`, `error`, `extract` and `format`, never this module, and every
//! route is registered with `utoipa-axum` together with its OpenAPI description, so
//! the router and the document (`GET /api/v1/openapi.json`) cannot diverge.

mod canary;
mod configs;
pub mod error;
mod events;
pub mod extract;
pub mod format;
pub mod guard;
mod health;
mod join_tokens;
pub mod openapi;
mod policies;
mod revisions;
mod secrets;
mod services;
pub mod sidecars;
pub mod state;
mod tokens;

pub use error::ApiError;
pub use state::AppState;

use axum::extract::DefaultBodyLimit;
use axum::{middleware, Extension, Router};
use outrider_api::API_PREFIX;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Every route of `/api/v1`, each with its description. Paths are relative to the
/// prefix; the auth layer and body limit apply to all of them.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(services::list))
        .routes(routes!(services::get))
        .routes(routes!(policies::get, policies::put, policies::delete))
        .routes(routes!(configs::get, configs::put, configs::delete))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::get, secrets::put, secrets::delete))
        .routes(routes!(canary::get, canary::start, canary::abort))
        .routes(routes!(canary::set_weight))
        .routes(routes!(canary::promote))
        .routes(routes!(sidecars::list))
        .routes(routes!(revisions::list))
        .routes(routes!(revisions::get))
        .routes(routes!(revisions::revert))
        .routes(routes!(events::events))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(join_tokens::list, join_tokens::create))
        .routes(routes!(join_tokens::revoke))
        .routes(routes!(openapi::openapi_json))
        .fallback(|| async { ApiError::NotFound("no such API endpoint".into()) })
        .route_layer(middleware::from_fn(extract::exact_query))
        .route_layer(middleware::from_fn(guard::json_writes))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(middleware::from_fn(extract::authenticate))
}

/// The whole HTTP surface and its document, before the state is supplied.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest(API_PREFIX, api_routes())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .split_for_parts();
    openapi::document_query_refusals(&mut doc);
    (router, openapi::with_guard_responses(doc))
}

/// The OpenAPI document of the REST API, as `GET /api/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

/// The control plane's HTTP application; tests drive it in-process with `oneshot`.
pub fn app(state: AppState) -> Router {
    let (routes, doc) = documented();
    routes
        .merge(crate::dashboard::routes())
        .layer(Extension(openapi::DocumentJson::new(&doc)))
        .layer(Extension(extract::QueryParams::from_doc(&doc)))
        .layer(middleware::from_fn(guard::browser_guard))
        .layer(Extension(state.guard.clone()))
        // The auth layer reads the state from here, so the routes (and with them the
        // document) can be built without one.
        .layer(Extension(state.clone()))
        .layer(middleware::map_response(guard::nosniff))
        .layer(middleware::map_response(error::every_error_is_a_problem))
        .layer(middleware::from_fn(error::log_internal_errors))
        .with_state(state)
}

#[cfg(test)]
mod tests;
