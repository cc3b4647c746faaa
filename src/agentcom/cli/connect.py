"""The connection of an operator command: the hub's address checked, a TLS context,
and every way the hub can fail turned into one :class:`CliError` with its exit status."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agentcom.cli.errors import (
    EXIT_FAILED,
    EXIT_TOKEN,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    reason_of,
)
from agentcom.client import (
    AuthenticationError,
    OperatorClient,
    RequestFailed,
    hub_base_url,
    trusting,
    websocket_url,
)
from agentcom.errors import AgentcomError

__all__ = ["OperatorAction", "operator_handler"]

OperatorAction = Callable[[OperatorClient, argparse.Namespace], Awaitable[int]]
"""An operator command: runs on a connected client, returns the exit status."""


def operator_handler(
    action: OperatorAction,
) -> Callable[[argparse.Namespace], int]:
    """The handler of an operator command: connect with the token, run ``action``, and
    turn every failure into a :class:`CliError` with its exit status."""

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
            except RequestFailed as exc:  # store_unavailable: the token cannot be checked now
                raise CliError(str(exc), EXIT_FAILED) from None
            except InvalidURI as exc:
                raise CliError(f"bad hub URL {args.hub!r}: {reason_of(exc)}") from None
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
                raise CliError(reason_of(exc), EXIT_FAILED) from None
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
        problem = reason_of(exc)
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
        detail = f"{reason_of(exc)} (is it an agentcom hub?)"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        detail = reason_of(exc)
    elif isinstance(exc, ssl.SSLError | ConnectionResetError) and hub.startswith(
        ("https:", "wss:")
    ):
        detail = f"{reason_of(exc)} (does the hub serve TLS?)"
    else:
        detail = reason_of(exc)
    return CliError(f"cannot reach the hub at {hub}: {detail}", EXIT_UNREACHABLE)


def _trusting(cafile: str | None) -> ssl.SSLContext | None:
    """A TLS context that trusts the certificates in ``cafile`` (None: the system's)."""
    try:
        return trusting(cafile)
    except AgentcomError as exc:
        raise CliError(str(exc)) from None
