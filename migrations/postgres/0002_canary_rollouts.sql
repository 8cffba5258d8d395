-- Automated canary rollouts (outriderctl canary run): one row per service, the latest
-- rollout. `spec` is JSON (subset, stable, steps, intervalMs, maxErrorRate, maxP99Ms).
-- The replica holding an unexpired lease drives the rollout; any replica may take
-- over once the lease runs out, so a rollout survives the loss of its driver.
CREATE TABLE canary_rollouts (
    service           TEXT   PRIMARY KEY,
    spec              TEXT   NOT NULL,
    state             TEXT   NOT NULL,            -- running | succeeded | rolled-back | aborted
    step              BIGINT NOT NULL DEFAULT 0,
    reason            TEXT   NOT NULL DEFAULT '',
    step_started_ms   BIGINT NOT NULL DEFAULT 0,  -- 0: the first step is not set yet
    baseline_requests BIGINT NOT NULL DEFAULT 0,  -- canary figures when the step began
    baseline_errors   BIGINT NOT NULL DEFAULT 0,
    started_ms        BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL,
    lease_owner       TEXT   NOT NULL DEFAULT '',
    lease_until_ms    BIGINT NOT NULL DEFAULT 0
);
