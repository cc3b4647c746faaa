"""``agentcom sidecar``: an agent that runs the tasks the hub assigns it.

One module per job: :mod:`~agentcom.sidecar.config` (settings),
:mod:`~agentcom.sidecar.state` (the state directory), :mod:`~agentcom.sidecar.job` (what
executors take and return), :mod:`~agentcom.sidecar.progress` (coalesced output), the
executors :mod:`~agentcom.sidecar.shell`, :mod:`~agentcom.sidecar.ollama`,
:mod:`~agentcom.sidecar.claude`, :mod:`~agentcom.sidecar.wake` and
:mod:`~agentcom.sidecar.dryrun` (the model executors share
:mod:`~agentcom.sidecar.streaming`), :mod:`~agentcom.sidecar.prices` (the price table),
:mod:`~agentcom.sidecar.resources` (host figures), :mod:`~agentcom.sidecar.execution`
(choosing and running an executor), :mod:`~agentcom.sidecar.connection` (the client),
:mod:`~agentcom.sidecar.runner` (the loop), :mod:`~agentcom.sidecar.logs` and
:mod:`~agentcom.sidecar.command` (the CLI entry).
See docs/sidecar.md.
"""

from __future__ import annotations

__all__: list[str] = []
