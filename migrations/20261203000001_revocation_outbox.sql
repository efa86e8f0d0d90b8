-- Revocations whose Redis half is still to be done.
--
-- A revocation commits in Postgres first (sessions.revoked_at,
-- api_keys.revoked_at, users.disabled_at) together with a row here; then
-- auth-service evicts the session cache, writes the revocation markers and
-- broadcasts to the ws-nodes, and marks the row done. Should Redis be
-- unreachable at that moment, the row stays pending and every auth-service
-- process retries it until Redis answers: a revocation never stays half done.
CREATE TABLE revocation_outbox (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('session', 'api_key', 'user')),
    -- The session, API key or user revoked.
    subject    uuid NOT NULL,
    -- Sessions: the token hash, to evict the session's cache entry.
    token_hash bytea CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at    timestamptz
);

CREATE INDEX revocation_outbox_pending ON revocation_outbox (id) WHERE done_at IS NULL;
