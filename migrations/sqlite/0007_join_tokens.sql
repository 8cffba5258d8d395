-- Per-service join tokens: a sidecar presenting one may register as that service and
-- nothing else. Kept as the SHA-256 of the token, like API tokens; revoked ones stay
-- so their names stay taken.
CREATE TABLE join_tokens (
    name          TEXT   PRIMARY KEY,
    service       TEXT   NOT NULL,
    token_hash    TEXT   NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
