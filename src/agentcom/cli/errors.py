"""Exit statuses of the ``agentcom`` command and the one error it reports: a
:class:`CliError` is one line on stderr and a status from :data:`EXIT_STATUS`."""

from __future__ import annotations

import re

__all__ = [
    "EXIT_DATABASE_IN_USE",
    "EXIT_FAILED",
    "EXIT_LOCK_LOST",
    "EXIT_OK",
    "EXIT_STATUS",
    "EXIT_TOKEN",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "reason_of",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TOKEN = 0, 1, 2, 3, 4
EXIT_DATABASE_IN_USE, EXIT_LOCK_LOST = 5, 6


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
       the connection (HTTP 429 too many connections, 503 stopping or standby)
  4    the hub refused the token (unknown, revoked, or an agent token)
  5    `serve`: another hub already serves the database (one database, one hub);
       with --standby it waits instead
  6    `serve`: the hub stepped down: it lost its PostgreSQL lock session and another
       hub holds the lock now (or held it meanwhile)
  130  interrupted (Ctrl-C); `task submit --wait` first says that the task stays
       queued, with its id (the task is not cancelled)
"""


def reason_of(exc: BaseException) -> str:
    """What went wrong, on one line, never empty (some errors have no message: a reset, a
    timeout; a database driver's may span several lines)."""
    text = re.sub(r"\s*\n\s*", " ", str(exc).strip())
    if text:
        return text
    return "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__


class CliError(Exception):
    """A problem reported as one line on stderr."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
