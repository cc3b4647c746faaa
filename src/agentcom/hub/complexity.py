"""Complexity inference: a tier and a confidence from a task's text and shape.

The heuristic adds up signals: keywords that lean complex (refactor, migration,
security ...) or trivial (typo, rename, bump version ...), the length of the
description, and how many file hints and verification steps the task carries. The
sum picks the tier; its distance from the nearest tier boundary gives the confidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentcom.protocol.common import RequestedTier, Tier
from agentcom.protocol.outbound import Complexity, InferredComplexity

__all__ = ["Inference", "classify", "infer_complexity"]

# Whole words or phrases; a trailing "*" also matches any ending ("refactor*": refactoring,
# refactored), so "format" matches "format" but not "formats" ("parses three formats").
_COMPLEX_WORDS = (
    "refactor*", "architect*", "migration*", "migrate*", "redesign*", "security",
    "overhaul*", "rewrite*", "rewriting", "concurrency", "concurrent", "race condition*",
    "distributed", "authentication", "authorization", "encrypt*",
    "performance", "scalab*", "deadlock*", "schema change*", "multi-step", "end-to-end",
    "protocol*", "vulnerabilit*",
)  # fmt: skip
_TRIVIAL_WORDS = (
    "typo*", "rename*", "renaming", "bump version", "bump the version", "version bump",
    "format", "formatting", "formatter*", "reformat*", "lint", "linting", "linter", "update readme",
    "update the readme", "fix spelling", "spelling", "whitespace", "add a comment",
    "update comment*", "changelog", "sort imports", "copyright",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Keywords:
    """A list of keywords and one pattern finding them all in one pass over a text."""

    words: tuple[str, ...]  # without their "*", in the list's order
    pattern: re.Pattern[str]

    def found_in(self, text: str) -> list[str]:
        """The keywords found in text, each once, in the list's order."""
        found = {match.group(1) for match in self.pattern.finditer(text)}
        return [word for word in self.words if word in found] if found else []


def _keywords(words: tuple[str, ...]) -> _Keywords:
    # A zero-width match at each position where some keyword starts, capturing it: every
    # keyword is found wherever it occurs, even inside another one's match ("spelling"
    # in "fix spelling"), as if each were searched for alone.
    alternatives = [
        re.escape(word.rstrip("*")) + ("" if word.endswith("*") else r"\b") for word in words
    ]
    pattern = re.compile(r"(?=\b(" + "|".join(alternatives) + "))")
    return _Keywords(tuple(word.rstrip("*") for word in words), pattern)


_COMPLEX = _keywords(_COMPLEX_WORDS)
_TRIVIAL = _keywords(_TRIVIAL_WORDS)

_COMPLEX_AT = 3  # score at or above: complex
_TRIVIAL_AT = -2  # score at or below: trivial


@dataclass(frozen=True, slots=True)
class Inference:
    """What the heuristic concluded, and from what."""

    tier: Tier
    confidence: float
    score: int
    signals: tuple[str, ...]


def infer_complexity(
    description: str, file_hints: int = 0, verification_steps: int = 0
) -> Inference:
    """Infer a tier from a description and the number of file hints and verification steps."""
    text = description.lower()
    score = 0
    signals: list[str] = []
    complex_found = _COMPLEX.found_in(text)
    trivial_found = _TRIVIAL.found_in(text)
    if complex_found:
        score += min(5, 2 + len(complex_found))
        signals.append("complex keywords: " + ", ".join(complex_found[:4]))
    if trivial_found:
        score -= min(5, 2 + len(trivial_found))
        signals.append("trivial keywords: " + ", ".join(trivial_found[:4]))
    words = len(text.split())
    if words > 80:
        score += 2
        signals.append(f"long description ({words} words)")
    elif words > 30:
        score += 1
        signals.append(f"medium description ({words} words)")
    elif words < 8 and not complex_found:
        score -= 1
        signals.append(f"short description ({words} words)")
    if file_hints >= 5:
        score += 2
        signals.append(f"{file_hints} file hints")
    elif file_hints >= 2:
        score += 1
        signals.append(f"{file_hints} file hints")
    if verification_steps >= 3:
        score += 1
        signals.append(f"{verification_steps} verification steps")
    if score >= _COMPLEX_AT:
        tier, margin = Tier.complex, score - _COMPLEX_AT
    elif score <= _TRIVIAL_AT:
        tier, margin = Tier.trivial, _TRIVIAL_AT - score
    else:
        tier, margin = Tier.standard, min(score - _TRIVIAL_AT, _COMPLEX_AT - score) - 1
    confidence = round(min(0.95, 0.55 + 0.1 * margin), 2)
    if not signals:
        signals.append("no signals")
        confidence = 0.4
    return Inference(tier=tier, confidence=confidence, score=score, signals=tuple(signals))


def classify(
    description: str,
    explicit_tier: RequestedTier | None,
    file_hints: int = 0,
    verification_steps: int = 0,
) -> Complexity:
    """The task's complexity: an explicit tier wins, ``unknown`` runs as standard, and
    otherwise the inferred tier."""
    inference = infer_complexity(description, file_hints, verification_steps)
    inferred = InferredComplexity(tier=inference.tier, confidence=inference.confidence)
    if explicit_tier == "unknown":
        return Complexity(
            effective_tier=Tier.standard,
            source="default",
            inferred=inferred,
            signals=["tier given as unknown"],
        )
    if isinstance(explicit_tier, Tier):
        return Complexity(
            effective_tier=explicit_tier,
            source="explicit",
            explicit_tier=explicit_tier,
            inferred=inferred,
            signals=["explicit tier"],
        )
    return Complexity(
        effective_tier=inference.tier,
        source="inferred",
        inferred=inferred,
        signals=list(inference.signals),
    )
