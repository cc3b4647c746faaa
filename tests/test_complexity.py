"""The complexity classifier on a table of described tasks."""

from __future__ import annotations

import pytest

from agentcom.hub.complexity import classify, infer_complexity
from agentcom.protocol.common import Tier

T, S, C = Tier.trivial, Tier.standard, Tier.complex

# (description, file hints, verification steps, expected tier)
TABLE: list[tuple[str, int, int, Tier]] = [
    ("Fix typo in README", 0, 0, T),
    ("Fix a typo in the installation guide", 0, 0, T),
    ("Rename variable tmp to buffer", 0, 0, T),
    ("Bump version to 2.4.1", 0, 0, T),
    ("Run the formatter over src", 0, 0, T),
    ("Fix lint warnings in utils.py", 1, 0, T),
    ("Update README with the new flag", 0, 0, T),
    ("Fix spelling mistakes in comments", 0, 0, T),
    ("Sort imports in the cli module", 0, 0, T),
    ("Update the changelog for the release", 0, 0, T),
    ("Remove trailing whitespace", 0, 0, T),
    ("Add a unit test for parse_date", 1, 1, S),
    ("Implement pagination for the task list endpoint", 2, 1, S),
    ("Add a --verbose flag to the export command and document it", 1, 1, S),
    ("Handle empty input in the CSV importer and return a clear error", 1, 2, S),
    ("Write a function that converts Celsius to Fahrenheit", 0, 0, S),
    ("Add retry with backoff to the HTTP client used for webhooks", 2, 1, S),
    ("Cache the results of the pricing lookup for five minutes", 1, 1, S),
    ("Add an index on the orders table created_at column", 1, 1, S),
    ("Fix the off-by-one error in the pager when the last page is full", 1, 1, S),
    ("Expose the queue depth as a Prometheus gauge", 1, 0, S),
    # keywords are whole words ("formats" is not "format") or stems ("refactor*")
    ("Write a function that parses dates in three formats and add tests", 0, 0, S),
    ("Support the two export formats the billing team asked for", 1, 1, S),
    ("Refactoring the scheduler into smaller parts", 2, 1, C),
    ("Refactor the payment service into separate modules", 3, 2, C),
    ("Migrate the user table to the new schema and backfill the data", 2, 3, C),
    ("Redesign the scheduler to support distributed workers", 4, 2, C),
    ("Security review of the authentication flow and fix what you find", 3, 3, C),
    ("Overhaul the plugin system", 6, 3, C),
    ("Rewrite the parser in a streaming style to cut memory use", 3, 2, C),
    ("Architect a multi-tenant storage layer with per-tenant encryption", 5, 4, C),
    ("Fix the race condition between the sweeper and the writer thread", 3, 3, C),
    ("Migrate from REST polling to a websocket protocol for live updates", 5, 3, C),
    (
        "Investigate why nightly exports are slow, profile the queries, add the missing "
        "indexes, rework the batching so memory stays flat, add metrics around each stage, "
        "document the new settings in the operations guide and make sure the existing "
        "integration tests still pass on both supported database versions and on the "
        "older release branch that customers still run",
        6,
        4,
        C,
    ),
    ("Update the copyright year in the footer", 0, 0, T),
]


@pytest.mark.parametrize(("description", "hints", "steps", "expected"), TABLE)
def test_classifier_picks_the_expected_tier(
    description: str, hints: int, steps: int, expected: Tier
) -> None:
    inference = infer_complexity(description, hints, steps)
    assert inference.tier is expected, inference
    assert 0.0 <= inference.confidence <= 1.0
    assert inference.signals


def test_table_has_at_least_thirty_tasks_of_every_tier() -> None:
    assert len(TABLE) >= 30
    assert {row[3] for row in TABLE} == {T, S, C}


def test_explicit_tier_always_wins() -> None:
    complexity = classify("Refactor everything for security", Tier.trivial)
    assert complexity.effective_tier is Tier.trivial
    assert complexity.source == "explicit"
    assert complexity.explicit_tier is Tier.trivial
    assert complexity.inferred is not None and complexity.inferred.tier is Tier.complex


def test_a_tier_given_as_unknown_runs_as_standard() -> None:
    complexity = classify("Refactor everything for security", "unknown")
    assert complexity.effective_tier is Tier.standard
    assert complexity.source == "default"
    assert complexity.explicit_tier is None
    assert complexity.signals == ["tier given as unknown"]


def test_inferred_tier_reports_its_signals() -> None:
    complexity = classify("Fix typo in README", None)
    assert complexity.source == "inferred"
    assert complexity.effective_tier is Tier.trivial
    assert any("typo" in signal for signal in complexity.signals)


def test_no_signal_means_standard_with_low_confidence() -> None:
    inference = infer_complexity("Make the thing work as the ticket explains it", 0, 0)
    assert inference.tier is Tier.standard
    assert inference.confidence < 0.5


def test_stronger_evidence_gives_higher_confidence() -> None:
    weak = infer_complexity("Refactor the module", 0, 0)
    strong = infer_complexity("Refactor and migrate the module for security", 6, 4)
    assert weak.tier is strong.tier is Tier.complex
    assert strong.confidence > weak.confidence
