-- Dashboard and API (issue 5): API tokens with roles, and propagation of each revision.

-- API tokens. Only the SHA-256 of a token is kept: tokens are 256 random bits, so a
-- fast hash is as safe as a slow one, and it lets each request find its token by an
-- indexed lookup. Revoked tokens stay (with revoked_at_ms) so the history's actors
-- still name someone.
CREATE TABLE api_tokens (
    name          TEXT   PRIMARY KEY,
    role          TEXT   NOT NULL,            -- viewer | editor | admin
    token_hash    TEXT   NOT NULL UNIQUE,     -- hex SHA-256 of the token
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

-- When each sidecar first applied each revision of its service (an ACK of that
-- revision or a later one). Only sidecars connected when the revision was written
-- count, so a pod that starts an hour later does not stretch the figure. Every replica
-- writes the ACKs of its own streams here, so every replica can answer.
CREATE TABLE revision_acks (
    revision    BIGINT NOT NULL,
    sidecar_id  TEXT   NOT NULL,
    acked_at_ms BIGINT NOT NULL,
    PRIMARY KEY (revision, sidecar_id)
);
