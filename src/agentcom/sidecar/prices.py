"""The price table: US dollars per million tokens, in one place.

Claude runs are priced at their model's rates; Ollama runs cost nothing
(``estimated_cost_usd`` 0) and report what the same tokens would have cost on
:data:`EQUIVALENT_CLAUDE_MODEL` (``equivalent_claude_cost_usd``), so the dashboard can show
what running locally saved. A model missing from the table has no known price: its cost is
left out of the report rather than reported as zero.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EQUIVALENT_CLAUDE_MODEL", "PRICES", "Price", "claude_cost_usd", "normalise", "price_of"]


class Price(NamedTuple):
    """Dollars per million tokens."""

    input: float
    output: float


PRICES: dict[str, Price] = {
    # Matched by prefix, longest first, after normalising "4.5" to "4-5": a dated id
    # ("claude-sonnet-4-5-20250929") is priced as its family.
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-haiku": Price(0.25, 1.25),
}
"""Model id prefix → price. The hub's default Claude model is ``claude-sonnet-4.5``."""

EQUIVALENT_CLAUDE_MODEL = "claude-sonnet-4-5"
"""The model a local run is compared with."""

_BY_LENGTH = sorted(PRICES, key=len, reverse=True)


def normalise(model: str) -> str:
    """``Claude-Sonnet-4.5`` → ``claude-sonnet-4-5`` (the API's alias spelling)."""
    return model.strip().lower().replace(".", "-")


def price_of(model: str) -> Price | None:
    """The price of ``model``, or None when the table does not know it."""
    name = normalise(model)
    for prefix in _BY_LENGTH:
        if name.startswith(prefix):
            return PRICES[prefix]
    return None


def claude_cost_usd(model: str, tokens_in: int, tokens_out: int) -> float | None:
    """What ``tokens_in`` + ``tokens_out`` cost on ``model`` (None: price unknown)."""
    price = price_of(model)
    if price is None:
        return None
    return round((tokens_in * price.input + tokens_out * price.output) / 1_000_000, 8)
