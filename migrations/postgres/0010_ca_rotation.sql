-- Zero-failure root rotation: a root is trusted (in the bundle) from `created_at_ms`
-- and signs only once activated. `ca add-root` adds one that does not sign yet, so
-- every sidecar learns to trust it before any certificate it signed is presented;
-- `ca activate-root` makes it the signer; `ca retire-root` drops an old one from the
-- bundle. Roots made before this migration were signing from the start.
ALTER TABLE ca_roots ADD COLUMN activated_at_ms BIGINT;
UPDATE ca_roots SET activated_at_ms = created_at_ms;
