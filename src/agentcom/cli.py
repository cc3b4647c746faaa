"""The ``agentcom`` command: ``serve``, ``token``, ``task``, ``agents``, ``endpoints``,
``channel``, ``stats``, ``watch`` and ``config``; errors are one line on stderr and an exit
status from :data:`EXIT_STATUS`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import sqlite3
import ssl
import sys
import threading
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_settings import SettingsError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agentcom import __version__
from agentcom.client import (
    AuthenticationError,
    ConnectionLost,
    OperatorClient,
    RequestFailed,
    hub_base_url,
    websocket_url,
)
from agentcom.config import Settings, load_settings, setting_sources
from agentcom.errors import ConfigurationError, DatabaseInUse, StoreError
from agentcom.hub.auth import Role, hash_token, new_token
from agentcom.hub.hub import TASK_ID_PREFIX_MIN
from agentcom.logs import configure_logging
from agentcom.protocol.common import Tier
from agentcom.sidecar import command as sidecar_command
from agentcom.store import tokens

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TOKEN = 0, 1, 2, 3, 4
EXIT_DATABASE_IN_USE = 5

ROLES_AND_ENVIRONMENT = """\
roles (a token has one; `agentcom token create ID --role ROLE`):
  agent   a sidecar: connects to ws://HOST:PORT/ws as exactly the agent id of its token;
          the operator commands (all but serve, token and config) refuse it
  viewer  an operator who may look: task list/show, agents, endpoints, stats, watch,
          the dashboard and /api/*
  admin   a viewer who may also change things: submit, cancel, retry, requeue, drain,
          endpoints add/remove, channel create

environment:
  AGENTCOM_HUB     the hub for operator commands (--hub), default http://127.0.0.1:4000;
                   the sidecars' ws://HOST:PORT/ws is understood too
  AGENTCOM_TOKEN   a viewer or admin token for operator commands (--token)
  AGENTCOM_CAFILE  PEM certificates to trust for an https:// hub (--cafile)
  AGENTCOM_DB      the SQLite file of `serve` and `token` (--db), default ./agentcom.db
  AGENTCOM_CONFIG  a TOML settings file for `serve` and `config show` (--config)
  AGENTCOM_<NAME>  any hub setting, e.g. AGENTCOM_PORT=4100, AGENTCOM_IDLE_TIMEOUT_S=120;
                   `agentcom config show` lists them with their values and sources
"""

EXIT_STATUS = """\
exit status:
  0    success
  1    the command ran but did not succeed: the hub refused the request (forbidden,
       not_found, invalid_state...), the connection to it was lost, `task submit --wait`
       ended other than completed, or a database or port could not be used (a token
       command's database that does not exist, `serve`'s port already in use)
  2    usage error: unknown command or option, bad value (refused by the CLI or by the
       hub: validation_failed, invalid_url, invalid_name, ambiguous_task_id...), missing
       token, invalid setting, an unreadable or invalid config, certificate, key or CA
       file
  3    cannot reach the hub: down, wrong --hub, TLS failure, not a hub, or it refused
       the connection (HTTP 429 too many connections, 503 stopping)
  4    the hub refused the token (unknown, revoked, or an agent token)
  5    `serve`: another hub already serves the database (one database, one hub)
  130  interrupted (Ctrl-C); `task submit --wait` first says that the task stays
       queued, with its id (the task is not cancelled)
"""


def _reason(exc: BaseException) -> str:
    """What went wrong, never empty (some errors have no message: a reset, a timeout)."""
    text = str(exc).strip()
    if text:
        return text
    return "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__


class CliError(Exception):
    """A problem reported as one line on stderr."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- serve ---------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    _check_tls_files(settings)
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(_run_hub(settings))


def _settings(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    """The hub's settings from the flags of ``serve`` (or ``config show``), the
    environment and the config file, and where each came from."""
    config = args.config or os.environ.get("AGENTCOM_CONFIG")
    if config:  # a file named but missing is a mistake: never run on defaults instead
        _readable(config, "config file")
    flags = {
        "host": args.host,
        "port": args.port,
        "db": args.db,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "certfile": args.certfile,
        "keyfile": args.keyfile,
        "insecure": args.insecure,
    }
    try:
        return load_settings(args.config, **flags), setting_sources(args.config, **flags)
    except ValidationError as exc:
        raise CliError(
            f"invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
    except SettingsError as exc:  # e.g. a list setting in the environment that is not JSON
        raise CliError(f"invalid setting: {_reason(exc)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"the config file {config} is not valid TOML: {_reason(exc)}") from None
    except OSError as exc:  # e.g. replaced by a directory since the check above
        reason = exc.strerror or _reason(exc)
        raise CliError(f"cannot read the config file {config}: {reason}") from None


def _config_show(args: argparse.Namespace) -> int:
    """Every setting with its effective value and where it came from, secrets masked."""
    settings, sources = _settings(args)
    rows = [
        {"name": name, "value": _masked(name, value), "source": sources[name]}
        for name, value in settings.model_dump(mode="json").items()
    ]
    client = {"hub": "AGENTCOM_HUB", "token": "AGENTCOM_TOKEN", "cafile": "AGENTCOM_CAFILE"}
    for name, variable in client.items():
        if name in args.typed:
            source = f"flag --{name}"
        elif os.environ.get(variable):
            source = f"env {variable}"
        else:
            source = "default"
        rows.append({"name": name, "value": _masked(name, getattr(args, name)), "source": source})
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    _table(
        ["SETTING", "VALUE", "SOURCE"],
        [[row["name"], row["value"], row["source"]] for row in rows],
        empty="no settings",
    )
    print("\n(hub, token and cafile are the operator commands'; the rest are `serve`'s)")
    return EXIT_OK


_SECRET_SETTINGS = frozenset({"token"})


def _masked(name: str, value: Any) -> Any:
    """``value`` with secrets hidden: a token shows its first 6 characters, a URL's
    password is starred."""
    if value is None:
        return None
    if name in _SECRET_SETTINGS:
        return f"{str(value)[:6]}..." if value else value
    if isinstance(value, str) and "@" in value and "://" in value:
        return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:****@", value)
    if isinstance(value, list):
        return [_masked(name, item) for item in value]
    return value


def _readable(path: str | Path, what: str) -> None:
    """Refuse a file that cannot be read, naming it (``what``: "config file"...)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror or _reason(exc)}") from None


class _Encrypted(Exception):
    """The key asks for a passphrase: the hub prompts for it itself when it starts."""


def _refuse_passphrase() -> str:
    raise _Encrypted


def _check_tls_files(settings: Settings) -> None:
    """Refuse, before the hub starts, certificate and key files it could not serve with.

    A key without a certificate would serve in clear: that is refused too.
    """
    certfile, keyfile = settings.certfile, settings.keyfile
    if keyfile is not None and certfile is None:
        raise CliError(f"a TLS key ({keyfile}) needs its certificate: set --certfile too")
    if certfile is None:
        return
    _readable(certfile, "TLS certificate")
    if keyfile is not None:
        _readable(keyfile, "TLS key")
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile, password=_refuse_passphrase)
    except _Encrypted:
        pass
    except ssl.SSLError as exc:
        files = f"{certfile} and key {keyfile}" if keyfile is not None else str(certfile)
        raise CliError(f"cannot use the TLS certificate {files}: {_reason(exc)}") from None


async def _run_hub(settings: Settings) -> int:
    from agentcom.server.app import HubServer
    from agentcom.server.memory import return_large_blocks_to_the_system

    return_large_blocks_to_the_system()
    try:
        server = HubServer(settings)
        await server.start()
    except DatabaseInUse as exc:
        raise CliError(str(exc), EXIT_DATABASE_IN_USE) from None
    except (sqlite3.Error, StoreError) as exc:
        message = f"cannot use the database {settings.db}: {_reason(exc)}"
        raise CliError(message, EXIT_FAILED) from None
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    except ssl.SSLError as exc:  # e.g. the wrong passphrase for the key
        raise CliError(
            f"cannot use the TLS certificate {settings.certfile}: {_reason(exc)}"
        ) from None
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else None
        message = f"cannot listen on {settings.host}:{settings.port}: " + (
            reason or exc.strerror or _reason(exc)
        )
        raise CliError(message, EXIT_FAILED) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the lines a supervisor waits for
        loop.add_signal_handler(signum, stop.set)
    print(f"agentcom {__version__} hub on {server.url('/ws')}", flush=True)
    print(f"dashboard: {server.url('/dashboard', websocket=False)}", flush=True)
    await stop.wait()
    await server.stop()
    return EXIT_OK


# --- tokens --------------------------------------------------------------------------


def _db_path(args: argparse.Namespace) -> str:
    return str(args.db or os.environ.get("AGENTCOM_DB") or "agentcom.db")


Handler = Callable[[argparse.Namespace], int]


def _on_database(handler: Handler) -> Handler:
    """Report a database that cannot be opened or written as one line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        if os.path.isdir(_db_path(args)):
            message = f"cannot use the database {_db_path(args)}: it is a directory"
            raise CliError(message, EXIT_FAILED)
        try:
            return handler(args)
        except sqlite3.Error as exc:
            message = f"cannot use the database {_db_path(args)}: {exc}"
            raise CliError(message, EXIT_FAILED) from None

    return run


def _existing_db_path(args: argparse.Namespace) -> str:
    """The database of a command that must not create one: a missing file is an error."""
    path = _db_path(args)
    if not os.path.lexists(path):
        raise CliError(
            f"the database {path} does not exist (the token commands use --db, "
            "else $AGENTCOM_DB, else ./agentcom.db)",
            EXIT_FAILED,
        )
    return path


def _token_create(args: argparse.Namespace) -> int:
    if not 1 <= len(args.agent_id) <= 128:
        raise CliError("AGENT_ID must be 1 to 128 characters")
    path = _db_path(args)
    creating = not os.path.lexists(path)
    token = new_token()
    tokens.save_token(path, args.agent_id, hash_token(token), args.role)
    if creating:
        print(f"created the database {path}", file=sys.stderr)
    print(token)
    return EXIT_OK


def _token_list(args: argparse.Namespace) -> int:
    records = tokens.list_tokens(_existing_db_path(args))
    rows = [{"agent_id": r.agent_id, "role": r.role, "created_at": r.created_at} for r in records]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    _table(
        ["AGENT", "ROLE", "CREATED"],
        [[row["agent_id"], row["role"], _time(row["created_at"])] for row in rows],
        empty="no tokens",
    )
    return EXIT_OK


def _token_revoke(args: argparse.Namespace) -> int:
    if not tokens.delete_token(_existing_db_path(args), args.agent_id):
        raise CliError(f"no token for {args.agent_id}", EXIT_FAILED)
    print(f"revoked {args.agent_id}", file=sys.stderr)
    return EXIT_OK


# --- operator commands ---------------------------------------------------------------


# --- human output ----------------------------------------------------------------------


def _time(ms: Any) -> str:
    """The one date format of human output: UTC, to the second."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _usd(amount: Any) -> str:
    """Money as money: ``$0.0012``."""
    return "-" if amount is None else f"${amount:.4f}"


def _cell(value: Any) -> str:
    """A value as a table cell or a field: never a Python repr (``None``, ``['gpu']``)."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return " ".join(str(value).split())  # one line


def _table(
    headers: list[str],
    rows: list[list[Any]],
    *,
    empty: str,
    notes: list[str | None] | None = None,
) -> None:
    """Print rows under a header, columns aligned (the last one unpadded); ``empty``
    (e.g. "no tasks") when there is no row. A row's note, if any, is an indented line
    under it."""
    if not rows:
        print(empty)
        return
    cells = [headers, *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(headers) - 1)]
    for number, line in enumerate(cells):
        padded = [text.ljust(width) for text, width in zip(line, widths, strict=False)]
        print("  ".join([*padded, line[-1]]).rstrip())
        note = notes[number - 1] if notes and number else None
        if note:
            print(f"  {note}")


def _operator(
    action: Callable[[OperatorClient, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.token:
            raise CliError("no token: pass --token or set AGENTCOM_TOKEN")
        _check_hub_url(args.hub)
        args.hub = _hub_address(args.hub)
        context = _trusting(args.cafile)

        async def connected() -> int:
            client = OperatorClient(args.hub, args.token, ssl=context)
            try:
                await client.connect()
            except AuthenticationError:
                raise CliError("the hub refused the token", EXIT_TOKEN) from None
            except InvalidURI as exc:
                raise CliError(f"bad hub URL {args.hub!r}: {_reason(exc)}") from None
            except (OSError, InvalidHandshake, ConnectionClosed, ValueError) as exc:
                # ValueError: an answer that is not JSON, from a WebSocket server that is no hub
                raise _unreachable(args.hub, exc) from None
            try:
                return await action(client, args)
            except RequestFailed as exc:
                code = EXIT_USAGE if exc.code in _BAD_VALUE_ERRORS else EXIT_FAILED
                raise CliError(str(exc), code) from None
            except AuthenticationError:  # `watch` authenticates again on its own socket
                raise CliError("the hub refused the token", EXIT_TOKEN) from None
            except BrokenPipeError:
                raise  # stdout closed early (e.g. piped to head): not the hub's fault
            except ConnectionError as exc:
                raise CliError(_reason(exc), EXIT_FAILED) from None
            except ConnectionClosed as exc:  # e.g. the hub restarted under `watch`
                raise CliError(f"connection to the hub closed ({exc})", EXIT_FAILED) from None
            except (OSError, InvalidHandshake) as exc:  # `watch` opening its own socket
                raise _unreachable(args.hub, exc) from None
            finally:
                await client.close()

        return asyncio.run(connected())

    return run


_BAD_VALUE_ERRORS = frozenset(
    {"validation_failed", "invalid_url", "invalid_name", "invalid_task_id", "ambiguous_task_id"}
)
"""The hub's answers to a bad value: a usage error (exit 2), like one the CLI catches."""


def _hub_address(hub: str) -> str:
    """The hub's address for a ``--hub`` that may name one of its endpoints instead (the
    sidecars' ``ws://HOST:PORT/ws``): that is replaced, saying so on stderr."""
    typed = urlsplit(hub if "//" in hub else f"http://{hub}")
    if not typed.path.strip("/"):
        return hub
    base = hub_base_url(hub)
    print(
        f"agentcom: note: {hub} is an endpoint of the hub, not its address; using the hub "
        f"at {base} (operator commands take http://HOST:PORT, sidecars ws://HOST:PORT/ws)",
        file=sys.stderr,
    )
    return base


def _check_hub_url(hub: str) -> None:
    """Refuse a hub URL that cannot name a hub before trying to connect to it."""
    problem = None
    try:
        parts = urlsplit(websocket_url(hub, "/ws/operator"))
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        problem = _reason(exc)
    else:
        if parts.scheme not in ("ws", "wss"):
            problem = "it must start with http://, https://, ws:// or wss://"
        elif not parts.hostname:
            problem = "it names no host"
    if problem is not None:
        raise CliError(f"bad hub URL {hub!r} (--hub or $AGENTCOM_HUB): {problem}")


_HTTP_HINTS = {
    429: "too many connections from this address",
    503: "the hub is stopping or restarting; try again",
}


def _unreachable(hub: str, exc: BaseException) -> CliError:
    """The one line for a hub that cannot be reached, or that is not a hub."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = _HTTP_HINTS.get(status, "is it an agentcom hub?")
        detail = f"it answered HTTP {status} {exc.response.reason_phrase} ({hint})"
    elif isinstance(exc, InvalidHandshake | ConnectionClosed | ValueError):
        detail = f"{_reason(exc)} (is it an agentcom hub?)"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        detail = _reason(exc)
    elif isinstance(exc, ssl.SSLError | ConnectionResetError) and hub.startswith(
        ("https:", "wss:")
    ):
        detail = f"{_reason(exc)} (does the hub serve TLS?)"
    else:
        detail = _reason(exc)
    return CliError(f"cannot reach the hub at {hub}: {detail}", EXIT_UNREACHABLE)


def _trusting(cafile: str | None) -> ssl.SSLContext | None:
    """A TLS context that trusts the certificates in ``cafile`` (None: the system's)."""
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot use the CA file {cafile}: {exc}") from None


def _print_task(task: dict[str, Any]) -> None:
    decision = task.get("routing_decision") or {}
    execution = task.get("execution") or {}
    print(f"task {task['task_id']}  {task['status']}  priority {task['priority']}")
    print(f"  description: {_cell(task['description'])}")
    print(f"  assigned to: {_cell(task.get('assigned_to'))} (generation {task['generation']})")
    if task.get("waiting_reason"):
        print(f"  waiting: {task['waiting_reason']}")
    if task.get("depends_on"):
        print(f"  prerequisites: {', '.join(task['depends_on'])}")
    if task.get("dependants"):
        more = task["dependants_total"] - len(task["dependants"])
        print(f"  dependants: {', '.join(task['dependants'])}{f' and {more} more' if more else ''}")
    if task.get("held_for"):
        print(f"  held: {_hold(task['held_for'])}")
    print(
        f"  retries: {task['retry_count']}/{task['max_retries']}"
        f"  last error: {_cell(task.get('last_error'))}"
    )
    if decision:
        print(
            f"  routing: tier {_cell(decision.get('effective_tier'))}"
            f" -> {_cell(decision.get('target_type'))}"
            f"  endpoint {_cell(decision.get('selected_endpoint'))}"
            f"  model {_cell(decision.get('selected_model'))}"
            f"  cost tier {_cell(decision.get('estimated_cost_tier'))}"
        )
        if decision.get("fallback_used"):
            print(f"  fallback: {_cell(decision.get('fallback_reason'))}")
        print(f"  reason: {_cell(decision.get('classification_reason'))}")
    if execution:
        print(f"  execution: {_execution(execution)}")
    if task.get("agentic"):
        _print_agentic(task["agentic"])
    output = (task.get("result") or {}).get("output")
    if output is not None:
        print("  output:")
        text = output if isinstance(output, str) else json.dumps(output, indent=2)
        for line in text.splitlines() or [""]:
            print(f"    {line}")
    print("  history:")
    for entry in task.get("history", []):
        line = f"    {_time(entry['at'])}  {entry['status']:<12} {entry.get('detail') or ''}"
        print(line.rstrip())


def _print_agentic(run: dict[str, Any]) -> None:
    """An agentic run's outcome and the tool calls the hub kept, oldest first."""
    stopped = run.get("termination_reason")
    iterations = run.get("iterations_used")
    summary = f"{run['tool_calls_total']} tool calls"
    if stopped is not None or iterations is not None:
        summary += f"; stopped: {_cell(stopped)} after {_cell(iterations)} iterations"
    print(f"  agentic: {summary}")
    for call in run.get("tool_calls", []):
        result = call.get("result_summary")
        tool = f"#{_cell(call.get('iteration'))} {_cell(call.get('tool_name'))}"
        print(
            f"    {_time(call['at'])}  {tool} {_cell(call.get('args_summary'))}"
            f"{f' -> {_cell(result)}' if result else ''}"
        )


_RECLAIMED_BY = {
    "disconnect_grace": "requeued at {at} (grace period) unless the agent comes back",
    "acceptance_timeout": "requeued at {at} (not accepted in time) unless the agent accepts it",
    "no_progress": "reclaimed at {at} (no progress) unless the agent reports on it",
}


def _hold(hold: dict[str, Any]) -> str:
    """What the hub does with a task held for its agent (``held_task``, ``held_for``)."""
    where = "back, but silent on the task" if hold["agent_connected"] else "disconnected"
    until = _RECLAIMED_BY[hold["reclaim_reason"]].format(at=_time(hold["reclaim_at"]))
    return (
        f"task {hold['task_id']} kept for {hold['agent_id']} ({where}) since "
        f"{_time(hold['since'])}; {until}"
    )


def _execution(execution: dict[str, Any]) -> str:
    """The execution figures the sidecar reported, leaving out those it did not."""
    parts = []
    if execution.get("model_used") is not None:
        parts.append(f"model {execution['model_used']}")
    tokens_in, tokens_out = execution.get("tokens_in"), execution.get("tokens_out")
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"tokens in {_cell(tokens_in)} out {_cell(tokens_out)}")
    if execution.get("estimated_cost_usd") is not None:
        parts.append(f"cost {_usd(execution['estimated_cost_usd'])}")
    if execution.get("equivalent_claude_cost_usd") is not None:
        parts.append(f"claude-equivalent {_usd(execution['equivalent_claude_cost_usd'])}")
    if execution.get("execution_ms") is not None:
        parts.append(f"{execution['execution_ms']:.0f} ms")
    return "  ".join(parts) or "-"


async def _task_submit(client: OperatorClient, args: argparse.Namespace) -> int:
    metadata = _metadata(args.metadata)
    task = await client.submit(
        args.description,
        priority=args.priority,
        complexity_tier=args.complexity,
        needed_capabilities=args.capability or None,
        metadata=metadata,
        max_retries=args.max_retries,
        repo=args.repo,
        depends_on=args.depends_on,
    )
    if not args.wait:
        print(json.dumps(task) if args.json else task["task_id"])
        return EXIT_OK
    task_id = task["task_id"]
    if not args.json:
        print(task_id, file=sys.stderr)
    try:
        final = await _wait_across_restarts(client, task_id)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us, then exits with 130
        _note(
            f"interrupted; task {task_id} stays queued and runs without this command "
            f"(agentcom task show {task_id})"
        )
        raise
    if args.json:
        print(json.dumps(final))
    else:
        _print_task(final)
    return EXIT_OK if final["status"] == "completed" else EXIT_FAILED


async def _wait_across_restarts(client: OperatorClient, task_id: str) -> dict[str, Any]:
    """The finished task; a lost connection (a hub restart) is reopened with backoff, and
    the wait goes on for the same task: nothing is submitted again."""
    while True:
        try:
            return await client.wait_task(task_id)
        except ConnectionLost as lost:
            _note(f"{lost.reason}; reconnecting to wait for task {task_id}...")
            await client.reconnect()
            _note(f"reconnected; waiting for task {task_id}")


async def _task_across_restarts(client: OperatorClient, task_id: str) -> dict[str, Any]:
    """The task, reopening the request connection if a hub restart closed it."""
    while True:
        try:
            return await client.get_task(task_id)
        except ConnectionLost:
            await client.reconnect()


def _note(line: str) -> None:
    """A line for the person running a long command, on stderr (stdout carries data)."""
    print(f"agentcom: {line}", file=sys.stderr, flush=True)


async def _task_list(client: OperatorClient, args: argparse.Namespace) -> int:
    found, next_cursor = await client.list_tasks(
        **_list_filter(args), limit=args.limit, cursor=args.cursor
    )
    if next_cursor is not None:
        _note(f"more tasks: add --cursor {next_cursor}")
    if args.json:
        print(json.dumps(found))
        return EXIT_OK
    _table(
        ["ID", "STATUS", "PRIORITY", "AGENT", "UPDATED", "DESCRIPTION"],
        [
            [
                task["task_id"],
                task["status"],
                task["priority"],
                task.get("assigned_to"),
                _time(task["updated_at"]),
                _cell(task["description"])[:60],
            ]
            for task in found
        ],
        empty="no tasks",
    )
    return EXIT_OK


async def _task_show(client: OperatorClient, args: argparse.Namespace) -> int:
    task = await client.get_task(args.task_id)
    if args.json:
        print(json.dumps(task))
    else:
        _print_task(task)
    return EXIT_OK


def _task_change(
    request_type: str, bulk: str | None = None
) -> Callable[[OperatorClient, argparse.Namespace], Awaitable[int]]:
    """One task changed by id; with ``bulk``, every task a filter matches instead."""

    async def change(client: OperatorClient, args: argparse.Namespace) -> int:
        matching = _bulk_filter(args, request_type) if bulk is not None else None
        if matching is not None:
            return await _change_matching(client, args, bulk or "", matching)
        if args.task_id is None:
            raise CliError("give a task ID, or a filter (see --help)")
        task = await client.request(request_type, task_id=args.task_id)
        print(json.dumps(task) if args.json else f"{task['task_id']} {task['status']}")
        return EXIT_OK

    return change


_UNFINISHED = ["queued", "assigned", "working"]
_BULK_VERBS = {"task_retry_many": "retry", "task_cancel_many": "cancel"}
_BULK_LIMIT = 1000  # tasks one bulk action reaches; run it again for more


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    """The filter of a bulk action, and ``--yes``."""
    _filter_options(parser)
    parser.add_argument(
        "--yes", action="store_true", help="act on every matching task without asking"
    )


def _bulk_filter(args: argparse.Namespace, request_type: str) -> dict[str, Any] | None:
    """The ``task_list`` filter of a bulk action, or None when a single ID is meant."""
    fields = _list_filter(args)
    if request_type == "task_retry":
        if not args.all_dead:
            if fields:
                raise CliError("the filters of `task retry` go with --all-dead")
            return None
        if args.status:
            raise CliError("--all-dead retries dead-letter tasks: leave out --status")
        fields["status"] = "dead_letter"
    elif not fields:
        return None
    else:
        fields.setdefault("status", _UNFINISHED)
    if args.task_id is not None:
        raise CliError("give a task ID or a filter, not both")
    return fields


async def _matching_tasks(
    client: OperatorClient, matching: dict[str, Any], most: int
) -> list[dict[str, Any]]:
    """Up to ``most`` tasks the filter matches, page after page."""
    tasks: list[dict[str, Any]] = []
    cursor = None
    while len(tasks) < most:
        page, cursor = await client.list_tasks(**matching, limit=most - len(tasks), cursor=cursor)
        tasks += page
        if cursor is None:
            break
    return tasks


async def _change_matching(
    client: OperatorClient, args: argparse.Namespace, bulk: str, matching: dict[str, Any]
) -> int:
    """List the tasks the filter matches, confirm, then change them in one request."""
    verb = _BULK_VERBS[bulk]
    tasks = await _matching_tasks(client, matching, _BULK_LIMIT)
    if not tasks:
        print("no tasks match", file=sys.stderr)
        if args.json:
            print(json.dumps({"changed": [], "refused": []}))
        return EXIT_OK
    if not args.yes and not await _confirmed(verb, tasks):
        raise CliError(f"nothing done: answer y to {verb} them, or pass --yes", EXIT_FAILED)
    result = await client.request(bulk, task_ids=[task["task_id"] for task in tasks])
    if args.json:
        print(json.dumps(result))
    for task in [] if args.json else result["changed"]:
        print(f"{task['task_id']} {task['status']}")
    for refusal in result["refused"]:
        print(f"agentcom: {refusal['task_id']}: {refusal['error']}: {refusal['message']}",
              file=sys.stderr)  # fmt: skip
    done = f"{verb} done for {len(result['changed'])} of {len(tasks)} tasks"
    more = f" (at most {_BULK_LIMIT} at a time: run it again)" if len(tasks) == _BULK_LIMIT else ""
    print(done + more, file=sys.stderr)
    return EXIT_FAILED if result["refused"] else EXIT_OK


def _read_line() -> asyncio.Future[str]:
    """A line of stdin, read by a daemon thread: the event loop keeps answering the hub's
    pings while a human thinks, and Ctrl-C does not wait for the line."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        text = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return line


async def _confirmed(verb: str, tasks: list[dict[str, Any]]) -> bool:
    """Show the tasks on stderr and ask; anything but y or yes (or no answer) is no."""
    shown = 10
    for task in tasks[:shown]:
        description = _cell(task["description"])[:50]
        print(f"  {task['task_id']}  {task['status']:<11} {description}", file=sys.stderr)
    if len(tasks) > shown:
        print(f"  ... and {len(tasks) - shown} more", file=sys.stderr)
    print(f"{verb} these {len(tasks)} tasks? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = await _read_line()
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # no answer (end of input): end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def _list_filter(args: argparse.Namespace) -> dict[str, Any]:
    """The ``task_list`` fields of the filter options given."""
    fields: dict[str, Any] = {
        "status": args.status,
        "agent": args.agent,
        "capability": args.capability,
        "since_s": args.since,
        "priority": args.priority,
    }
    return {name: value for name, value in fields.items() if value is not None}


_STATUSES = ("queued", "assigned", "working", "completed", "dead_letter", "cancelled")


def _statuses(text: str) -> list[str]:
    """``--status a,b``: one or more task statuses."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in _STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {unknown[0]!r} (choose from {', '.join(_STATUSES)})"
        )
    return list(dict.fromkeys(names))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _duration(text: str) -> float:
    """``--since 90s|30m|1h|2d``: seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None or float(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number and a unit, e.g. 90s, 30m, 1h, 2d"
        )
    return float(match[1]) * _UNITS[match[2]]


def _task_id(text: str) -> str:
    """A task id as typed: in full, or a prefix the hub resolves (as git abbreviates)."""
    if len(text) < TASK_ID_PREFIX_MIN:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too short: give at least {TASK_ID_PREFIX_MIN} characters of a task id"
        )
    return text


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except ValueError:
        raise CliError("--metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise CliError("--metadata must be a JSON object")
    return metadata


async def _task_route(client: OperatorClient, args: argparse.Namespace) -> int:
    task = {"description": args.description, "complexity_tier": args.complexity,
            "file_hints": args.file_hint, "verification_steps": args.verification_step,
            "metadata": _metadata(args.metadata), "repo": args.repo}  # fmt: skip
    preview = await client.request(
        "task_route", task={key: value for key, value in task.items() if value is not None}
    )
    if args.json:
        print(json.dumps(preview))
        return EXIT_OK
    decision = preview["routing_decision"]
    print(f"tier {decision['effective_tier']} -> {decision['target_type']}"
          f"  endpoint {_cell(decision['selected_endpoint'])}"
          f"  model {_cell(decision['selected_model'])}"
          f"  cost tier {_cell(decision['estimated_cost_tier'])}")  # fmt: skip
    if decision["fallback_used"]:
        print(f"fallback: {decision['fallback_reason']}")
    print(f"reason: {decision['classification_reason']}")
    print(f"viable endpoints: {preview['viable_endpoints']}")
    if preview["would_wait"]:
        print(f"note: {preview['would_wait']}")
    return EXIT_OK


async def _endpoints_list(client: OperatorClient, args: argparse.Namespace) -> int:
    endpoints = await client.request("endpoints_list")
    if args.json:
        print(json.dumps(endpoints))
        return EXIT_OK
    _table(
        ["ID", "URL", "STATE", "MODELS", "LAST ERROR"],
        [
            [
                endpoint["endpoint_id"],
                endpoint["url"],
                _health(endpoint),
                endpoint["models"],
                _last_error(endpoint),
            ]
            for endpoint in endpoints
        ],
        empty="no endpoints",
    )
    return EXIT_OK


def _last_error(endpoint: dict[str, Any]) -> str | None:
    """``(N failed checks) error`` once a check failed, else None."""
    if not endpoint.get("last_error"):
        return None
    failures = endpoint.get("failures") or 0
    checks = "check" if failures == 1 else "checks"
    return f"({failures} failed {checks}) {_cell(endpoint['last_error'])}"


def _health(endpoint: dict[str, Any]) -> str:
    """unchecked, healthy, failing (its latest checks failed, not yet enough to mark it
    unhealthy) or unhealthy."""
    if endpoint["healthy"] is False:
        return "unhealthy"
    if endpoint.get("failures"):
        return "failing"
    return "healthy" if endpoint["healthy"] else "unchecked"


async def _endpoint_add(client: OperatorClient, args: argparse.Namespace) -> int:
    fields = {"url": args.url}
    if args.name:
        fields["name"] = args.name
    endpoint = await client.request("endpoint_add", **fields)
    print(json.dumps(endpoint) if args.json else endpoint["endpoint_id"])
    return EXIT_OK


async def _endpoint_approve(client: OperatorClient, args: argparse.Namespace) -> int:
    endpoint = await client.request("endpoint_approve", endpoint=args.endpoint)
    print(json.dumps(endpoint) if args.json else f"approved {endpoint['endpoint_id']}")
    return EXIT_OK


async def _endpoint_remove(client: OperatorClient, args: argparse.Namespace) -> int:
    endpoint = await client.request("endpoint_remove", endpoint_id=args.endpoint_id)
    print(json.dumps(endpoint) if args.json else f"removed {endpoint['endpoint_id']}")
    return EXIT_OK


async def _channel_create(client: OperatorClient, args: argparse.Namespace) -> int:
    fields = {"name": args.name}
    if args.description:
        fields["description"] = args.description
    channel = await client.request("channel_create", **fields)
    print(json.dumps(channel) if args.json else channel["name"])
    return EXIT_OK


async def _channel_list(client: OperatorClient, args: argparse.Namespace) -> int:
    channels = await client.request("channels_list")
    if args.json:
        print(json.dumps(channels))
        return EXIT_OK
    _table(
        ["NAME", "SUBSCRIBERS", "LAST SEQ", "DESCRIPTION"],
        [
            [
                channel["name"],
                channel["subscribers"],
                channel["last_seq"],
                channel.get("description"),
            ]
            for channel in channels
        ],
        empty="no channels",
    )
    return EXIT_OK


async def _agents(client: OperatorClient, args: argparse.Namespace) -> int:
    agents = await client.request("agents_list")
    if args.json:
        print(json.dumps(agents))
        return EXIT_OK
    _table(
        ["AGENT", "STATE", "DRAINING", "TASK", "CAPABILITIES", "LAST SEEN"],
        [
            [
                agent["agent_id"],
                agent["state"],
                agent.get("draining", False),
                agent.get("current_task"),
                agent["capabilities"],
                _time(agent.get("last_seen") or None),
            ]
            for agent in agents
        ],
        empty="no agents",
        notes=[_agent_notes(agent) for agent in agents],
    )
    return EXIT_OK


def _agent_notes(agent: dict[str, Any]) -> str | None:
    """The lines under an agent: its held task, its restart, its pm2 process."""
    notes = []
    if agent.get("held_task"):
        notes.append(f"held: {_hold(agent['held_task'])}")
    if agent.get("restarting"):
        restarting = agent["restarting"]
        notes.append(
            f"restarting since {_time(restarting['since'])}: "
            f"{restarting.get('reason') or 'no reason given'}"
        )
    if agent.get("pm2_info"):
        notes.append(f"pm2: {_pm2(agent['pm2_info'])}")
    return "\n  ".join(notes) or None


def _pm2(info: dict[str, Any]) -> str:
    """The sidecar's process as pm2 reported it, leaving out what it did not say."""
    parts = [f"{info.get('name') or '-'} {info.get('status') or '-'}"]
    if info.get("uptime_ms") is not None:
        parts.append(f"up {info['uptime_ms'] / 1000:.0f} s")
    if info.get("restart_count") is not None:
        parts.append(f"{info['restart_count']} restarts")
    if info.get("memory_bytes") is not None:
        parts.append(f"{info['memory_bytes'] / 2**20:.0f} MiB")
    return ", ".join(parts)


async def _agent_restart(client: OperatorClient, args: argparse.Namespace) -> int:
    agent = await client.request("agent_restart", agent_id=args.agent_id, reason=args.reason)
    print(json.dumps(agent) if args.json else f"asked {agent['agent_id']} to restart")
    return EXIT_OK


async def _stats(client: OperatorClient, args: argparse.Namespace) -> int:
    stats = await client.request("stats")
    if args.json:
        print(json.dumps(stats))
        return EXIT_OK
    by_status = stats["by_status"]
    print("tasks:      " + _counts({name: by_status.get(name, 0) for name in _STATUSES}))
    print(
        f"queue:      depth {stats['queue_depth']}  by priority "
        + _counts({name: stats["queued_by_priority"].get(name, 0) for name in _PRIORITIES})
    )
    throughput = stats["throughput"]
    hours = throughput["window_s"] / 3600
    print(
        f"{f'last {hours:g} h:':<12}{throughput['completed']} completed"
        f" ({throughput['completed'] / (hours * 60):.2f}/min)"
        f"  {throughput['dead_letter']} dead letter  {throughput['cancelled']} cancelled"
    )
    print(
        f"agents:     {stats['agents_connected']} connected  " + _counts(stats["agents_by_state"])
    )
    totals = stats["totals"]
    print(
        f"costs:      {totals['tasks']} completed tasks  tokens in {totals['tokens_in']}"
        f" out {totals['tokens_out']}  cost {_usd(totals['estimated_cost_usd'])}"
        f"  claude-equivalent {_usd(totals['equivalent_claude_cost_usd'])}"
    )
    for title, key in (("MODEL", "by_model"), ("AGENT", "by_agent")):
        print()
        _table(
            [title, "TASKS", "TOKENS IN", "TOKENS OUT", "COST", "CLAUDE-EQUIVALENT", "TIME"],
            [
                [
                    name,
                    row["tasks"],
                    row["tokens_in"],
                    row["tokens_out"],
                    _usd(row["estimated_cost_usd"]),
                    _usd(row["equivalent_claude_cost_usd"]),
                    f"{row['execution_ms'] / 1000:.1f} s",
                ]
                for name, row in sorted(stats[key].items())
            ],
            empty=f"no completed tasks {key.replace('_', ' ')}",
        )
    return EXIT_OK


_PRIORITIES = ("urgent", "high", "normal", "low")


def _counts(counts: dict[str, int]) -> str:
    """``queued 2  working 1``: names and counts on one line."""
    return "  ".join(f"{name} {count}" for name, count in counts.items())


def _agent_drain(
    request_type: str,
) -> Callable[[OperatorClient, argparse.Namespace], Awaitable[int]]:
    async def change(client: OperatorClient, args: argparse.Namespace) -> int:
        agent = await client.request(request_type, agent_id=args.agent_id)
        if args.json:
            print(json.dumps(agent))
        else:
            drain = "draining" if agent["draining"] else "not draining"
            print(f"{agent['agent_id']} {drain} ({agent['state']})")
        return EXIT_OK

    return change


_FINISHED = ("completed", "dead_letter", "cancelled")


async def _watch(client: OperatorClient, args: argparse.Namespace) -> int:
    """Stream events until interrupted, following the hub across restarts."""
    if args.task is not None:
        return await _watch_task(client, args)
    snapshots = 0

    def lost(reason: str) -> None:
        _note(f"{reason}; reconnecting...")

    async for frame in client.follow(args.topic or None, lost):
        if args.json:
            print(json.dumps(frame), flush=True)
        elif frame.get("type") == "snapshot":
            snapshots += 1
            state = "connected" if snapshots == 1 else "reconnected"
            agents, depth = len(frame["agents"]), frame["queue"]["depth"]
            print(f"{state}: {agents} agents, queue depth {depth}", flush=True)
        elif frame.get("event") != "agent_seen":  # a heartbeat: noise in a human's stream
            print(_describe_event(frame), flush=True)
    return EXIT_OK


async def _watch_task(client: OperatorClient, args: argparse.Namespace) -> int:
    """Follow one task's events until it is finished (at once if it already is), across
    hub restarts."""
    task = await client.get_task(args.task)  # the hub resolves an abbreviated id
    task_id = task["task_id"]
    as_json = args.json

    def lost(reason: str) -> None:
        _note(f"{reason}; reconnecting to follow task {task_id}...")

    async for frame in client.follow(["tasks"], lost):
        if frame.get("type") == "snapshot":
            # Read again once subscribed (again): it may have moved on before, or while
            # the hub was away.
            task = await _task_across_restarts(client, task_id)
            print(json.dumps(task) if as_json else f"task {task_id} {task['status']}", flush=True)
            if task["status"] in _FINISHED:
                break
            continue
        if frame.get("task_id") != task_id:
            continue
        print(json.dumps(frame) if as_json else _describe_event(frame), flush=True)
        if frame.get("status") in _FINISHED and frame.get("event") != "task_failed":
            break
    return EXIT_OK


def _describe_event(frame: dict[str, Any]) -> str:
    kind = frame.get("type")
    stamp = _time(frame.get("timestamp"))
    if kind == "task_event":
        extra = ""
        if frame.get("event") == "execution_progress":
            event = frame.get("execution_event") or {}
            extra = f" {event.get('event_type', '')} {str(event.get('text', ''))[:80]}"
        agent = frame.get("agent_id") or "-"
        return f"{stamp} {frame['event']:<18} task {frame['task_id']} agent {agent}{extra}"
    if kind == "agent_event":
        return f"{stamp} {frame['event']:<18} agent {frame['agent_id']}"
    if kind == "events_dropped":
        return f"{stamp} events dropped: {frame['count']}"
    return f"{stamp} {kind} {json.dumps(frame)[:120]}"


# --- argument parsing ----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line, like every other error (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _shared_options(parser: argparse.ArgumentParser, *, database: bool = False) -> None:
    """``--hub``, ``--token``, ``--cafile`` and ``--json`` of the operator commands, or with
    ``database`` the ``--db`` of the token commands.

    A group (``endpoints``, ``task``...) and each of its subcommands both accept them, so
    they work typed before or after the subcommand. None has a default here
    (``SUPPRESS``): a subcommand's default would overwrite what was typed before it.
    :func:`_with_defaults` fills in the ones not typed once parsing is done.
    """
    unset = argparse.SUPPRESS
    if database:
        parser.add_argument(
            "--db", default=unset, help="SQLite file (default $AGENTCOM_DB or ./agentcom.db)"
        )
        return
    parser.add_argument(
        "--hub", default=unset, help="hub URL (default $AGENTCOM_HUB or http://127.0.0.1:4000)"
    )
    parser.add_argument("--token", default=unset, help="operator token (default $AGENTCOM_TOKEN)")
    parser.add_argument(
        "--cafile",
        default=unset,
        help="PEM certificates to trust for an https:// hub, e.g. its own self-signed one "
        "(default $AGENTCOM_CAFILE, else the system's)",
    )
    parser.add_argument(
        "--json", action="store_true", default=unset, help="machine-readable output"
    )


_TIERS = [*(tier.value for tier in Tier), "unknown"]  # as TaskSubmission.complexity_tier takes


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the shared options that were not typed (see :func:`_shared_options`)."""
    defaults = {
        "hub": os.environ.get("AGENTCOM_HUB") or "http://127.0.0.1:4000",
        "token": os.environ.get("AGENTCOM_TOKEN"),
        "cafile": os.environ.get("AGENTCOM_CAFILE"),
        "json": False,
        "db": None,
    }
    args.typed = {name for name in defaults if hasattr(args, name)}
    for name, value in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentcom",
        description="Coordinate AI-agent sidecars: run a hub, manage its tokens, and operate\n"
        "it (tasks, agents, endpoints, channels, statistics, live events).",
        epilog=ROLES_AND_ENVIRONMENT + "\n" + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agentcom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_command(commands)
    _token_command(commands)
    _task_command(commands)
    _agents_command(commands)
    _endpoints_command(commands)
    _channel_command(commands)
    _config_command(commands)
    stats = commands.add_parser("stats", help="queue depth, throughput, agents and costs (viewer)")
    _operator_command(stats, _stats)
    watch = commands.add_parser("watch", help="stream events live (viewer)")
    watch.add_argument(
        "--topic",
        action="append",
        choices=["tasks", "agents", "validation"],
        help="only this topic's events (repeatable; default all)",
    )
    watch.add_argument(
        "--task",
        type=_task_id,
        metavar="ID",
        help="only this task's events, until it is finished; " + _ID_HELP.removeprefix("the "),
    )
    _operator_command(watch, _watch)
    sidecar = commands.add_parser("sidecar", help="run a sidecar that executes tasks")
    sidecar_command.add_arguments(sidecar)
    sidecar.set_defaults(handler=sidecar_command.run)
    return parser


def _operator_command(sub: argparse.ArgumentParser, action: Any) -> None:
    _shared_options(sub)
    sub.set_defaults(handler=_operator(action))


def _serve_settings_options(parser: argparse.ArgumentParser) -> None:
    """The flags of ``serve`` that are settings (``config show`` takes them too)."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default 4000)")
    parser.add_argument("--db", help="SQLite file (default $AGENTCOM_DB or ./agentcom.db)")
    parser.add_argument("--config", help="TOML settings file (default $AGENTCOM_CONFIG)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument(
        "--log-format", help="text (default) or json: one JSON object per line, with ids"
    )
    parser.add_argument("--certfile", help="TLS certificate (PEM): serve wss:// and https://")
    parser.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without TLS (tokens in clear)",
    )


def _config_command(commands: Any) -> None:
    config = commands.add_parser("config", help="the settings in effect and their sources")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show",
        help="every setting: its value (secrets masked) and whether it came from a flag, "
        "the environment, the config file or the default",
    )
    _serve_settings_options(show)
    _shared_options(show)
    show.set_defaults(handler=_config_show)


def _serve_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run a hub")
    _serve_settings_options(serve)
    serve.set_defaults(handler=_serve)


def _token_command(commands: Any) -> None:
    token = commands.add_parser("token", help="manage tokens (works on the database directly)")
    _shared_options(token, database=True)
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="create a token; prints it alone")
    create.add_argument("agent_id", metavar="AGENT_ID", help="who the token is for")
    create.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default="agent",
        help="agent (a sidecar, the default), viewer or admin (an operator)",
    )
    listing = token_commands.add_parser("list", help="list tokens (never the secrets)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = token_commands.add_parser("revoke", help="revoke an agent's token")
    revoke.add_argument("agent_id", metavar="AGENT_ID", help="whose token to revoke")
    for sub, handler in ((create, _token_create), (listing, _token_list), (revoke, _token_revoke)):
        _shared_options(sub, database=True)
        sub.set_defaults(handler=_on_database(handler))


_ID_HELP = f"the task's id, or its first {TASK_ID_PREFIX_MIN} or more characters"


def _filter_options(parser: argparse.ArgumentParser, *, default_status: str | None = None) -> None:
    """The task filter of ``task list`` and the bulk actions."""
    parser.add_argument(
        "--status",
        type=_statuses,
        metavar="S[,S...]",
        help=f"only tasks in one of these states: {', '.join(_STATUSES)}",
    )
    parser.add_argument("--agent", metavar="AGENT_ID", help="only tasks this agent holds")
    parser.add_argument("--capability", metavar="CAP", help="only tasks that need this capability")
    parser.add_argument(
        "--priority", choices=["urgent", "high", "normal", "low"], help="only this priority"
    )
    parser.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only tasks updated in the last DURATION: 90s, 30m, 1h, 2d",
    )


def _task_command(commands: Any) -> None:
    task = commands.add_parser("task", help="submit, inspect and change tasks")
    _shared_options(task)
    task_commands = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    submit = task_commands.add_parser("submit", help="queue a task; prints its id (admin)")
    submit.add_argument("description", metavar="DESCRIPTION", help="what to do")
    submit.add_argument(
        "--priority", choices=["urgent", "high", "normal", "low"], help="default normal"
    )
    submit.add_argument(
        "--complexity",
        choices=_TIERS,
        help="the tier to route it as (default: inferred; unknown runs as standard)",
    )
    submit.add_argument(
        "--capability",
        action="append",
        metavar="CAP",
        help="a capability the agent must have (repeatable)",
    )
    submit.add_argument("--metadata", metavar="JSON", help="a JSON object given to the agent")
    submit.add_argument(
        "--max-retries", type=int, metavar="N", help="retries before dead letter (default 3)"
    )
    submit.add_argument("--repo", metavar="URL", help="the repository the task works on")
    submit.add_argument(
        "--depends-on",
        action="append",
        metavar="ID",
        help="a task that must complete first, by id or its first 6 or more characters "
        "(repeatable)",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until it is completed or dead letter, then print it",
    )
    _operator_command(submit, _task_submit)

    task_list = task_commands.add_parser("list", help="list tasks, most recently updated first")
    _filter_options(task_list)
    task_list.add_argument(
        "--limit",
        type=int,
        default=100,
        help="at most this many, 1 to 1000 (default 100; the hub sends at most "
        "list_limit_max, 200, per page)",
    )
    task_list.add_argument(
        "--cursor", help="the next page, as the previous one said on standard error"
    )
    _operator_command(task_list, _task_list)

    show = task_commands.add_parser("show", help="a task with history, routing and result")
    show.add_argument("task_id", metavar="ID", type=_task_id, help=_ID_HELP)
    _operator_command(show, _task_show)
    retry = task_commands.add_parser(
        "retry", help="requeue a dead-letter task, or all of them with --all-dead (admin)"
    )
    retry.add_argument("task_id", metavar="ID", type=_task_id, nargs="?", help=_ID_HELP)
    retry.add_argument(
        "--all-dead",
        action="store_true",
        help="every dead-letter task (narrowed by the filters below), after a confirmation",
    )
    _bulk_options(retry)
    _operator_command(retry, _task_change("task_retry", bulk="task_retry_many"))
    cancel = task_commands.add_parser(
        "cancel", help="cancel an unfinished task, or those a filter matches (admin)"
    )
    cancel.add_argument("task_id", metavar="ID", type=_task_id, nargs="?", help=_ID_HELP)
    _bulk_options(cancel)
    _operator_command(cancel, _task_change("task_cancel", bulk="task_cancel_many"))
    requeue = task_commands.add_parser(
        "requeue", help="take a task from its agent and queue it again at once (admin)"
    )
    requeue.add_argument("task_id", metavar="ID", type=_task_id, help=_ID_HELP)
    _operator_command(requeue, _task_change("task_requeue"))

    route = task_commands.add_parser("route", help="show the routing decision, queue nothing")
    route.add_argument("description", metavar="DESCRIPTION", help="what the task would do")
    route.add_argument(
        "--complexity", choices=_TIERS, help="the tier (default: inferred; unknown is standard)"
    )
    route.add_argument(
        "--file-hint", action="append", metavar="PATH", help="a file it touches (repeatable)"
    )
    route.add_argument(
        "--verification-step",
        action="append",
        metavar="STEP",
        help="a check it must pass (repeatable)",
    )
    route.add_argument("--metadata", metavar="JSON", help="a JSON object given to the agent")
    route.add_argument("--repo", metavar="URL", help="the repository the task works on")
    _operator_command(route, _task_route)


def _agents_command(commands: Any) -> None:
    agents = commands.add_parser(
        "agents", help="agents with state and current task (list, drain, restart)"
    )
    _operator_command(agents, _agents)  # without ACTION: the list
    agent_commands = agents.add_subparsers(dest="agents_command", metavar="ACTION")
    listing = agent_commands.add_parser("list", help="every known agent (the default)")
    _operator_command(listing, _agents)
    drain = agent_commands.add_parser(
        "drain", help="let an agent finish its current task and give it no new one (admin)"
    )
    drain.add_argument("agent_id", metavar="AGENT_ID", help="the agent to drain")
    _operator_command(drain, _agent_drain("agent_drain"))
    undrain = agent_commands.add_parser(
        "undrain", help="end an agent's drain: it is given work again (admin)"
    )
    undrain.add_argument("agent_id", metavar="AGENT_ID", help="the agent to undrain")
    _operator_command(undrain, _agent_drain("agent_undrain"))
    restart = agent_commands.add_parser(
        "restart", help="ask an agent's sidecar to restart, after its running task (admin)"
    )
    restart.add_argument("agent_id", metavar="AGENT_ID", help="the agent to restart")
    restart.add_argument("--reason", metavar="TEXT", help="told to the sidecar and logged")
    _operator_command(restart, _agent_restart)


def _endpoints_command(commands: Any) -> None:
    endpoints = commands.add_parser(
        "endpoints", help="Ollama endpoints (list, add, remove, approve)"
    )
    _operator_command(endpoints, _endpoints_list)  # without ACTION: the list
    endpoint_commands = endpoints.add_subparsers(dest="endpoint_command", metavar="ACTION")
    listing = endpoint_commands.add_parser(
        "list", help="every endpoint with state, models and last error (the default)"
    )
    _operator_command(listing, _endpoints_list)
    add = endpoint_commands.add_parser("add", help="register an endpoint (admin)")
    add.add_argument("url", metavar="URL", help="its base URL, e.g. http://10.0.0.21:11434")
    add.add_argument("--name", metavar="N", help="its id (default: derived from the URL)")
    _operator_command(add, _endpoint_add)
    remove = endpoint_commands.add_parser("remove", help="forget an endpoint (admin)")
    remove.add_argument("endpoint_id", metavar="ID", help="the endpoint's id")
    _operator_command(remove, _endpoint_remove)
    approve = endpoint_commands.add_parser(
        "approve", help="let an agent's endpoint serve every agent (admin)"
    )
    approve.add_argument("endpoint", metavar="URL|ID", help="the endpoint's id or URL")
    _operator_command(approve, _endpoint_approve)


def _channel_command(commands: Any) -> None:
    channel = commands.add_parser("channel", help="channels agents publish to")
    _shared_options(channel)
    channel_commands = channel.add_subparsers(
        dest="channel_command", required=True, metavar="ACTION"
    )
    channel_create = channel_commands.add_parser("create", help="create a channel (admin)")
    channel_create.add_argument("name", metavar="NAME", help="the channel's name")
    channel_create.add_argument("--description", help="what it is for")
    _operator_command(channel_create, _channel_create)
    channel_list = channel_commands.add_parser("list", help="list channels")
    _operator_command(channel_list, _channel_list)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and a non-zero exit code."""
    args = _with_defaults(_parser().parse_args(argv))
    try:
        code: int = args.handler(args)
        return code
    except CliError as error:
        print(f"agentcom: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away; point stdout at /dev/null so the exit flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
