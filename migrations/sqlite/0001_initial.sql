-- Outrider store, SQLite backend (embedded). Times are milliseconds since the Unix epoch so
-- both backends share one set of queries; integers are BIGINT throughout.

-- Every change, in commit order. `revision` is the global, monotonic revision.
CREATE TABLE revisions (
    revision      INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms BIGINT NOT NULL,
    actor         TEXT   NOT NULL,
    kind          TEXT   NOT NULL,            -- routing | rate-limit | logging | config
    service       TEXT   NOT NULL,
    name          TEXT   NOT NULL DEFAULT '', -- config document name, '' for policies
    operation     TEXT   NOT NULL,            -- put | delete
    before_doc    TEXT,                       -- JSON; NULL when nothing was there
    after_doc     TEXT,                       -- JSON; NULL after a delete
    reverts       BIGINT                      -- the revision this change reverted, if any
);
CREATE INDEX revisions_service ON revisions (service, revision);

CREATE TABLE policies (
    service       TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    document      TEXT   NOT NULL,
    revision      BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (service, kind)
);

CREATE TABLE config_documents (
    service       TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    content_type  TEXT   NOT NULL,
    content       BLOB   NOT NULL,
    revision      BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (service, name)
);

-- One row per sidecar (namespace/pod). `connected` is 0/1; status is derived from it
-- and `last_seen_ms` at read time, so no sweeper has to keep it current.
CREATE TABLE sidecars (
    id               TEXT   PRIMARY KEY,
    service          TEXT   NOT NULL,
    version          TEXT   NOT NULL,
    namespace        TEXT   NOT NULL,
    pod              TEXT   NOT NULL,
    address          TEXT   NOT NULL,
    inbound_port     BIGINT NOT NULL,
    outbound_port    BIGINT NOT NULL,
    admin_port       BIGINT NOT NULL,
    build_version    TEXT   NOT NULL,
    session          TEXT   NOT NULL,
    replica          TEXT   NOT NULL,
    connected        BIGINT NOT NULL,
    connected_at_ms  BIGINT NOT NULL,
    last_seen_ms     BIGINT NOT NULL,
    applied_revision BIGINT NOT NULL DEFAULT 0,
    last_nack        TEXT,
    last_nack_revision BIGINT,
    health           TEXT
);
CREATE INDEX sidecars_service ON sidecars (service);
