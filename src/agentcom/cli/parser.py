"""The command line of ``agentcom``: every command, option and help text, each command
bound to its handler. The help's epilog lists roles, environment and exit statuses."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn, get_args

from agentcom import __version__
from agentcom.cli.agents import agent_drain, agent_restart, agents_list
from agentcom.cli.channels import channel_create, channel_list
from agentcom.cli.connect import OperatorAction, operator_handler
from agentcom.cli.endpoints import endpoint_add, endpoint_approve, endpoint_remove, endpoints_list
from agentcom.cli.errors import EXIT_STATUS, EXIT_USAGE
from agentcom.cli.serve import config_show, serve_hub
from agentcom.cli.stats import show_stats
from agentcom.cli.tasks import task_change, task_list, task_route, task_show, task_submit
from agentcom.cli.tokens import on_database, token_create, token_list, token_revoke
from agentcom.cli.values import PRIORITIES, STATUSES, TIERS, duration_arg, statuses_arg, task_id_arg
from agentcom.cli.watch import watch_events
from agentcom.hub.auth import Role
from agentcom.hub.hub import TASK_ID_PREFIX_MIN
from agentcom.protocol.operator import TopicName
from agentcom.sidecar import command as sidecar_command

__all__ = ["ROLES_AND_ENVIRONMENT", "build_parser", "with_defaults"]

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
  AGENTCOM_DB      the database of `serve` and `token` (--db): a SQLite file, default
                   ./agentcom.db, or a postgresql://USER@HOST/NAME URL
  AGENTCOM_CONFIG  a TOML settings file for `serve` and `config show` (--config)
  AGENTCOM_<NAME>  any hub setting, e.g. AGENTCOM_PORT=4100, AGENTCOM_IDLE_TIMEOUT_S=120;
                   `agentcom config show` lists them with their values and sources
"""


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
    :func:`with_defaults` fills in the ones not typed once parsing is done.
    """
    unset = argparse.SUPPRESS
    if database:
        parser.add_argument(
            "--db",
            default=unset,
            help="SQLite file or postgresql:// URL (default $AGENTCOM_DB or ./agentcom.db)",
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


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
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


def build_parser() -> argparse.ArgumentParser:
    """The ``agentcom`` command line, every command bound to its handler."""
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
    _operator_command(stats, show_stats)
    watch = commands.add_parser("watch", help="stream events live (viewer)")
    watch.add_argument(
        "--topic",
        action="append",
        choices=get_args(TopicName),
        help="only this topic's events (repeatable; default all)",
    )
    watch.add_argument(
        "--task",
        type=task_id_arg,
        metavar="ID",
        help="only this task's events, until it is finished; " + _ID_HELP.removeprefix("the "),
    )
    _operator_command(watch, watch_events)
    sidecar = commands.add_parser("sidecar", help="run a sidecar that executes tasks")
    sidecar_command.add_arguments(sidecar)
    sidecar.set_defaults(handler=sidecar_command.run)
    return parser


def _operator_command(sub: argparse.ArgumentParser, action: OperatorAction) -> None:
    """Give ``sub`` the shared options and run ``action`` on a connected client."""
    _shared_options(sub)
    sub.set_defaults(handler=operator_handler(action))


def _serve_settings_options(parser: argparse.ArgumentParser) -> None:
    """The flags of ``serve`` that are settings (``config show`` takes them too)."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default 4000)")
    parser.add_argument(
        "--db", help="SQLite file or postgresql:// URL (default $AGENTCOM_DB or ./agentcom.db)"
    )
    parser.add_argument(
        "--pubsub",
        help="memory (default) or redis://HOST:PORT/DB: share events with the other hub "
        "nodes of the cluster through Redis; with a postgresql:// --db, the nodes also "
        "share the database and its queue ($AGENTCOM_PUBSUB)",
    )
    parser.add_argument(
        "--cluster",
        help="cluster name, the prefix of every Redis key and channel (default agentcom; "
        "$AGENTCOM_CLUSTER)",
    )
    parser.add_argument(
        "--node-id",
        help="this node's name in the cluster (default: host name and a random suffix; "
        "$AGENTCOM_NODE_ID)",
    )
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
    parser.add_argument(
        "--standby",
        action="store_true",
        default=None,
        help="when another hub serves the database, wait as its standby and take over "
        "when it ends, instead of exiting; never shares the database with other nodes "
        "($AGENTCOM_STANDBY)",
    )


def _config_command(commands: Any) -> None:
    """``config show``."""
    config = commands.add_parser("config", help="the settings in effect and their sources")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show",
        help="every setting: its value (secrets masked) and whether it came from a flag, "
        "the environment, the config file or the default",
    )
    _serve_settings_options(show)
    _shared_options(show)
    show.set_defaults(handler=config_show)


def _serve_command(commands: Any) -> None:
    """``serve``."""
    serve = commands.add_parser("serve", help="run a hub")
    _serve_settings_options(serve)
    serve.set_defaults(handler=serve_hub)


def _token_command(commands: Any) -> None:
    """``token create|list|revoke``."""
    token = commands.add_parser("token", help="manage tokens (works on the database directly)")
    _shared_options(token, database=True)
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="create a token; prints it alone")
    create.add_argument("agent_id", metavar="AGENT_ID", help="who the token is for")
    create.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.agent.value,
        help="agent (a sidecar, the default), viewer or admin (an operator)",
    )
    listing = token_commands.add_parser("list", help="list tokens (never the secrets)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = token_commands.add_parser("revoke", help="revoke an agent's token")
    revoke.add_argument("agent_id", metavar="AGENT_ID", help="whose token to revoke")
    for sub, handler in ((create, token_create), (listing, token_list), (revoke, token_revoke)):
        _shared_options(sub, database=True)
        sub.set_defaults(handler=on_database(handler))


_ID_HELP = f"the task's id, or its first {TASK_ID_PREFIX_MIN} or more characters"


def _filter_options(parser: argparse.ArgumentParser) -> None:
    """The task filter of ``task list`` and the bulk actions."""
    parser.add_argument(
        "--status",
        type=statuses_arg,
        metavar="S[,S...]",
        help=f"only tasks in one of these states: {', '.join(STATUSES)}",
    )
    parser.add_argument("--agent", metavar="AGENT_ID", help="only tasks this agent holds")
    parser.add_argument("--capability", metavar="CAP", help="only tasks that need this capability")
    parser.add_argument("--priority", choices=PRIORITIES, help="only this priority")
    parser.add_argument(
        "--since",
        type=duration_arg,
        metavar="DURATION",
        help="only tasks updated in the last DURATION: 90s, 30m, 1h, 2d",
    )


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    """The filter of a bulk action, and ``--yes``."""
    _filter_options(parser)
    parser.add_argument(
        "--yes", action="store_true", help="act on every matching task without asking"
    )


def _task_command(commands: Any) -> None:
    """``task submit|list|show|retry|cancel|requeue|route``."""
    task = commands.add_parser("task", help="submit, inspect and change tasks")
    _shared_options(task)
    task_commands = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    submit = task_commands.add_parser("submit", help="queue a task; prints its id (admin)")
    submit.add_argument("description", metavar="DESCRIPTION", help="what to do")
    submit.add_argument("--priority", choices=PRIORITIES, help="default normal")
    submit.add_argument(
        "--complexity",
        choices=TIERS,
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
    _operator_command(submit, task_submit)

    listing = task_commands.add_parser("list", help="list tasks, most recently updated first")
    _filter_options(listing)
    listing.add_argument(
        "--limit",
        type=int,
        default=100,
        help="at most this many, 1 to 1000 (default 100; the hub sends at most "
        "list_limit_max, 200, per page)",
    )
    listing.add_argument(
        "--cursor", help="the next page, as the previous one said on standard error"
    )
    _operator_command(listing, task_list)

    show = task_commands.add_parser("show", help="a task with history, routing and result")
    show.add_argument("task_id", metavar="ID", type=task_id_arg, help=_ID_HELP)
    _operator_command(show, task_show)
    retry = task_commands.add_parser(
        "retry", help="requeue a dead-letter task, or all of them with --all-dead (admin)"
    )
    retry.add_argument("task_id", metavar="ID", type=task_id_arg, nargs="?", help=_ID_HELP)
    retry.add_argument(
        "--all-dead",
        action="store_true",
        help="every dead-letter task (narrowed by the filters below), after a confirmation",
    )
    _bulk_options(retry)
    _operator_command(retry, task_change("task_retry", bulk="task_retry_many"))
    cancel = task_commands.add_parser(
        "cancel", help="cancel an unfinished task, or those a filter matches (admin)"
    )
    cancel.add_argument("task_id", metavar="ID", type=task_id_arg, nargs="?", help=_ID_HELP)
    _bulk_options(cancel)
    _operator_command(cancel, task_change("task_cancel", bulk="task_cancel_many"))
    requeue = task_commands.add_parser(
        "requeue", help="take a task from its agent and queue it again at once (admin)"
    )
    requeue.add_argument("task_id", metavar="ID", type=task_id_arg, help=_ID_HELP)
    _operator_command(requeue, task_change("task_requeue"))

    route = task_commands.add_parser("route", help="show the routing decision, queue nothing")
    route.add_argument("description", metavar="DESCRIPTION", help="what the task would do")
    route.add_argument(
        "--complexity", choices=TIERS, help="the tier (default: inferred; unknown is standard)"
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
    _operator_command(route, task_route)


def _agents_command(commands: Any) -> None:
    """``agents [list|drain|undrain|restart]``."""
    agents = commands.add_parser(
        "agents", help="agents with state and current task (list, drain, restart)"
    )
    _operator_command(agents, agents_list)  # without ACTION: the list
    agent_commands = agents.add_subparsers(dest="agents_command", metavar="ACTION")
    listing = agent_commands.add_parser("list", help="every known agent (the default)")
    _operator_command(listing, agents_list)
    drain = agent_commands.add_parser(
        "drain", help="let an agent finish its current task and give it no new one (admin)"
    )
    drain.add_argument("agent_id", metavar="AGENT_ID", help="the agent to drain")
    _operator_command(drain, agent_drain("agent_drain"))
    undrain = agent_commands.add_parser(
        "undrain", help="end an agent's drain: it is given work again (admin)"
    )
    undrain.add_argument("agent_id", metavar="AGENT_ID", help="the agent to undrain")
    _operator_command(undrain, agent_drain("agent_undrain"))
    restart = agent_commands.add_parser(
        "restart", help="ask an agent's sidecar to restart, after its running task (admin)"
    )
    restart.add_argument("agent_id", metavar="AGENT_ID", help="the agent to restart")
    restart.add_argument("--reason", metavar="TEXT", help="told to the sidecar and logged")
    _operator_command(restart, agent_restart)


def _endpoints_command(commands: Any) -> None:
    """``endpoints [list|add|remove|approve]``."""
    endpoints = commands.add_parser(
        "endpoints", help="Ollama endpoints (list, add, remove, approve)"
    )
    _operator_command(endpoints, endpoints_list)  # without ACTION: the list
    endpoint_commands = endpoints.add_subparsers(dest="endpoint_command", metavar="ACTION")
    listing = endpoint_commands.add_parser(
        "list", help="every endpoint with state, models and last error (the default)"
    )
    _operator_command(listing, endpoints_list)
    add = endpoint_commands.add_parser("add", help="register an endpoint (admin)")
    add.add_argument("url", metavar="URL", help="its base URL, e.g. http://10.0.0.21:11434")
    add.add_argument("--name", metavar="N", help="its id (default: derived from the URL)")
    _operator_command(add, endpoint_add)
    remove = endpoint_commands.add_parser("remove", help="forget an endpoint (admin)")
    remove.add_argument("endpoint_id", metavar="ID", help="the endpoint's id")
    _operator_command(remove, endpoint_remove)
    approve = endpoint_commands.add_parser(
        "approve", help="let an agent's endpoint serve every agent (admin)"
    )
    approve.add_argument("endpoint", metavar="URL|ID", help="the endpoint's id or URL")
    _operator_command(approve, endpoint_approve)


def _channel_command(commands: Any) -> None:
    """``channel create|list``."""
    channel = commands.add_parser("channel", help="channels agents publish to")
    _shared_options(channel)
    channel_commands = channel.add_subparsers(
        dest="channel_command", required=True, metavar="ACTION"
    )
    create = channel_commands.add_parser("create", help="create a channel (admin)")
    create.add_argument("name", metavar="NAME", help="the channel's name")
    create.add_argument("--description", help="what it is for")
    _operator_command(create, channel_create)
    listing = channel_commands.add_parser("list", help="list channels")
    _operator_command(listing, channel_list)
