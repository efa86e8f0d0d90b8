-- Accounts, sessions and API keys: the durable source of truth.
-- Secrets are never stored: sessions and API keys are kept as SHA-256 digests
-- of 256-bit random values, passwords as argon2id PHC strings.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    -- Normalised to lowercase by the application, so lookups are exact matches.
    username      text NOT NULL UNIQUE CHECK (username = lower(username) AND length(username) BETWEEN 1 AND 64),
    password_hash text NOT NULL,
    -- The scopes this user may give API keys they create for themselves over
    -- HTTP. Operators (the CLI) may issue any scope; end users get `connect`
    -- unless an operator allows more, because `publish` reaches the server publish API.
    key_scopes    text[] NOT NULL DEFAULT '{connect}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- A disabled user cannot log in, mint tickets or use API keys.
    disabled_at   timestamptz
);

CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Updated at a bounded rate (not on every request); the idle timeout is
    -- enforced against it when the Redis cache has lost the session.
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    -- Absolute expiry: activity never extends it.
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    user_agent   text,
    ip           text
);

CREATE INDEX sessions_live_by_user ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The first characters of the key, safe to display so people can tell keys apart.
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_keys_by_user ON api_keys (user_id);

