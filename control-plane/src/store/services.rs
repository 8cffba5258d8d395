//! Services are not stored on their own: a service exists while something names it
//! (a policy, a config document, a sidecar or a line of history).

use super::db::{Store, StoreError};

impl Store {
    /// Every service the store knows of: with a policy, a config document or a sidecar.
    pub async fn list_services(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT service FROM policies UNION SELECT service FROM config_documents
             UNION SELECT service FROM sidecars ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Whether anything names `service`, its history included.
    pub async fn service_exists(&self, service: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM policies WHERE service = $1)
                  + (SELECT COUNT(*) FROM config_documents WHERE service = $1)
                  + (SELECT COUNT(*) FROM sidecars WHERE service = $1)
                  + (SELECT COUNT(*) FROM revisions WHERE service = $1)",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }
}
