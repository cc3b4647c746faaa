"""One database has one hub, and a hub that cannot start leaves the database as it was.

Mostly real ``agentcom serve`` processes: the guard is a lock between processes,
released by the kernel when its holder dies, so only processes can show it works.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hubprocess import CliResult, HubProcess, closed_port, run_cli, run_cli_async, start_hub

from agentcom.client import OperatorClient
from agentcom.config import Settings
from agentcom.errors import DatabaseInUse
from agentcom.server.app import HubServer
from agentcom.store.lock import DatabaseLock

EXIT_DATABASE_IN_USE = 5


def serve(db: Path, port: int = 0) -> CliResult:
    """Run ``agentcom serve`` to completion: only for a start that is expected to fail."""
    return run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db))


def one_line(result: CliResult) -> str:
    """The one line a failed start writes (nothing else: no log line, no traceback)."""
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Each file of ``directory`` with its size and modification time."""
    return {
        entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in directory.iterdir()
        if not entry.name.startswith("hub-")  # the logs of the hubs started here
    }


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


async def test_a_second_hub_on_the_same_database_refuses_naming_the_first(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a hub serving a database with a queued task
    first = start_hub(hubs, tmp_path)
    assert first.process is not None
    async with OperatorClient(first.http_url, first.make_token("ops", "admin")) as operator:
        queued = await operator.submit("nobody can run this", needed_capabilities=["none-has"])

    # when a second hub is started on the same database (on another port)
    refused = await asyncio.to_thread(serve, first.db)

    # then it refuses in one line naming the database, the first hub's pid and address
    line = one_line(refused)
    assert refused.returncode == EXIT_DATABASE_IN_USE
    assert line.startswith(f"agentcom: the database {first.db} is already served by another hub")
    assert f"pid {first.process.pid}" in line
    assert f"ws://127.0.0.1:{first.port}/ws" in line

    # and the first hub still serves, its task untouched, and the token commands still work
    created = await run_cli_async("token", "create", "late", "--db", str(first.db))
    assert created.returncode == 0, created
    listed = await run_cli_async("token", "list", "--db", str(first.db))
    assert listed.returncode == 0 and "late" in listed.stdout, listed
    async with OperatorClient(first.http_url, first.make_token("ops", "admin")) as operator:
        task = await operator.get_task(queued["task_id"])
    assert (task["status"], task["generation"]) == ("queued", 0)


async def test_two_hubs_started_at_the_same_instant_leave_exactly_one_serving(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given three hubs started together on one database
    racers = [HubProcess(tmp_path) for _ in range(3)]
    hubs.extend(racers)

    # when all of them try to start at once
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(racer.start) for racer in racers), return_exceptions=True
    )

    # then exactly one serves, and every other one exited 5 saying why
    serving = [racer for racer, outcome in zip(racers, outcomes, strict=True)
               if outcome is racer]  # fmt: skip
    assert len(serving) == 1, outcomes
    for racer in racers:
        if racer is not serving[0]:
            assert racer.process is not None and racer.process.returncode == EXIT_DATABASE_IN_USE
            assert "is already served by another hub" in racer.log()
            assert "restored" not in racer.log()


async def test_a_hub_killed_with_sigkill_leaves_no_lock_to_clean(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a hub that was killed outright
    first = start_hub(hubs, tmp_path)
    async with OperatorClient(first.http_url, first.make_token("ops", "admin")) as operator:
        queued = await operator.submit("survive the crash", needed_capabilities=["none-has"])
    first.kill()

    # when a new hub starts on the same database
    second = start_hub(hubs, tmp_path)

    # then it starts, with the first one's work restored
    assert "restored 1 unfinished tasks" in second.log()
    async with OperatorClient(second.http_url, second.make_token("ops", "admin")) as operator:
        assert (await operator.get_task(queued["task_id"]))["status"] == "queued"

    # and a third one is refused while the second serves, naming the second
    assert second.process is not None
    refused = await asyncio.to_thread(serve, second.db)
    assert refused.returncode == EXIT_DATABASE_IN_USE
    assert f"pid {second.process.pid}" in one_line(refused)


async def test_a_hub_stopped_cleanly_lets_the_next_one_start(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    first = start_hub(hubs, tmp_path)
    assert first.stop() == 0

    second = start_hub(hubs, tmp_path)

    assert second.port is not None


async def test_a_taken_port_is_refused_before_the_database_is_touched(
    tmp_path: Path, hubs: list[HubProcess], taken_port: int
) -> None:
    # given a database with an unfinished task, whose hub has stopped
    first = start_hub(hubs, tmp_path)
    async with OperatorClient(first.http_url, first.make_token("ops", "admin")) as operator:
        await operator.submit("wait for the next hub", needed_capabilities=["none-has"])
    first.stop()
    before = listing(tmp_path)

    # when a hub is started on it with a port something else holds
    refused = await asyncio.to_thread(serve, first.db, taken_port)

    # then it says the address is in use, restores nothing, and leaves every file as it was
    line = one_line(refused)
    assert refused.returncode == 1
    assert line == f"agentcom: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    assert listing(tmp_path) == before


async def test_a_taken_port_creates_no_database(tmp_path: Path, taken_port: int) -> None:
    db = tmp_path / "agentcom.db"

    refused = await asyncio.to_thread(serve, db, taken_port)

    assert "address already in use" in one_line(refused)
    assert list(tmp_path.iterdir()) == []


def make_directory(path: Path) -> None:
    path.mkdir()


def make_lock_a_directory(db: Path) -> None:
    db.with_name(db.name + ".lock").mkdir()


def make_nothing(db: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("db_name", "make", "expected"),
    [
        ("hub.db", make_directory, "cannot use the database {db}: it is a directory"),
        ("hub.db", make_lock_a_directory,
         "cannot use the database {db}: cannot open the lock file {db}.lock: "),
        ("absent/hub.db", make_nothing,
         "cannot use the database {db}: the directory {db.parent} does not exist"),
    ],
    ids=["database-is-a-directory", "lock-file-cannot-be-opened", "no-such-directory"],
)  # fmt: skip
async def test_a_database_path_that_cannot_be_locked_is_one_line(
    tmp_path: Path, db_name: str, make: Callable[[Path], None], expected: str
) -> None:
    db = tmp_path / db_name
    make(db)

    refused = await asyncio.to_thread(serve, db)

    line = one_line(refused)
    assert refused.returncode == 1
    assert line.startswith("agentcom: " + expected.format(db=db)), line
    assert not db.with_name(db.name + "-wal").exists()


async def test_a_hub_that_loses_the_race_keeps_the_winners_address_in_the_lock_file(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a serving hub and a refused one
    first = start_hub(hubs, tmp_path)
    assert first.process is not None
    refused = await asyncio.to_thread(serve, first.db)
    assert refused.returncode == EXIT_DATABASE_IN_USE

    # then the lock file still names the hub that serves, and nobody else
    text = first.db.with_name(first.db.name + ".lock").read_text()
    assert f'"pid": {first.process.pid}' in text
    assert f"ws://127.0.0.1:{first.port}/ws" in text

    # and once the serving hub is gone, it names nobody
    assert first.stop() == 0
    assert first.db.with_name(first.db.name + ".lock").read_text() == ""


async def test_a_second_name_for_the_database_is_the_same_database(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a hub serving a database, and a symbolic link to that database
    first = start_hub(hubs, tmp_path)
    link = tmp_path / "link.db"
    link.symlink_to(first.db)

    # when a second hub is started on the link
    refused = await asyncio.to_thread(serve, link)

    # then it is refused like one started on the file itself
    assert refused.returncode == EXIT_DATABASE_IN_USE
    assert one_line(refused).startswith(f"agentcom: the database {link} is already served")


async def test_a_refused_start_releases_its_port_and_creates_no_database(
    settings: Settings,
) -> None:
    # given a database whose lock another holder has
    holder = DatabaseLock.acquire(settings.db, "ws://192.0.2.7:4000/ws")
    port = closed_port()
    try:
        # when a hub tries to start on it
        server = HubServer(settings.model_copy(update={"port": port}), run_sweeps=False)
        with pytest.raises(DatabaseInUse) as refused:
            await server.start()
        await server.stop()  # harmless after a refused start
    finally:
        holder.release()

    # then it names the holder, and leaves no database and no open port behind
    assert (refused.value.pid, refused.value.address) == (os.getpid(), "ws://192.0.2.7:4000/ws")
    assert not settings.db.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", port))
