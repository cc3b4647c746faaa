"""``agentcom sidecar``: its arguments, and running it until SIGTERM/SIGINT.

Exit status: 0 after a clean stop, 2 for bad settings or a state directory another
sidecar uses (one line on stderr saying which), 4 when the hub refuses the token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidURI

from agentcom.client import AuthenticationError
from agentcom.sidecar import config as sidecar_config
from agentcom.sidecar.logs import configure, log_event
from agentcom.sidecar.state import StateDir, StateDirInUse

if TYPE_CHECKING:
    from agentcom.sidecar.runner import SidecarRunner

__all__ = ["add_arguments", "run"]

logger = logging.getLogger("agentcom.sidecar")

EXIT_OK, EXIT_USAGE, EXIT_TOKEN = 0, 2, 4

_FLAGS = (
    "hub_url", "agent_id", "token", "name", "capabilities", "ollama_url", "state_dir",
    "workdir", "log_format", "log_level", "wake_command", "stop_grace_s", "dry_run", "cafile",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``agentcom sidecar``; every one overrides the environment and the file."""
    parser.add_argument("--hub", dest="hub_url", help="agent endpoint (default $AGENTCOM_HUB_URL)")
    parser.add_argument("--agent-id", help="this agent's id (default $AGENTCOM_AGENT_ID)")
    parser.add_argument("--token", help="its agent token (default $AGENTCOM_AGENT_TOKEN)")
    parser.add_argument(
        "--cafile", type=Path,
        help="PEM certificates to trust for a wss:// hub, e.g. its own self-signed one "
        "(default $AGENTCOM_CAFILE, else the system's)",
    )  # fmt: skip
    parser.add_argument("--name", help="display name (default the agent id)")
    parser.add_argument(
        "--capability", dest="capabilities", action="append", metavar="CAP",
        help="a capability to advertise (repeatable)",
    )  # fmt: skip
    parser.add_argument("--ollama-url", help="the local Ollama endpoint to announce")
    parser.add_argument("--state-dir", type=Path, help="what must survive a crash")
    parser.add_argument("--workdir", type=Path, help="where shell tasks run (default .)")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("--log-format", choices=["text", "json"], help="log lines (default text)")
    parser.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="any case (default INFO)",
    )  # fmt: skip
    parser.add_argument("--wake-command", help="shell command run for wake tasks")
    parser.add_argument(
        "--stop-grace", dest="stop_grace_s", type=float, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long a running task may finish before it is given back",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_const", const=True,
        help="accept and complete tasks without running anything",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the sidecar with the parsed ``args``; returns the exit status."""
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in _FLAGS}
    try:
        settings = sidecar_config.load(flags, args.config)
        if not settings.workdir.is_dir():
            raise sidecar_config.SidecarConfigError(
                f"workdir: {settings.workdir} is not a directory (shell tasks run there)"
            )
        tls = settings.tls_context()
        state = StateDir(settings.resolved_state_dir())
        state.lock()
    except (sidecar_config.SidecarConfigError, StateDirInUse) as exc:
        print(f"agentcom sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"agentcom sidecar: cannot use the state directory: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings.log_format, settings.log_level)
    # Imported here: the executors' HTTP client would slow every other agentcom command.
    from agentcom.sidecar.runner import SidecarRunner

    return asyncio.run(_serve(SidecarRunner(settings, state, tls=tls)))


async def _serve(runner: SidecarRunner) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows has no signal handlers in asyncio: Ctrl-C there ends at once (status 130).
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, runner.request_stop, stop)
    log_event(
        logger, "starting", "sidecar %s starting; state in %s",
        runner.config.agent_id, runner.state.path,
    )  # fmt: skip
    try:
        await runner.run(stop)
    except AuthenticationError as exc:
        log_event(logger, "refused", "the hub refused this agent: %s", exc, level=logging.ERROR)
        return EXIT_TOKEN
    except InvalidURI as exc:
        log_event(logger, "bad_url", "bad hub URL: %s", exc, level=logging.ERROR)
        return EXIT_USAGE
    log_event(logger, "stopped", "sidecar stopped")
    return EXIT_OK
