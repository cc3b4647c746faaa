"""The ``agentcom`` command: ``serve``, ``token``, ``task``, ``agents``, ``endpoints``,
``channel``, ``stats``, ``watch``, ``config`` and ``sidecar``; errors are one line on
stderr and an exit status from :data:`~agentcom.cli.errors.EXIT_STATUS`.

One module per job: :mod:`~agentcom.cli.parser` (the command line and its help),
:mod:`~agentcom.cli.errors` (exit statuses, :class:`CliError`),
:mod:`~agentcom.cli.output` (tables, dates, money, a task), :mod:`~agentcom.cli.connect`
(an operator command's connection), :mod:`~agentcom.cli.values` (checked values and
choices), and the commands: :mod:`~agentcom.cli.serve`, :mod:`~agentcom.cli.tokens`,
:mod:`~agentcom.cli.tasks`, :mod:`~agentcom.cli.agents`, :mod:`~agentcom.cli.endpoints`,
:mod:`~agentcom.cli.channels`, :mod:`~agentcom.cli.stats`, :mod:`~agentcom.cli.watch`.
"""

from __future__ import annotations

import os
import sys

from agentcom.cli.errors import EXIT_OK, CliError
from agentcom.cli.parser import build_parser, with_defaults

__all__ = ["main"]

_parser = build_parser  # the name the tests of the help texts know it by


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and a non-zero exit code."""
    args = with_defaults(build_parser().parse_args(argv))
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
