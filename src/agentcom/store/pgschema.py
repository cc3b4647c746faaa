"""The PostgreSQL schema, created or migrated when a hub or a token command opens the
database.

The schema is a list of migrations; ``schema_version`` holds how many have been applied.
Applying them is one transaction holding an advisory lock
(``pg_advisory_xact_lock``), so several hubs or token commands that start at once on an
empty database wait for the first, then find the schema made. A database made by a newer
agentcom (a version past the last migration known here) is refused rather than
misread. Migrations are never edited once released: a change is a new migration
appended to :data:`MIGRATIONS`.

Text keys are ``COLLATE "C"``: their order is the order of their characters, as in
SQLite, whatever the database's locale (task id prefixes are looked up as a range).
"""

from __future__ import annotations

import psycopg

from agentcom.errors import StoreError
from agentcom.store.pgconnection import PgConnection, one_line

__all__ = ["HUB_LOCK", "LEADER_LOCK", "MIGRATIONS", "SCHEMA_LOCK", "ensure_schema", "has_schema"]

_LOCK_CLASS = 0x61676E74  # "agnt": the first key of agentcom's advisory locks
SCHEMA_LOCK = (_LOCK_CLASS, 1)
"""The advisory lock (two-key form) held while the schema is created or migrated."""
HUB_LOCK = (_LOCK_CLASS, 2)
"""The advisory lock held by the hub that serves the database (store/pglock.py)."""
LEADER_LOCK = (_LOCK_CLASS, 3)
"""The advisory lock held by the leader of the hub nodes sharing the database, the one
that runs the sweeps and reclaims (store/pgnodes.py)."""

_VERSION_1 = """
CREATE TABLE tasks (
    task_id text COLLATE "C" PRIMARY KEY,
    position bigint GENERATED ALWAYS AS IDENTITY,
    status text NOT NULL,
    priority text NOT NULL,
    assigned_to text COLLATE "C",
    generation bigint NOT NULL,
    model_used text COLLATE "C",
    tokens_in bigint,
    tokens_out bigint,
    estimated_cost_usd double precision,
    equivalent_claude_cost_usd double precision,
    execution_ms double precision,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    needed_capabilities text[] COLLATE "C" NOT NULL,
    -- The task as JSON without what lists leave out (protocol.task.LISTED_WITHOUT) ...
    body text NOT NULL,
    -- ... and that, as a JSON object of its own: the whole task is both spliced.
    rest text NOT NULL,
    -- What lists say of the result (protocol.task.ResultSummary) as JSON; NULL: none.
    result_summary text
);
CREATE INDEX tasks_by_status ON tasks (status, created_at);
CREATE INDEX tasks_by_update ON tasks (updated_at, position);
CREATE TABLE task_dependencies (
    prerequisite_id text COLLATE "C" NOT NULL,
    task_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (prerequisite_id, task_id)
);
CREATE TABLE endpoints (
    endpoint_id text COLLATE "C" PRIMARY KEY,
    position bigint GENERATED ALWAYS AS IDENTITY,
    url text NOT NULL,
    source text NOT NULL,
    agent_id text,
    created_at bigint NOT NULL,
    approved boolean NOT NULL DEFAULT false
);
CREATE TABLE channels (
    name text COLLATE "C" PRIMARY KEY,
    description text,
    created_at bigint NOT NULL,
    seq bigint NOT NULL
);
CREATE TABLE channel_subscriptions (
    channel text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (channel, agent_id)
);
CREATE TABLE channel_messages (
    channel text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (channel, seq)
);
CREATE TABLE tokens (
    agent_id text COLLATE "C" PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    role text NOT NULL,
    created_at bigint NOT NULL
);
-- Every token that stops being valid (revoked, replaced, or its role changed), written
-- by triggers so that any writer (the CLI while hubs run, psql) is noticed: each hub
-- polls this table for rows past the last it saw and closes those tokens' sessions.
CREATE TABLE token_revocations (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id text NOT NULL,
    token_hash text NOT NULL,
    revoked_at bigint NOT NULL
);
CREATE FUNCTION agentcom_token_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Revocations commit in the order of their seq: a hub that has seen seq N never
    -- misses a lower one committed later.
    LOCK TABLE token_revocations IN EXCLUSIVE MODE;
    INSERT INTO token_revocations (agent_id, token_hash, revoked_at)
    VALUES (OLD.agent_id, OLD.token_hash,
            (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    RETURN NULL;
END
$$;
CREATE TRIGGER token_deleted AFTER DELETE ON tokens
FOR EACH ROW EXECUTE FUNCTION agentcom_token_revoked();
CREATE TRIGGER token_replaced AFTER UPDATE ON tokens
FOR EACH ROW WHEN (OLD.token_hash <> NEW.token_hash OR OLD.role <> NEW.role)
EXECUTE FUNCTION agentcom_token_revoked();
CREATE TABLE execution_tails (
    task_id text COLLATE "C" PRIMARY KEY,
    position bigint GENERATED ALWAYS AS IDENTITY,
    last_at bigint NOT NULL,
    events text NOT NULL
);
CREATE TABLE queue_history (
    minute bigint PRIMARY KEY,
    depth bigint NOT NULL,
    completions bigint NOT NULL
);
CREATE TABLE write_probe (
    id integer PRIMARY KEY CHECK (id = 1),
    written_at bigint NOT NULL
);
-- The hub that holds HUB_LOCK, for the one refused: its session (backend_pid) tells
-- whether the row is the holder's or a dead hub's.
CREATE TABLE hub_owner (
    id integer PRIMARY KEY CHECK (id = 1),
    backend_pid integer NOT NULL,
    pid integer,
    host text,
    address text,
    since bigint NOT NULL
);
"""

# Several hub nodes on one database: which are alive, and which node each agent is
# connected to. Times are the database's clock in ms, never a node's.
_VERSION_2 = """
CREATE TABLE hub_nodes (
    node_id text COLLATE "C" PRIMARY KEY,
    address text,
    started_at bigint NOT NULL,
    heartbeat_at bigint NOT NULL
);
-- An agent is connected to one node at most: its newest connection. Its row stays once
-- that connection ends (ended_at), so every node lists it offline as its node does,
-- until that node leaves.
CREATE TABLE agent_sessions (
    agent_id text COLLATE "C" PRIMARY KEY,
    node_id text COLLATE "C" NOT NULL,
    connected_at bigint NOT NULL,
    ended_at bigint,
    -- The agent as its node lists it (protocol.events.AgentView) as JSON, as of its last
    -- agent event; NULL: not known yet.
    info text
);
CREATE INDEX agent_sessions_by_node ON agent_sessions (node_id);
-- The unfinished tasks of one agent (a node reads them when the agent arrives).
CREATE INDEX tasks_active_by_agent ON tasks (assigned_to) WHERE status IN ('assigned', 'working');
-- Direct messages between nodes (store/pgmessages.py): each waits here for the node its
-- recipient is connected to, now or next, which deletes it as it delivers it. sent_at is
-- the sender's time (ms), size its payload's bytes plus a fixed overhead, body the
-- message as pushed (JSON).
CREATE TABLE agent_inbox (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient text COLLATE "C" NOT NULL,
    sent_at bigint NOT NULL,
    size bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX agent_inbox_by_recipient ON agent_inbox (recipient, position);
"""

MIGRATIONS: tuple[str, ...] = (_VERSION_1, _VERSION_2)
"""Each version's migration, in order: applying the first N gives schema version N."""


def has_schema(connection: PgConnection) -> bool:
    """Whether the database holds agentcom's tables (of any version)."""
    row = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    return bool(row and row[0])


def ensure_schema(connection: PgConnection) -> None:
    """Create the schema, or migrate it to this version's, unless it is there already.

    Raises:
        StoreError: the database was made by a newer agentcom, or cannot be written.
    """
    try:
        if has_schema(connection) and _version(connection) == len(MIGRATIONS):
            return  # the usual case: no lock, no write
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer)")
            version = _version(connection)
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"its schema is version {version}, made by a newer agentcom "
                    f"(this one knows versions up to {len(MIGRATIONS)})"
                )
            for migration in MIGRATIONS[version:]:
                connection.execute(migration)
            connection.execute("DELETE FROM schema_version")
            connection.execute(
                "INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS),)
            )
    except psycopg.Error as exc:
        raise StoreError(f"cannot create or migrate the schema: {one_line(exc)}") from None


def _version(connection: PgConnection) -> int:
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0
