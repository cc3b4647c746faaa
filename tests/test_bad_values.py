"""Bad values are refused where they come in: on the wire with ``validation_failed``, by
the CLI with one line and exit 2, and a mistyped database path is never created."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hubprocess import CliResult, HubProcess, run_cli_async, running_hub

from agentcom.client import OperatorClient, RequestFailed

EXIT_FAILED, EXIT_USAGE = 1, 2

BLANKS = [" ", " \n\t  ", "\u3000\u00a0"]  # spaces, line breaks and tabs, Unicode spaces


def one_line(result: CliResult) -> str:
    """The single stderr line of a failed run (nothing on stdout, no traceback)."""
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- on the wire ----------------------------------------------------------------------


@pytest.mark.parametrize("blank", BLANKS, ids=["space", "mixed", "unicode"])
async def test_a_whitespace_only_description_is_refused_naming_description(
    operator: OperatorClient, blank: str
) -> None:
    # when a task with a description of whitespace only is submitted or previewed
    with pytest.raises(RequestFailed) as submitted:
        await operator.submit(blank)
    with pytest.raises(RequestFailed) as previewed:
        await operator.request("task_route", task={"description": blank})

    # then both are refused as a bad value of the description
    for refused in (submitted.value, previewed.value):
        assert refused.code == "validation_failed"
        assert refused.message is not None
        assert refused.message.startswith("task.description: "), refused.message
    # and nothing was queued
    assert await operator.request("task_list") == []


async def test_a_description_with_text_around_whitespace_is_kept_as_given(
    operator: OperatorClient,
) -> None:
    task = await operator.submit("  fix the parser\n")

    assert task["description"] == "  fix the parser\n"


# --- the CLI: the hub's refusals of a bad value exit 2 --------------------------------


@pytest.fixture(scope="module")
def quiet_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One hub for the refusals below: none of them changes anything."""
    with running_hub(tmp_path_factory.mktemp("bad-values")) as process:
        yield process


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["task", "submit", "   "], "validation_failed: task.description: "),
        (["task", "submit", " \n", "--wait"], "validation_failed: task.description: "),
        (["task", "route", "\t"], "validation_failed: task.description: "),
        (["task", "submit", "fine", "--max-retries", "1000"],
         "validation_failed: task.max_retries"),
        (["endpoints", "add", "not a url"], "invalid_url: "),
        (["channel", "create", "no spaces allowed"], "invalid_name: "),
    ],
    ids=["blank-description", "blank-description-wait", "blank-route", "retries-out-of-range",
         "endpoint-url", "channel-name"],
)  # fmt: skip
async def test_a_value_the_hub_refuses_is_one_line_and_exit_2(
    quiet_hub: HubProcess, arguments: list[str], expected: str
) -> None:
    admin = quiet_hub.operator_args(quiet_hub.make_token("ops", "admin"))

    result = await run_cli_async(*arguments, *admin)

    assert one_line(result).startswith(f"agentcom: {expected}"), result.stderr
    assert result.returncode == EXIT_USAGE
    listed = await run_cli_async("task", "list", "--json", *admin)
    assert listed.stdout.strip() == "[]", listed


async def test_a_refusal_that_is_not_about_a_value_still_exits_1(quiet_hub: HubProcess) -> None:
    admin = quiet_hub.operator_args(quiet_hub.make_token("ops", "admin"))

    result = await run_cli_async("task", "cancel", "0123456789abcdef", *admin)

    assert one_line(result).startswith("agentcom: not_found")
    assert result.returncode == EXIT_FAILED


# --- the token commands and a database that does not exist ---------------------------


@pytest.mark.parametrize(
    "arguments",
    [["token", "list"], ["token", "list", "--json"], ["token", "revoke", "worker-1"]],
    ids=["list", "list-json", "revoke"],
)
async def test_a_token_command_that_only_reads_or_removes_creates_no_database(
    tmp_path: Path, arguments: list[str]
) -> None:
    typo = tmp_path / "typo.db"

    result = await run_cli_async(*arguments, "--db", str(typo))

    assert one_line(result).startswith(f"agentcom: the database {typo} does not exist")
    assert result.returncode == EXIT_FAILED
    assert list(tmp_path.iterdir()) == []


async def test_a_token_command_on_the_default_database_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "from-the-environment.db"

    result = await run_cli_async("token", "list", env={"AGENTCOM_DB": str(missing)})

    assert "does not exist" in one_line(result)
    assert not missing.exists()


async def test_token_create_creates_a_missing_database_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "new.db"

    created = await run_cli_async("token", "create", "worker-1", "--db", str(db))
    again = await run_cli_async("token", "create", "worker-2", "--db", str(db))

    # the first says it created the database, on stderr: stdout stays the token alone
    assert created.returncode == 0, created
    assert created.stderr == f"created the database {db}\n"
    assert created.stdout.startswith("ac_") and created.stdout.count("\n") == 1
    # the second finds it and says nothing more
    assert (again.returncode, again.stderr) == (0, "")
    listed = await run_cli_async("token", "list", "--db", str(db))
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["AGENT", "ROLE", "CREATED"]
    assert [row.split()[0] for row in rows] == ["worker-1", "worker-2"]
