-- Accounts and sign-in (issue 15). Additive only: the previous release never reads
-- these tables and keeps running on this schema.
--
-- Teams: a user belongs to at most one team (accounts.team_id); a team's managers are
-- its members whose role is 'manager'.
CREATE TABLE teams (
    id         BIGSERIAL   PRIMARY KEY,
    name       TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX teams_name_key ON teams (lower(name));

-- One row per user with sign-in data, in its own table so that the users table and the
-- previous release's queries on it stay untouched. A user without a row (created by an
-- older release after this migration) is an employee without a password.
CREATE TABLE accounts (
    user_id              BIGINT      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    role                 TEXT        NOT NULL DEFAULT 'employee'
                                     CHECK (role IN ('employee', 'manager', 'admin')),
    team_id              BIGINT      REFERENCES teams (id) ON DELETE SET NULL,
    -- PHC string of an Argon2id hash; NULL: no password yet, an admin must set one.
    password_hash        TEXT,
    -- Set for a one-time password an admin handed out: the user must choose their own.
    must_change_password BOOLEAN     NOT NULL DEFAULT false,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX accounts_team_id ON accounts (team_id);

-- Existing users get accounts without passwords: nobody can sign in as them until an
-- admin sets a one-time password (README, "Security").
INSERT INTO accounts (user_id) SELECT id FROM users;

-- Sign-in sessions. Only the SHA-256 of the cookie's token is stored, so a copy of this
-- table does not let anyone sign in.
CREATE TABLE sessions (
    token_hash   BYTEA       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sessions_user_id ON sessions (user_id);
