//! Store reads for outbound routing: every service's RoutingPolicy and the newest
//! routing change, which the hub folds into the one destination table all sidecars share.

use super::db::{Store, StoreError};

impl Store {
    /// Every stored RoutingPolicy as `(service, document JSON)`, ordered by service.
    pub async fn list_routing_policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT service, document FROM policies WHERE kind = 'routing' ORDER BY service")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The newest revision that put or deleted any RoutingPolicy (0 when none).
    pub async fn routing_revision(&self) -> Result<u64, StoreError> {
        let r: Option<i64> = sqlx::query_scalar("SELECT MAX(revision) FROM revisions WHERE kind = 'routing'")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.unwrap_or(0) as u64)
    }
}
