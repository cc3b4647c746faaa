"""``serve`` and ``config show``: the hub's settings from flags, environment and config
file, checked (TLS files, config syntax) before the hub starts, then the hub run until a
signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import ssl
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from agentcom import __version__
from agentcom.cli.errors import (
    EXIT_DATABASE_IN_USE,
    EXIT_FAILED,
    EXIT_LOCK_LOST,
    EXIT_OK,
    CliError,
    reason_of,
)
from agentcom.cli.output import table
from agentcom.config import Settings, load_settings, setting_sources
from agentcom.errors import ConfigurationError, DatabaseInUse, LockLost
from agentcom.logs import configure_logging
from agentcom.store.location import hide_password, shown
from agentcom.store.open import database_errors

__all__ = ["config_show", "serve_hub"]


def serve_hub(args: argparse.Namespace) -> int:
    """``serve``: check the settings and TLS files, then run the hub until a signal."""
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
        "pubsub": args.pubsub,
        "cluster": args.cluster,
        "node_id": args.node_id,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "certfile": args.certfile,
        "keyfile": args.keyfile,
        "insecure": args.insecure,
        "standby": args.standby,
    }
    try:
        return load_settings(args.config, **flags), setting_sources(args.config, **flags)
    except ValidationError as exc:
        raise CliError(
            f"invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
    except SettingsError as exc:  # e.g. a list setting in the environment that is not JSON
        raise CliError(f"invalid setting: {reason_of(exc)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"the config file {config} is not valid TOML: {reason_of(exc)}") from None
    except OSError as exc:  # e.g. replaced by a directory since the check above
        reason = exc.strerror or reason_of(exc)
        raise CliError(f"cannot read the config file {config}: {reason}") from None


def config_show(args: argparse.Namespace) -> int:
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
    table(
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
    if isinstance(value, str) and "://" in value:
        return hide_password(value)
    if isinstance(value, list):
        return [_masked(name, item) for item in value]
    return value


def _readable(path: str | Path, what: str) -> None:
    """Refuse a file that cannot be read, naming it (``what``: "config file"...)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror or reason_of(exc)}") from None


class _Encrypted(Exception):
    """The key asks for a passphrase: the hub prompts for it itself when it starts."""


def _refuse_passphrase() -> str:
    """The password callback of the check: a key that asks for one is not checked."""
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
        raise CliError(f"cannot use the TLS certificate {files}: {reason_of(exc)}") from None


async def _run_hub(settings: Settings) -> int:
    """Start the hub, print its addresses, and stop it on SIGINT or SIGTERM."""
    from agentcom.server.app import HubServer
    from agentcom.server.memory import return_large_blocks_to_the_system

    return_large_blocks_to_the_system()
    try:
        server = HubServer(settings)
        await server.start()
    except DatabaseInUse as exc:
        raise CliError(str(exc), EXIT_DATABASE_IN_USE) from None
    except database_errors(settings.db) as exc:
        message = f"cannot use the database {shown(settings.db)}: {reason_of(exc)}"
        raise CliError(message, EXIT_FAILED) from None
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    except ssl.SSLError as exc:  # e.g. the wrong passphrase for the key
        raise CliError(
            f"cannot use the TLS certificate {settings.certfile}: {reason_of(exc)}"
        ) from None
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else None
        message = f"cannot listen on {settings.host}:{settings.port}: " + (
            reason or exc.strerror or reason_of(exc)
        )
        raise CliError(message, EXIT_FAILED) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the lines a supervisor waits for
        loop.add_signal_handler(signum, stop.set)
    if server.serving_elsewhere is not None:
        print(f"standby: {server.serving_elsewhere}; taking over when it ends", flush=True)
    print(f"agentcom {__version__} hub on {server.url('/ws')}", flush=True)
    print(f"dashboard: {server.url('/dashboard', websocket=False)}", flush=True)
    stopped, ended = asyncio.create_task(stop.wait()), asyncio.create_task(server.ended.wait())
    await asyncio.wait((stopped, ended), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    ended.cancel()
    await server.stop()
    failure = server.failure
    if isinstance(failure, LockLost):
        raise CliError(f"stepped down: {failure}", EXIT_LOCK_LOST)
    if failure is not None:
        message = f"cannot use the database {shown(settings.db)}: {reason_of(failure)}"
        raise CliError(message, EXIT_FAILED)
    return EXIT_OK
