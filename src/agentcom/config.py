"""One settings model, read from flags, ``AGENTCOM_*`` variables and an optional TOML file.

Precedence, highest first: command-line flags, environment, the TOML file named by
``AGENTCOM_CONFIG`` (or ``--config``), then the defaults below.

Longer than most modules because every setting is declared here with its default, bounds
and help text (``config show`` and docs/configuration.md read them from this one model).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agentcom.store.location import POSTGRES_SCHEMES, is_postgres_url

__all__ = [
    "NAME_PATTERN",
    "Settings",
    "load_settings",
    "new_node_id",
    "path_or_postgres_url",
    "setting_sources",
    "upper_cased",
]


def upper_cased(value: Any) -> Any:
    """A log level given in any case (``info``), in the capitals ``logging`` names it with."""
    return value.upper() if isinstance(value, str) else value


def path_or_postgres_url(value: Any) -> Any:
    """A database given as text: a PostgreSQL URL stays a string, anything else is a SQLite
    file's path; a URL of another kind is refused (ValueError)."""
    if not isinstance(value, str):
        return value
    scheme, separator, _ = value.partition("://")
    if not separator or "/" in scheme:
        return Path(value)
    if f"{scheme.lower()}://" in POSTGRES_SCHEMES:
        return value
    raise ValueError(
        f"a database is a SQLite file path or a postgresql:// URL, not a {scheme}:// URL"
    )


NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
"""The characters of a cluster name and a node id: they go into Redis channel names and
message headers, so no space, colon or line break."""


def new_node_id() -> str:
    """A node id for a hub started without one: its host name and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "node"
    return f"{host}-{secrets.token_hex(3)}"


class Settings(BaseSettings):
    """Every tunable of the hub, with its default and its behaviour at the limit."""

    model_config = SettingsConfigDict(env_prefix="AGENTCOM_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(4000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    db: Annotated[Path | str, BeforeValidator(path_or_postgres_url)] = Field(
        Path("agentcom.db"),
        description="The database: a SQLite file (created when missing), or a PostgreSQL "
        "database as a postgresql:// (or postgres://) URL, e.g. "
        "postgresql://agentcom@db.internal/agentcom (its tables are created when missing).",
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(upper_cased)
    ] = Field("INFO", description="Python logging level.")

    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one human line per record; json: one JSON object per line "
        "(time, level, logger, message, and task_id, agent_id, generation when known).",
    )

    max_frame_bytes: int = Field(
        1_048_576, ge=1024, description="Larger inbound frames close the connection with 1009."
    )
    max_push_buffer_bytes: int = Field(
        16 * 1024 * 1024,
        ge=65536,
        description="Pushes written to an agent but not yet "
        "read by it; beyond this its connection is dropped (the agent reconnects).",
    )
    identify_timeout_s: float = Field(
        30.0, gt=0, description="A connection that has not identified by then is closed (1008)."
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, description="An agent silent for this long is disconnected (1001)."
    )
    accept_timeout_s: float = Field(
        60.0, gt=0, description="An assigned task not accepted within this goes back to the queue."
    )
    reclaim_after_s: float = Field(
        300.0,
        gt=0,
        description="An assigned or working task with no progress for this is reclaimed.",
    )
    disconnect_grace_s: float = Field(
        60.0,
        ge=0,
        description="How long a disconnected agent keeps its task before it is requeued.",
    )
    sweep_interval_s: float = Field(30.0, gt=0, description="Period of the timeout sweep.")
    default_max_retries: int = Field(3, ge=0, le=100, description="Retries before dead letter.")
    history_cap: int = Field(50, ge=2, description="Transitions kept per task (oldest dropped).")
    tool_calls_kept: int = Field(
        50, ge=0, description="Tool calls of an agentic run kept per task (oldest dropped)."
    )
    subscriber_queue: int = Field(
        1000, ge=1, description="Events buffered per subscriber; beyond it the oldest are dropped."
    )
    subscriber_queue_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Bytes of events buffered per subscriber, counting the batch being sent; "
        "beyond it the oldest are dropped (the newest event is always kept).",
    )
    pubsub: str = Field(
        "memory",
        description="Where events fan out: memory (within this hub process only) or a "
        "redis:// or rediss:// URL: every hub node of the cluster then sees every node's "
        "events through that Redis, and with a PostgreSQL db the nodes share the database "
        "and its queue (unless standby).",
    )
    cluster: str = Field(
        "agentcom",
        description="The name of this hub's cluster: prefixes every Redis key and channel, "
        "so several clusters can share one Redis (1 to 48 of A-Z a-z 0-9 _ . -).",
    )
    node_id: str = Field(
        default_factory=new_node_id,
        description="This hub node's name within its cluster (1 to 128 of A-Z a-z 0-9 _ . -); "
        "default: the host name and a random suffix, new at every start.",
    )
    pubsub_ping_interval_s: float = Field(
        5.0,
        gt=0,
        description="With Redis: a PING goes on the listening connection after this long "
        "without traffic, so that a connection that died silently is noticed.",
    )
    pubsub_timeout_s: float = Field(
        5.0,
        gt=0,
        description="With Redis: connecting, a PING's answer and a batch of outgoing events "
        "must each take less than this; beyond it the link counts as down and is rebuilt.",
    )
    pubsub_reconnect_max_s: float = Field(
        5.0,
        gt=0,
        description="With Redis: the longest wait between two reconnect attempts (they "
        "start at 0.1 s and double).",
    )
    pubsub_outbox_events: int = Field(
        10_000,
        ge=1,
        description="With Redis: events waiting to be sent to the other nodes; beyond it "
        "(Redis too slow) new ones are dropped and counted, and the other nodes are told.",
    )
    pubsub_outbox_bytes: int = Field(
        16 * 1024 * 1024,
        ge=65536,
        description="With Redis: bytes of events waiting to be sent to the other nodes; "
        "beyond it new ones are dropped and counted, and the other nodes are told.",
    )

    @field_validator("pubsub")
    @classmethod
    def _memory_or_redis_url(cls, value: str) -> str:
        if value == "memory":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("must be memory or a redis:// or rediss:// URL with a host")
        try:
            parts.port  # noqa: B018 (reading it checks it)
        except ValueError:
            raise ValueError("the port of the Redis URL must be a number up to 65535") from None
        return value

    @field_validator("cluster")
    @classmethod
    def _short_cluster_name(cls, value: str) -> str:
        if not 1 <= len(value) <= 48 or not NAME_PATTERN.fullmatch(value):
            raise ValueError("must be 1 to 48 characters among A-Z a-z 0-9 _ . -")
        return value

    @field_validator("node_id")
    @classmethod
    def _plain_node_id(cls, value: str) -> str:
        if not 1 <= len(value) <= 128 or not NAME_PATTERN.fullmatch(value):
            raise ValueError("must be 1 to 128 characters among A-Z a-z 0-9 _ . -")
        return value

    execution_tail_tasks: int = Field(
        20,
        ge=0,
        description="Tasks whose last execution output the hub keeps for dashboards that "
        "connect mid-run (in memory, saved at every sweep and at stop); beyond it the task "
        "least recently active is forgotten.",
    )
    execution_tail_events: int = Field(
        200, ge=1, description="Execution events kept per task; older ones are dropped."
    )
    offline_message_cap: int = Field(
        100, ge=0, description="Direct messages kept per offline agent (oldest dropped)."
    )
    offline_message_ttl_s: float = Field(
        3600.0, gt=0, description="Kept messages older than this are not delivered."
    )
    offline_inbox_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Payload bytes kept per offline agent; beyond it the oldest kept "
        "messages are dropped.",
    )
    channel_history_cap: int = Field(
        500, ge=1, description="Messages kept per channel, in memory and in the database."
    )
    channel_history_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Payload bytes of history kept per channel in memory (and read back "
        "at start); beyond it the oldest messages are dropped from memory.",
    )
    max_message_payload_bytes: int = Field(
        64 * 1024,
        ge=256,
        description="Largest payload (as JSON) of a direct, broadcast or channel message; "
        "a larger one is refused with payload_too_large.",
    )
    execution_event_max_keys: int = Field(
        32, ge=1, description="Fields kept per execution event (the first ones sent)."
    )
    execution_event_max_key_chars: int = Field(
        64, ge=1, description="Execution event fields with longer names are left out."
    )
    execution_event_max_text: int = Field(
        2000, ge=16, description="Execution event string values are cut to this length."
    )
    execution_tail_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Characters of execution events kept per task for late viewers; "
        "beyond it the oldest are dropped.",
    )
    fallback_wait_s: float = Field(
        5.0, ge=0, description="How long a task waits for a viable target before escalating."
    )
    endpoint_check_interval_s: float = Field(
        30.0, gt=0, description="Period of Ollama endpoint health checks."
    )
    endpoint_check_timeout_s: float = Field(
        5.0, gt=0, description="A health check slower than this counts as a failure."
    )
    endpoint_unhealthy_after: int = Field(
        3, ge=1, description="Consecutive failed checks that mark an endpoint unhealthy."
    )
    agent_endpoint_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (names, addresses, CIDR networks; '*' for any) where agents may "
        "report Ollama endpoints besides their own address; the hub probes no other host "
        "for an agent (the report is refused with invalid_url).",
    )
    claude_model: str = Field("claude-sonnet-4.5", description="Model id for complex tasks.")
    progress_rate: float = Field(50.0, gt=0, description="task_progress frames/s per agent.")
    progress_burst: int = Field(200, ge=1, description="task_progress burst per agent.")
    request_rate: float = Field(20.0, gt=0, description="Other frames/s per agent.")
    request_burst: int = Field(100, ge=1, description="Other frames burst per agent.")
    max_connections_per_address: int = Field(
        256,
        ge=1,
        description="Connections one IP address may hold, counted from TCP accept "
        "(beyond: HTTP 429).",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="TCP connections the hub holds at once, counted from accept; the "
        "open-file limit less reserved_descriptors lowers it (beyond: closed at accept).",
    )
    reserved_descriptors: int = Field(
        64,
        ge=8,
        description="File descriptors kept free of connections for the database, logs, "
        "health checks and Ollama probes.",
    )
    max_unauthenticated_connections: int = Field(
        512,
        ge=1,
        description="Connections that have not yet identified, subscribed or "
        "authenticated, HTTP requests included (beyond: closed at accept).",
    )
    max_handshake_bytes: int = Field(
        32_768,
        ge=1024,
        description="Bytes a connection may send before its HTTP request is whole "
        "(request line and headers); beyond: HTTP 431 and closed.",
    )
    max_unauthenticated_frame_bytes: int = Field(
        4096,
        ge=512,
        description="Largest inbound frame before the connection has identified, "
        "subscribed or authenticated (beyond: closed with 1009).",
    )
    accept_error_log_interval_s: float = Field(
        60.0,
        gt=0,
        description="Failed TCP accepts (out of file descriptors) are logged once per "
        "interval, with their count.",
    )
    max_reply_buffer_bytes: int = Field(
        8 * 1024 * 1024,
        ge=65536,
        description="Replies written to one operator, dashboard or HTTP client but not "
        "yet read by it; beyond this the client is cut off.",
    )
    max_reply_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=65536,
        description="Replies written but unread across the hub; beyond it the clients "
        "with the most unread are cut off.",
    )
    list_limit_max: int = Field(
        200,
        ge=1,
        le=1000,
        description="Most tasks one task_list or /api/tasks page holds; a larger limit "
        "is cut to it and the reply carries a cursor to the next page.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed on /ws/dashboard and /ws/operator besides the "
        "hub's own (beyond: HTTP 403); '*' allows any.",
    )
    auth_failures_before_delay: int = Field(
        5,
        ge=1,
        description="Bad tokens from one address per minute before its replies slow "
        "down (doubling, up to 5 s).",
    )
    handshake_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not completed its handshake is dropped."
    )
    keepalive_interval_s: float = Field(
        20.0,
        ge=0,
        description="Period of the WebSocket pings the hub sends on every "
        "connection; 0 sends none.",
    )
    keepalive_timeout_s: float = Field(
        20.0,
        ge=0,
        description="A connection whose pong does not arrive within this after a "
        "ping is closed (1011); 0 waits for ever.",
    )
    close_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long the hub waits for a peer to answer its closing "
        "handshake before it drops the TCP connection.",
    )
    compression: bool = Field(
        False,
        description="Offer permessage-deflate to clients that ask for it: less traffic, "
        "more hub CPU and memory per connection.",
    )
    certfile: Path | None = Field(
        None, description="TLS certificate (PEM): serve wss:// and https://."
    )
    keyfile: Path | None = Field(None, description="TLS private key (PEM) for certfile.")
    insecure: bool = Field(
        False,
        description="Allow listening beyond loopback without TLS (tokens then cross the "
        "network in clear); the hub warns at start and /health says so. Without it, such "
        "a hub refuses to start.",
    )
    token_check_interval_s: float = Field(
        2.0,
        gt=0,
        description="How often the hub looks for revoked tokens in the database; the open "
        "sessions of a revoked token are closed (4003) within this.",
    )
    commit_batch_max: int = Field(
        2000,
        ge=1,
        description="Rows per INSERT batch; a commit writes everything staged in "
        "one transaction (one fsync) in batches of this size.",
    )
    db_busy_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a database write waits for a lock held by another "
        "process before it fails: the request is refused with store_unavailable.",
    )
    db_timeout_s: float = Field(
        2.0,
        gt=0,
        description="PostgreSQL only: how long a read may wait for the server before its "
        "connection is dropped and it fails (a write waits this on top of the busy "
        "timeout), so that a server behind a silent network never holds the hub.",
    )
    store_retry_interval_s: float = Field(
        1.0,
        gt=0,
        description="While the database cannot be written, the hub tries a small "
        "probe write this often; the first that succeeds ends the refusal of new work.",
    )
    standby: bool = Field(
        False,
        description="When another hub already serves the database, wait as its standby "
        "instead of exiting (status 5): listen, answer 503 to everything (/health says "
        "standby and names the serving hub), and take over when its lock comes free.",
    )
    standby_retry_s: float = Field(
        1.0,
        gt=0,
        description="How often a standby tries to take the database's lock: at most this "
        "long passes between the serving hub's end and the standby's takeover.",
    )
    lock_check_interval_s: float = Field(
        2.0,
        gt=0,
        description="PostgreSQL: how often the serving hub checks that the session holding "
        "its lock is alive (retaking the lock if the session ended and nobody took it); a "
        "hub that lost its lock to another stops serving (exit status 6).",
    )
    lock_check_timeout_s: float = Field(
        10.0,
        gt=0,
        description="PostgreSQL: how long one check of the hub's lock may take before it "
        "counts as 'cannot tell' (the hub keeps serving; its writes are fenced).",
    )
    node_heartbeat_s: float = Field(
        1.0,
        gt=0,
        description="Nodes sharing a database: how often each node records in it that it is alive.",
    )
    node_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Nodes sharing a database: a node silent this long counts as gone; its "
        "agents' tasks are then held for disconnect_grace_s, then given to other agents.",
    )
    queue_poll_s: float = Field(
        2.0,
        gt=0,
        description="Nodes sharing a database: how often a node re-reads the unfinished "
        "tasks, in case a wake-up from another node was lost (Redis down).",
    )
    metrics_label_cap: int = Field(
        100,
        ge=1,
        description="Distinct values kept per metric label that agents or operators "
        "choose (agent ids, model names, frame fields); later values are counted as other.",
    )
    loop_lag_interval_s: float = Field(
        1.0,
        gt=0,
        description="Period of the timer whose lateness is agentcom_event_loop_lag_seconds.",
    )

    @property
    def shares_database(self) -> bool:
        """Whether this node serves its database together with other nodes: a PostgreSQL
        database and a Redis pubsub, not as a standby."""
        return is_postgres_url(self.db) and self.pubsub != "memory" and not self.standby

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("AGENTCOM_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def setting_sources(config_file: str | None = None, **overrides: Any) -> dict[str, str]:
    """Where each setting of :func:`load_settings` with the same arguments comes from:
    ``flag --NAME``, ``env AGENTCOM_NAME``, ``file PATH`` or ``default``, in the order of
    precedence. Raises what reading the TOML file raises."""
    path = config_file or os.environ.get("AGENTCOM_CONFIG")
    in_file: set[str] = set()
    if path:
        with open(path, "rb") as file:
            in_file = set(tomllib.load(file))
    in_environment = {name.upper() for name in os.environ}
    sources = {}
    for name in Settings.model_fields:
        variable = f"AGENTCOM_{name.upper()}"
        if overrides.get(name) is not None:
            sources[name] = f"flag --{name.replace('_', '-')}"
        elif variable in in_environment:
            sources[name] = f"env {variable}"
        elif name in in_file:
            sources[name] = f"file {path}"
        else:
            sources[name] = "default"
    return sources


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Settings from flags (``overrides`` that are not None), environment and TOML file."""
    if config_file:
        os.environ["AGENTCOM_CONFIG"] = config_file
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
