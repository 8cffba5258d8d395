//! Who may register as what: the mesh-wide registration token (trusted with every
//! identity) and per-service join tokens (each lets a sidecar register as its service
//! and nothing else). Once either exists, a Hello without a valid token is refused.

use crate::auth::hash_token;
use crate::secret::constant_time_eq;
use crate::store::{Store, StoreError};

/// Why a Hello's token does not let it register.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("this join token registers service {allowed:?}, not {asked:?}")]
    WrongService { allowed: String, asked: String },
    #[error("cannot check the token: {0}")]
    Store(#[from] StoreError),
}

/// A new join token: 256 random bits, prefixed so that a leaked one is recognisable
/// as a join token (not an API token).
pub fn generate() -> String {
    let api = crate::auth::generate_token();
    format!("orjt_{}", api.trim_start_matches("ortk_"))
}

/// `<service>-<8 hex digits>`: unique enough that creating a token needs no name.
pub fn default_name(service: &str) -> String {
    format!("{service}-{:08x}", rand::random::<u32>())
}

/// Whether `presented` (the Hello's token) lets a sidecar register as `service`.
/// `mesh_token` is `OUTRIDER_REGISTRATION_TOKEN`, already free of blank values.
pub async fn check(store: &Store, mesh_token: Option<&str>, presented: &str, service: &str) -> Result<(), Refusal> {
    let presented = presented.trim();
    if presented.is_empty() {
        if mesh_token.is_some() || store.has_join_tokens().await? {
            return Err(Refusal::Unauthenticated("a registration token is required"));
        }
        return Ok(());
    }
    if mesh_token.is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes())) {
        return Ok(());
    }
    match store.join_token_service(&hash_token(presented)).await? {
        Some(allowed) if allowed == service => Ok(()),
        Some(allowed) => Err(Refusal::WrongService {
            allowed,
            asked: service.to_owned(),
        }),
        None => Err(Refusal::Unauthenticated("invalid registration token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TestStore;

    #[tokio::test]
    async fn a_join_token_registers_its_service_only_and_once_one_exists_a_token_is_needed() {
        let t = TestStore::sqlite().await;
        let s = &t.store;
        assert!(check(s, None, "", "web").await.is_ok(), "no token anywhere: open");
        let web = generate();
        assert!(web.starts_with("orjt_") && web.len() == 5 + 64, "{web}");
        s.create_join_token("web-1", "web", &hash_token(&web)).await.unwrap();

        assert!(check(s, None, &web, "web").await.is_ok());
        let e = check(s, None, &web, "api").await.unwrap_err();
        assert!(
            matches!(&e, Refusal::WrongService { allowed, .. } if allowed == "web"),
            "{e}"
        );
        assert!(matches!(
            check(s, None, "", "web").await,
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            check(s, None, "orjt_forged", "web").await,
            Err(Refusal::Unauthenticated(_))
        ));
        // The mesh-wide token still registers anything.
        assert!(check(s, Some("mesh"), "mesh", "api").await.is_ok());
        assert!(check(s, Some("mesh"), &web, "web").await.is_ok());

        s.revoke_join_token("web-1").await.unwrap();
        assert!(matches!(
            check(s, None, &web, "web").await,
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(
            check(s, None, "", "web").await.is_ok(),
            "the last one revoked: open again"
        );
        assert!(matches!(
            check(s, Some("mesh"), "", "web").await,
            Err(Refusal::Unauthenticated(_))
        ));
        t.cleanup().await;
    }
}
