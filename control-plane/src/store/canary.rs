//! Store access for automated canary rollouts (`canary_rollouts`, migration 0002).

use super::db::{now_ms, parse_json, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub service: String,
    pub spec: serde_json::Value,
    pub state: String,
    pub step: u64,
    pub reason: String,
    pub step_started_ms: i64,
    pub baseline_requests: u64,
    pub baseline_errors: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub lease_owner: String,
}

const COLUMNS: &str = "service, spec, state, step, reason, step_started_ms, baseline_requests, baseline_errors,
    started_ms, updated_ms, lease_owner";

/// A `canary_rollouts` row as both backends decode it.
#[derive(sqlx::FromRow)]
struct DbRow {
    service: String,
    spec: String,
    state: String,
    step: i64,
    reason: String,
    step_started_ms: i64,
    baseline_requests: i64,
    baseline_errors: i64,
    started_ms: i64,
    updated_ms: i64,
    lease_owner: String,
}

impl TryFrom<DbRow> for RolloutRow {
    type Error = StoreError;
    fn try_from(r: DbRow) -> Result<Self, StoreError> {
        Ok(RolloutRow {
            spec: parse_json(&r.spec)?,
            service: r.service,
            state: r.state,
            step: r.step as u64,
            reason: r.reason,
            step_started_ms: r.step_started_ms,
            baseline_requests: r.baseline_requests as u64,
            baseline_errors: r.baseline_errors as u64,
            started_ms: r.started_ms,
            updated_ms: r.updated_ms,
            lease_owner: r.lease_owner,
        })
    }
}

impl Store {
    /// Starts a rollout; `None` when one is already running for the service.
    pub async fn start_rollout(
        &self,
        service: &str,
        spec: &serde_json::Value,
    ) -> Result<Option<RolloutRow>, StoreError> {
        let now = now_ms();
        // The WHERE on the upsert makes "no running rollout" and the write one atomic step.
        let r = sqlx::query(
            "INSERT INTO canary_rollouts (service, spec, state, started_ms, updated_ms)
             VALUES ($1, $2, 'running', $3, $3)
             ON CONFLICT (service) DO UPDATE SET spec = excluded.spec, state = 'running', step = 0, reason = '',
                 step_started_ms = 0, baseline_requests = 0, baseline_errors = 0, started_ms = excluded.started_ms,
                 updated_ms = excluded.updated_ms, lease_owner = '', lease_until_ms = 0
             WHERE canary_rollouts.state <> 'running'",
        )
        .bind(service)
        .bind(spec.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_rollout(service).await
    }

    pub async fn get_rollout(&self, service: &str) -> Result<Option<RolloutRow>, StoreError> {
        sqlx::query_as::<_, DbRow>(&format!("SELECT {COLUMNS} FROM canary_rollouts WHERE service = $1"))
            .bind(service)
            .fetch_optional(&self.pool)
            .await?
            .map(RolloutRow::try_from)
            .transpose()
    }

    pub async fn running_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM canary_rollouts WHERE state = 'running' ORDER BY service"
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(RolloutRow::try_from)
        .collect()
    }

    /// Takes or renews the lease on a running rollout; true when `owner` holds it, so
    /// that with several replicas exactly one drives each rollout.
    pub async fn claim_rollout(&self, service: &str, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE canary_rollouts SET lease_owner = $1, lease_until_ms = $2
             WHERE service = $3 AND state = 'running' AND (lease_owner = $1 OR lease_until_ms < $4)",
        )
        .bind(owner)
        .bind(now + lease_ms)
        .bind(service)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Saves the driver's progress; false (nothing written) when `owner` lost the
    /// lease or the rollout stopped meanwhile (an abort through the API, say).
    pub async fn save_rollout(&self, r: &RolloutRow, owner: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE canary_rollouts SET state = $1, step = $2, reason = $3, step_started_ms = $4,
                 baseline_requests = $5, baseline_errors = $6, updated_ms = $7
             WHERE service = $8 AND lease_owner = $9 AND state = 'running'",
        )
        .bind(&r.state)
        .bind(r.step as i64)
        .bind(&r.reason)
        .bind(r.step_started_ms)
        .bind(r.baseline_requests as i64)
        .bind(r.baseline_errors as i64)
        .bind(now_ms())
        .bind(&r.service)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Stops a running rollout (`aborted`); false when none was running.
    pub async fn abort_rollout(&self, service: &str, reason: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE canary_rollouts SET state = 'aborted', reason = $1, updated_ms = $2
             WHERE service = $3 AND state = 'running'",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
