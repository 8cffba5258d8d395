-- Canary rollouts judge each step on its own figures: `step_window` holds, as JSON,
-- every caller's last-seen counters of the canary and stable subsets and the step's
-- running totals, so a driver that takes over from another replica judges the same
-- window. `actor` is who started the rollout. baseline_requests and baseline_errors
-- (sums over all callers at step start) are no longer read: a caller restarting
-- made them meaningless.
ALTER TABLE canary_rollouts ADD COLUMN actor TEXT NOT NULL DEFAULT '';
ALTER TABLE canary_rollouts ADD COLUMN step_window TEXT NOT NULL DEFAULT '{}';
