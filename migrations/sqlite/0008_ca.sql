-- The mesh's certificate authority: the roots sidecars trust. Several may be trusted at
-- once so that a new root is rolled in by adding it first; the newest root not retired
-- signs. `generation` 1 is the root made on first start: every replica inserts it if
-- absent and reads back the one that won, so concurrent starts agree on one root.
-- The key is kept here in PEM (a known trade-off, see docs/reference.md, "Identity"):
-- whoever reads this table can issue identities.
CREATE TABLE ca_roots (
    generation    BIGINT PRIMARY KEY,
    cert_pem      TEXT   NOT NULL,
    key_pem       TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    retired_at_ms BIGINT
);

-- The identity last issued to each sidecar and when that certificate expires.
ALTER TABLE sidecars ADD COLUMN identity TEXT;
ALTER TABLE sidecars ADD COLUMN certificate_expiry_ms BIGINT;
