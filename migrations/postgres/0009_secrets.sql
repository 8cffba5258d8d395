-- Secrets: values a service needs that nobody reads back. Only the sealed value is
-- kept (AES-256-GCM: nonce, ciphertext, tag; the service and name are its associated
-- data), with the id of the key that sealed it so another key is recognised as such.
-- `size` is the plaintext's length, the one thing about the value the API shows.
CREATE TABLE secrets (
    service       TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    sealed        BYTEA  NOT NULL,
    key_id        TEXT   NOT NULL,
    size          BIGINT NOT NULL,
    revision      BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (service, name)
);
