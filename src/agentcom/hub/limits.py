"""Rate limiting and violation tracking: plain objects driven by an injected clock."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agentcom.hub.clock import Clock

__all__ = ["BucketSpec", "RateLimiter", "TokenBucket", "ViolationTracker"]


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A token bucket's shape: ``capacity`` frames, refilled at ``per_second``."""

    capacity: int
    per_second: float


class TokenBucket:
    """A classic token bucket; one token per frame."""

    __slots__ = ("_clock", "_spec", "_tokens", "_updated")

    def __init__(self, spec: BucketSpec, clock: Clock) -> None:
        self._spec = spec
        self._clock = clock
        self._tokens = float(spec.capacity)
        self._updated = clock.now_ms()

    def _refill(self) -> None:
        now = self._clock.now_ms()
        elapsed = now - self._updated
        if elapsed > 0:
            refill = elapsed * self._spec.per_second / 1000
            self._tokens = min(float(self._spec.capacity), self._tokens + refill)
            self._updated = now

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    @property
    def remaining(self) -> int:
        """Whole tokens left."""
        self._refill()
        return int(self._tokens)

    @property
    def capacity(self) -> int:
        """Tokens when full."""
        return self._spec.capacity

    def retry_after_ms(self) -> int:
        """Milliseconds until one token is available."""
        self._refill()
        missing = max(0.0, 1 - self._tokens)
        return int(missing * 1000 / self._spec.per_second) + 1


class RateLimiter:
    """Token buckets per tier for one connection.

    ``check(tier)`` returns ``"ok"``, ``"warn"`` (the bucket is at least 80% used;
    the frame is still handled) or ``"limited"`` (the frame must not be handled).
    """

    def __init__(self, specs: dict[str, BucketSpec], clock: Clock) -> None:
        self._buckets = {tier: TokenBucket(spec, clock) for tier, spec in specs.items()}

    def bucket(self, tier: str) -> TokenBucket:
        """The bucket of a tier."""
        return self._buckets[tier]

    def check(self, tier: str) -> str:
        """Spend one token of ``tier``."""
        bucket = self._buckets[tier]
        if not bucket.take():
            return "limited"
        if bucket.remaining <= bucket.capacity * 0.2:
            return "warn"
        return "ok"


class ViolationTracker:
    """Counts validation failures per connection and cooldowns per agent.

    Args:
        clock: time source.
        max_failures: failures within ``window_ms`` that close a connection.
        window_ms: the sliding window.
        cooldowns_ms: cooldown after the 1st, 2nd, 3rd and later closes of an agent.
        offence_memory_ms: an agent with no close for this long starts again at the first step.
    """

    def __init__(
        self,
        clock: Clock,
        max_failures: int = 10,
        window_ms: int = 60_000,
        cooldowns_ms: tuple[int, ...] = (30_000, 60_000, 300_000),
        offence_memory_ms: int = 3_600_000,
    ) -> None:
        self._clock = clock
        self._max_failures = max_failures
        self._window_ms = window_ms
        self._cooldowns_ms = cooldowns_ms
        self._offence_memory_ms = offence_memory_ms
        self._offences: dict[str, tuple[int, int]] = {}  # agent -> (count, until_ms)

    def new_window(self) -> deque[int]:
        """A per-connection failure log."""
        return deque(maxlen=self._max_failures)

    def record_failure(self, window: deque[int]) -> bool:
        """Record one failure; True when the connection must now be closed."""
        now = self._clock.now_ms()
        window.append(now)
        return len(window) >= self._max_failures and now - window[0] <= self._window_ms

    def punish(self, agent_id: str) -> int:
        """Start (or escalate) an agent's cooldown; returns its length in ms."""
        now = self._clock.now_ms()
        count, until = self._offences.get(agent_id, (0, 0))
        if now - until > self._offence_memory_ms:
            count = 0
        step = self._cooldowns_ms[min(count, len(self._cooldowns_ms) - 1)]
        self._offences[agent_id] = (count + 1, now + step)
        return step

    def cooldown_remaining_ms(self, agent_id: str) -> int:
        """Milliseconds the agent must still wait before identifying; 0 when free."""
        entry = self._offences.get(agent_id)
        if entry is None:
            return 0
        remaining = entry[1] - self._clock.now_ms()
        if remaining <= 0 and remaining < -self._offence_memory_ms:
            del self._offences[agent_id]
        return max(0, remaining)
