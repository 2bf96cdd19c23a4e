-- Road agents who publish through roadfeed: accounts with a role, web sessions
-- (with their CSRF token) and personal API tokens. Only hashes of secrets are
-- stored: argon2 for passwords, SHA-256 for random session ids and API tokens.
-- Every write records its author (the agent's username, or "admin-token").
CREATE TABLE agents (
    id            serial PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    display_name  text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    role          text NOT NULL CHECK (role IN ('reader', 'editor', 'administrator')),
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent_sessions (
    id_hash  bytea PRIMARY KEY,
    agent_id integer NOT NULL REFERENCES agents (id),
    csrf     text NOT NULL,
    created  timestamptz NOT NULL DEFAULT now(),
    expires  timestamptz NOT NULL
);
CREATE INDEX agent_sessions_agent ON agent_sessions (agent_id);

CREATE TABLE agent_tokens (
    id         serial PRIMARY KEY,
    agent_id   integer NOT NULL REFERENCES agents (id),
    token_hash bytea NOT NULL UNIQUE,
    label      text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created    timestamptz NOT NULL DEFAULT now(),
    revoked    timestamptz
);

-- Who made each version of an event (NULL: a collector) and each marking.
ALTER TABLE event_versions ADD COLUMN author text;
ALTER TABLE markings ADD COLUMN author text;

GRANT SELECT ON agents, agent_sessions, agent_tokens TO roadfeed_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON agents, agent_sessions, agent_tokens TO roadfeed_writer;
GRANT USAGE ON SEQUENCE agents_id_seq, agent_tokens_id_seq TO roadfeed_writer;
