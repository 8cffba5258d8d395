//! `GET /events`: the hub's change events as server-sent events, for dashboards and
//! anything else that would otherwise poll.

use super::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::StreamExt;
use outrider_api::{ChangeEvent, Problem, CHANGE_EVENT, RESYNC_EVENT};

#[utoipa::path(get, path = "/events", tag = "events",
    responses(
        (status = 200, description = "server-sent events: `change` (data: a ChangeEvent: snapshot, membership, sidecars row deltas) and `resync` (data `{}`: re-read, you fell behind)",
            content_type = "text/event-stream", body = ChangeEvent),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json")))]
pub async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let rx = state.hub.events();
    // The hub's events serialize as `ChangeEvent`s (a test in `api::tests` holds them to it).
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|e| {
        let ev = match e {
            Ok(ev) => SseEvent::default()
                .event(CHANGE_EVENT)
                .json_data(ev)
                .unwrap_or_default(),
            // The client fell behind: tell it to re-read rather than guess.
            Err(_) => SseEvent::default().event(RESYNC_EVENT).data("{}"),
        };
        Ok::<_, std::convert::Infallible>(ev)
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
