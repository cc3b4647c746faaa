"""The ``agentcom`` command: ``serve``, ``token``, ``task``, ``agents``, ``endpoints``,
``channel`` and ``watch``; errors are one line on stderr and an exit status from
:data:`EXIT_STATUS`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import sqlite3
import ssl
import sys
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
    websocket_url,
)
from agentcom.config import Settings, load_settings
from agentcom.errors import ConfigurationError, DatabaseInUse, StoreError
from agentcom.hub.auth import Role, hash_token, new_token
from agentcom.protocol.common import Tier
from agentcom.store import tokens

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TOKEN = 0, 1, 2, 3, 4
EXIT_DATABASE_IN_USE = 5

EXIT_STATUS = """\
exit status:
  0    success
  1    the command ran but did not succeed: the hub refused the request (forbidden,
       not_found, invalid_state...), the connection to it was lost, `task submit --wait`
       ended other than completed, or a database or port could not be used (a token
       command's database that does not exist, `serve`'s port already in use)
  2    usage error: unknown command or option, bad value (refused by the CLI or by the
       hub: validation_failed, invalid_url, invalid_name), missing token, invalid
       setting, an unreadable or invalid config, certificate, key or CA file
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
    config = args.config or os.environ.get("AGENTCOM_CONFIG")
    if config:  # a file named but missing is a mistake: never run on defaults instead
        _readable(config, "config file")
    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            db=args.db,
            log_level=args.log_level,
            certfile=args.certfile,
            keyfile=args.keyfile,
            insecure=args.insecure,
        )
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
    _check_tls_files(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Our own modules log connections; the library's per-request lines are noise.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return asyncio.run(_run_hub(settings))


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
    else:
        for row in rows:
            print(f"{row['agent_id']}\t{row['role']}\t{_time(row['created_at'])}")
    return EXIT_OK


def _token_revoke(args: argparse.Namespace) -> int:
    if not tokens.delete_token(_existing_db_path(args), args.agent_id):
        raise CliError(f"no token for {args.agent_id}", EXIT_FAILED)
    print(f"revoked {args.agent_id}", file=sys.stderr)
    return EXIT_OK


# --- operator commands ---------------------------------------------------------------


def _time(ms: Any) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _operator(
    action: Callable[[OperatorClient, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.token:
            raise CliError("no token: pass --token or set AGENTCOM_TOKEN")
        _check_hub_url(args.hub)
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


_BAD_VALUE_ERRORS = frozenset({"validation_failed", "invalid_url", "invalid_name"})
"""The hub's answers to a bad value: a usage error (exit 2), like one the CLI catches."""


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


def _known(value: Any) -> str:
    return "-" if value is None else str(value)


def _print_task(task: dict[str, Any]) -> None:
    decision = task.get("routing_decision") or {}
    execution = task.get("execution") or {}
    print(f"task {task['task_id']}  {task['status']}  priority {task['priority']}")
    print(f"  description: {task['description']}")
    print(f"  assigned to: {task.get('assigned_to') or '-'} (generation {task['generation']})")
    if task.get("waiting_reason"):
        print(f"  waiting: {task['waiting_reason']}")
    if task.get("held_for"):
        print(f"  held: {_hold(task['held_for'])}")
    print(
        f"  retries: {task['retry_count']}/{task['max_retries']}"
        f"  last error: {task.get('last_error') or '-'}"
    )
    if decision:
        print(
            f"  routing: tier {_known(decision.get('effective_tier'))}"
            f" -> {_known(decision.get('target_type'))}"
            f"  endpoint {_known(decision.get('selected_endpoint'))}"
            f"  model {_known(decision.get('selected_model'))}"
            f"  cost tier {_known(decision.get('estimated_cost_tier'))}"
        )
        if decision.get("fallback_used"):
            print(f"  fallback: {_known(decision.get('fallback_reason'))}")
        print(f"  reason: {_known(decision.get('classification_reason'))}")
    if execution:
        print(f"  execution: {_execution(execution)}")
    print("  history:")
    for entry in task.get("history", []):
        print(f"    {_time(entry['at'])}  {entry['status']:<12} {entry.get('detail') or ''}")


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
        parts.append(f"tokens in {_known(tokens_in)} out {_known(tokens_out)}")
    if execution.get("estimated_cost_usd") is not None:
        parts.append(f"cost ${execution['estimated_cost_usd']}")
    if execution.get("equivalent_claude_cost_usd") is not None:
        parts.append(f"claude-equivalent ${execution['equivalent_claude_cost_usd']}")
    if execution.get("execution_ms") is not None:
        parts.append(f"{execution['execution_ms']} ms")
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


def _note(line: str) -> None:
    """A line for the person running a long command, on stderr (stdout carries data)."""
    print(f"agentcom: {line}", file=sys.stderr, flush=True)


async def _task_list(client: OperatorClient, args: argparse.Namespace) -> int:
    fields = {"limit": args.limit}
    if args.status:
        fields["status"] = args.status
    found = await client.request("task_list", **fields)
    if args.json:
        print(json.dumps(found))
        return EXIT_OK
    for task in found:
        agent = task.get("assigned_to") or "-"
        description = task["description"].replace("\n", " ")[:60]
        print(
            f"{task['task_id']}  {task['status']:<11} {task['priority']:<7} {agent:<16} "
            f"{description}"
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
    request_type: str,
) -> Callable[[OperatorClient, argparse.Namespace], Awaitable[int]]:
    async def change(client: OperatorClient, args: argparse.Namespace) -> int:
        task = await client.request(request_type, task_id=args.task_id)
        print(json.dumps(task) if args.json else f"{task['task_id']} {task['status']}")
        return EXIT_OK

    return change


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
          f"  endpoint {decision['selected_endpoint'] or '-'}"
          f"  model {decision['selected_model'] or '-'}"
          f"  cost tier {decision['estimated_cost_tier']}")  # fmt: skip
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
    for endpoint in endpoints:
        models = ",".join(endpoint["models"]) or "-"
        line = (
            f"{endpoint['endpoint_id']:<24} {endpoint['url']:<32} {_health(endpoint):<10} {models}"
        )
        failures = endpoint.get("failures") or 0
        if endpoint.get("last_error"):
            checks = "check" if failures == 1 else "checks"
            error = " ".join(endpoint["last_error"].split())  # one line per endpoint
            line += f"  last error ({failures} failed {checks}): {error}"
        print(line)
    return EXIT_OK


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
    for channel in channels:
        print(f"{channel['name']:<24} {channel['subscribers']:>4} subscribers  "
              f"seq {channel['last_seq']:<6} {channel.get('description') or ''}")  # fmt: skip
    return EXIT_OK


async def _agents(client: OperatorClient, args: argparse.Namespace) -> int:
    agents = await client.request("agents_list")
    if args.json:
        print(json.dumps(agents))
        return EXIT_OK
    for agent in agents:
        capabilities = ",".join(agent["capabilities"]) or "-"
        print(
            f"{agent['agent_id']:<20} {agent['state']:<9} "
            f"{agent.get('current_task') or '-':<34} {capabilities}"
        )
        if agent.get("held_task"):
            print(f"  held: {_hold(agent['held_task'])}")
    return EXIT_OK


async def _watch(client: OperatorClient, args: argparse.Namespace) -> int:
    """Stream events until interrupted, following the hub across restarts."""
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
    for name, value in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentcom",
        description="Coordinate AI-agent sidecars.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agentcom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a hub")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 4000)")
    serve.add_argument("--db", help="SQLite file (default ./agentcom.db)")
    serve.add_argument("--config", help="TOML settings file")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--certfile", help="TLS certificate (PEM): serve wss:// and https://")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without TLS (tokens in clear)",
    )
    serve.set_defaults(handler=_serve)

    token = commands.add_parser("token", help="manage tokens (works on the database directly)")
    _shared_options(token, database=True)
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="create a token; prints it alone")
    create.add_argument("agent_id", metavar="AGENT_ID")
    create.add_argument("--role", choices=[role.value for role in Role], default="agent")
    listing = token_commands.add_parser("list", help="list tokens (never the secrets)")
    listing.add_argument("--json", action="store_true")
    revoke = token_commands.add_parser("revoke", help="revoke an agent's token")
    revoke.add_argument("agent_id", metavar="AGENT_ID")
    for sub, handler in ((create, _token_create), (listing, _token_list), (revoke, _token_revoke)):
        _shared_options(sub, database=True)
        sub.set_defaults(handler=_on_database(handler))

    def operator_command(sub: argparse.ArgumentParser, action: Any) -> None:
        _shared_options(sub)
        sub.set_defaults(handler=_operator(action))

    task = commands.add_parser("task", help="submit and inspect tasks")
    _shared_options(task)
    task_commands = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    submit = task_commands.add_parser("submit", help="queue a task; prints its id")
    submit.add_argument("description", metavar="DESCRIPTION")
    submit.add_argument("--priority", choices=["urgent", "high", "normal", "low"])
    submit.add_argument("--complexity", choices=_TIERS, help="unknown runs as standard")
    submit.add_argument("--capability", action="append", metavar="CAP")
    submit.add_argument("--metadata", metavar="JSON")
    submit.add_argument("--max-retries", type=int, metavar="N")
    submit.add_argument("--repo", metavar="URL")
    submit.add_argument("--wait", action="store_true", help="wait until completed or dead letter")
    operator_command(submit, _task_submit)
    task_list = task_commands.add_parser("list", help="list tasks")
    task_list.add_argument("--status", choices=["queued", "assigned", "working", "completed",
                                                "dead_letter", "cancelled"])  # fmt: skip
    task_list.add_argument("--limit", type=int, default=100)
    operator_command(task_list, _task_list)
    show = task_commands.add_parser("show", help="a task with history, routing and execution")
    show.add_argument("task_id", metavar="ID")
    operator_command(show, _task_show)
    retry = task_commands.add_parser("retry", help="requeue a dead-letter task")
    retry.add_argument("task_id", metavar="ID")
    operator_command(retry, _task_change("task_retry"))
    cancel = task_commands.add_parser("cancel", help="cancel an unfinished task")
    cancel.add_argument("task_id", metavar="ID")
    operator_command(cancel, _task_change("task_cancel"))

    route = task_commands.add_parser("route", help="show the routing decision, queue nothing")
    route.add_argument("description", metavar="DESCRIPTION")
    route.add_argument("--complexity", choices=_TIERS, help="unknown runs as standard")
    route.add_argument("--file-hint", action="append", metavar="PATH")
    route.add_argument("--verification-step", action="append", metavar="STEP")
    route.add_argument("--metadata", metavar="JSON")
    route.add_argument("--repo", metavar="URL")
    operator_command(route, _task_route)

    agents = commands.add_parser("agents", help="connected agents with state and current task")
    operator_command(agents, _agents)

    endpoints = commands.add_parser(
        "endpoints", help="Ollama endpoints (list, add, remove, approve)"
    )
    operator_command(endpoints, _endpoints_list)  # without ACTION: the list
    endpoint_commands = endpoints.add_subparsers(dest="endpoint_command", metavar="ACTION")
    add = endpoint_commands.add_parser("add", help="register an endpoint")
    add.add_argument("url", metavar="URL")
    add.add_argument("--name", metavar="N", help="its id (default: derived from the URL)")
    operator_command(add, _endpoint_add)
    remove = endpoint_commands.add_parser("remove", help="forget an endpoint")
    remove.add_argument("endpoint_id", metavar="ID")
    operator_command(remove, _endpoint_remove)
    approve = endpoint_commands.add_parser(
        "approve", help="let an agent's endpoint serve every agent (admin)"
    )
    approve.add_argument("endpoint", metavar="URL|ID")
    operator_command(approve, _endpoint_approve)

    channel = commands.add_parser("channel", help="channels agents publish to")
    _shared_options(channel)
    channel_commands = channel.add_subparsers(
        dest="channel_command", required=True, metavar="ACTION"
    )
    channel_create = channel_commands.add_parser("create", help="create a channel")
    channel_create.add_argument("name", metavar="NAME")
    channel_create.add_argument("--description")
    operator_command(channel_create, _channel_create)
    channel_list = channel_commands.add_parser("list", help="list channels")
    operator_command(channel_list, _channel_list)

    watch = commands.add_parser("watch", help="stream events live")
    watch.add_argument("--topic", action="append", choices=["tasks", "agents", "validation"])
    operator_command(watch, _watch)
    return parser


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
