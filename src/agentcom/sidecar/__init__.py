"""``agentcom sidecar``: an agent that runs the tasks the hub assigns it.

One module per job: :mod:`~agentcom.sidecar.config` (settings),
:mod:`~agentcom.sidecar.state` (the state directory), :mod:`~agentcom.sidecar.job` (what
executors take and return), :mod:`~agentcom.sidecar.progress` (coalesced output),
:mod:`~agentcom.sidecar.shell` (the shell executor), :mod:`~agentcom.sidecar.runner` (the
loop), :mod:`~agentcom.sidecar.logs` and :mod:`~agentcom.sidecar.command` (the CLI entry).
"""

from __future__ import annotations

__all__: list[str] = []
