//! Store access for automated canary rollouts (`canary_rollouts`, migrations 0002 and
//! 0005). A rollout is active while its state is `running` or `holding`.

use super::db::{now_ms, parse_json, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub service: String,
    pub spec: serde_json::Value,
    pub state: String,
    pub step: u64,
    pub reason: String,
    pub step_started_ms: i64,
    /// The driver's view of the current step (`crate::canary::StepWindow` as JSON).
    pub window: serde_json::Value,
    pub actor: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub lease_owner: String,
}

const COLUMNS: &str = "service, spec, state, step, reason, step_started_ms, step_window, actor,
    started_ms, updated_ms, lease_owner";

/// The states in which the driver still owns the service's weights.
const ACTIVE: &str = "state IN ('running', 'holding')";

/// A `canary_rollouts` row as both backends decode it.
#[derive(sqlx::FromRow)]
struct DbRow {
    service: String,
    spec: String,
    state: String,
    step: i64,
    reason: String,
    step_started_ms: i64,
    step_window: String,
    actor: String,
    started_ms: i64,
    updated_ms: i64,
    lease_owner: String,
}

impl TryFrom<DbRow> for RolloutRow {
    type Error = StoreError;
    fn try_from(r: DbRow) -> Result<Self, StoreError> {
        Ok(RolloutRow {
            spec: parse_json(&r.spec)?,
            window: parse_json(&r.step_window)?,
            service: r.service,
            state: r.state,
            step: r.step as u64,
            reason: r.reason,
            step_started_ms: r.step_started_ms,
            actor: r.actor,
            started_ms: r.started_ms,
            updated_ms: r.updated_ms,
            lease_owner: r.lease_owner,
        })
    }
}

impl Store {
    /// Starts a rollout; `None` when one is already active for the service.
    pub async fn start_rollout(
        &self,
        service: &str,
        spec: &serde_json::Value,
        actor: &str,
    ) -> Result<Option<RolloutRow>, StoreError> {
        let now = now_ms();
        // The WHERE on the upsert makes "no active rollout" and the write one atomic step.
        let r = sqlx::query(&format!(
            "INSERT INTO canary_rollouts (service, spec, state, actor, started_ms, updated_ms)
             VALUES ($1, $2, 'running', $3, $4, $4)
             ON CONFLICT (service) DO UPDATE SET spec = excluded.spec, state = 'running', step = 0, reason = '',
                 step_started_ms = 0, step_window = '{{}}', actor = excluded.actor,
                 started_ms = excluded.started_ms, updated_ms = excluded.updated_ms, lease_owner = '',
                 lease_until_ms = 0
             WHERE NOT canary_rollouts.{ACTIVE}"
        ))
        .bind(service)
        .bind(spec.to_string())
        .bind(actor)
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

    /// The rollout that drives `service`'s weights now, if any.
    pub async fn active_rollout(&self, service: &str) -> Result<Option<RolloutRow>, StoreError> {
        Ok(self
            .get_rollout(service)
            .await?
            .filter(|r| r.state == "running" || r.state == "holding"))
    }

    /// Every active rollout (running or holding).
    pub async fn running_rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM canary_rollouts WHERE {ACTIVE} ORDER BY service"
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(RolloutRow::try_from)
        .collect()
    }

    /// Takes or renews the lease on an active rollout; true when `owner` holds it, so
    /// that with several replicas exactly one drives each rollout.
    pub async fn claim_rollout(&self, service: &str, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = sqlx::query(&format!(
            "UPDATE canary_rollouts SET lease_owner = $1, lease_until_ms = $2
             WHERE service = $3 AND {ACTIVE} AND (lease_owner = $1 OR lease_until_ms < $4)"
        ))
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
        let res = sqlx::query(&format!(
            "UPDATE canary_rollouts SET state = $1, step = $2, reason = $3, step_started_ms = $4,
                 step_window = $5, updated_ms = $6
             WHERE service = $7 AND lease_owner = $8 AND {ACTIVE}"
        ))
        .bind(&r.state)
        .bind(r.step as i64)
        .bind(&r.reason)
        .bind(r.step_started_ms)
        .bind(r.window.to_string())
        .bind(now_ms())
        .bind(&r.service)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Stops an active rollout (`aborted`); false when none was active.
    pub async fn abort_rollout(&self, service: &str, reason: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!(
            "UPDATE canary_rollouts SET state = 'aborted', reason = $1, updated_ms = $2
             WHERE service = $3 AND {ACTIVE}"
        ))
        .bind(reason)
        .bind(now_ms())
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
