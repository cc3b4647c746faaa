"""The sidecar's settings: flags, then environment, then a TOML file, then defaults.

As the hub's :class:`agentcom.config.Settings`, :class:`SidecarConfig` is a
pydantic-settings model whose sources are ranked in that order; :func:`load` gives them
the flags, the environment and the file. Only four environment variables are read here
(``AGENTCOM_HUB_URL``, ``AGENTCOM_AGENT_ID``, ``AGENTCOM_AGENT_TOKEN``, as the demo
sidecar reads them, and ``AGENTCOM_CAFILE``, as the operator commands read it); the
Claude executor reads ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` itself, when a task
needs them. A TOML file names every other setting by its field name below; an unknown key
is an error, so a typo is never silently ignored.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agentcom.client import trusting
from agentcom.config import upper_cased
from agentcom.errors import AgentcomError
from agentcom.protocol.common import Tier

__all__ = ["ENVIRONMENT", "SidecarConfig", "SidecarConfigError", "default_state_dir", "load"]

ENVIRONMENT: dict[str, str] = {
    "hub_url": "AGENTCOM_HUB_URL",
    "agent_id": "AGENTCOM_AGENT_ID",
    "token": "AGENTCOM_AGENT_TOKEN",
    "cafile": "AGENTCOM_CAFILE",
}
"""Setting name → the environment variable that sets it (below flags, above the file)."""


class SidecarConfigError(AgentcomError):
    """The settings are missing, unreadable or invalid; the message says which."""


class _Environment(PydanticBaseSettingsSource):
    """The settings named by :data:`ENVIRONMENT` that ``environ`` sets (an empty variable
    counts as unset); no other variable is read."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = ENVIRONMENT.get(field_name)
        value = self.environ.get(variable) if variable is not None else None
        return value or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {
            name: self.get_field_value(field, name)[0]
            for name, field in self.settings_cls.model_fields.items()
        }
        return {name: value for name, value in found.items() if value is not None}


# What load() reads beside the flags: the environment and the TOML file's values. Unset,
# a SidecarConfig built directly holds the values it is given and the defaults only.
_LOADING: ContextVar[tuple[Mapping[str, str], dict[str, Any]] | None] = ContextVar(
    "agentcom_sidecar_loading", default=None
)


class SidecarConfig(BaseSettings):
    """Every setting of ``agentcom sidecar``, with its default and its behaviour at the limit."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=True)

    hub_url: str = Field(min_length=1, description="The hub's agent endpoint (ws:// or wss://).")
    agent_id: str = Field(min_length=1, max_length=128, description="This agent's id.")
    token: str = Field(min_length=1, max_length=256, description="Its agent token.")
    cafile: Path | None = Field(
        None, description="PEM certificates to trust for a wss:// hub (default the system's)."
    )
    name: str | None = Field(None, description="Display name (default the agent id).")
    capabilities: list[str] = Field(default_factory=list, description="Advertised capabilities.")
    ollama_url: str | None = Field(
        None, description="The local Ollama endpoint, announced to the hub and reported on."
    )
    state_dir: Path | None = Field(
        None, description="What must survive a crash (default: see default_state_dir)."
    )
    workdir: Path = Field(Path("."), description="Where shell tasks run.")
    log_format: Literal["text", "json"] = Field("text", description="One line per event.")
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(upper_cased)
    ] = Field("INFO", description="Python logging level (any case).")
    timeout_trivial_s: float = Field(
        600.0, gt=0, description="A trivial task running longer is killed and fails."
    )
    timeout_standard_s: float = Field(
        1800.0, gt=0, description="A standard task running longer is killed and fails."
    )
    timeout_complex_s: float = Field(
        3600.0, gt=0, description="A complex task running longer is killed and fails."
    )
    progress_interval_s: float = Field(
        0.25,
        ge=0,
        description="At most one task_progress frame per interval; output arriving "
        "meanwhile is coalesced into the next one.",
    )
    progress_keepalive_s: float = Field(
        60.0,
        gt=0,
        description="A silent run still sends a bare task_progress this often, so the hub "
        "does not reclaim it as stalled (it does after 5 minutes without progress).",
    )
    max_event_chars: int = Field(
        2000,
        ge=80,
        description="Text carried by one execution_event; output beyond it within one "
        "interval is not streamed (the event says how much was left out). The hub cuts "
        "longer texts anyway (its execution_event_max_text, 2000 by default).",
    )
    output_tail_chars: int = Field(
        8000,
        ge=80,
        le=150_000,
        description="The end of a command's output kept for the result; older output is "
        "dropped (it was streamed). At most 150,000, as max_answer_chars.",
    )
    stop_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM/SIGINT a running task has this long to finish; then it is "
        "killed and given back to the hub.",
    )
    heartbeat_s: float = Field(30.0, gt=0, description="Interval of ping frames.")
    report_interval_s: float = Field(30.0, gt=0, description="Interval of resource_report frames.")
    backoff_initial_s: float = Field(1.0, gt=0, description="First reconnect delay, doubled.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay.")
    wake_command: str | None = Field(
        None, description="Shell command run for a wake task (none: wake tasks fail)."
    )
    max_answer_chars: int = Field(
        100_000,
        ge=80,
        le=150_000,
        description="A model's answer is kept for the result up to this many characters; "
        "the rest is streamed but cut from the result (which then says output_cut). At "
        "most 150,000: escaped as JSON, that many characters stay under the hub's 1 MiB "
        "frame limit.",
    )
    claude_model: str = Field(
        "claude-sonnet-4-5",
        min_length=1,
        description="The Claude model used when the routing decision names none.",
    )
    claude_max_tokens: int = Field(
        4096, ge=1, description="max_tokens of a Claude Messages API request."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence of an Ollama or Claude stream before it fails."
    )
    dry_run: bool = Field(False, description="Accept and complete tasks without running them.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        loading = _LOADING.get()
        if loading is None:
            return (init_settings,)
        environ, in_file = loading
        # load() reads the file itself, so that a missing or broken one is an error that
        # says so; its values then rank below the environment's.
        file_settings = InitSettingsSource(settings_cls, init_kwargs=in_file)
        return init_settings, _Environment(settings_cls, environ), file_settings

    @field_validator("hub_url")
    @classmethod
    def _hub_url_is_a_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError("should be the hub's agent endpoint, like ws://HOST:4000/ws")
        if any(character.isspace() for character in value):
            raise ValueError("should contain no spaces")
        return value

    def timeout_for(self, tier: Tier | None) -> float:
        """The run time allowed to a task of ``tier`` (standard when unknown)."""
        if tier is Tier.trivial:
            return self.timeout_trivial_s
        if tier is Tier.complex:
            return self.timeout_complex_s
        return self.timeout_standard_s

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context trusting ``cafile`` (None: the system's certificates).

        Raises:
            SidecarConfigError: the file cannot be read or holds no certificate.
        """
        try:
            return trusting(None if self.cafile is None else str(self.cafile))
        except AgentcomError as exc:
            raise SidecarConfigError(str(exc)) from None

    def resolved_state_dir(self) -> Path:
        """The state directory: as configured, else :func:`default_state_dir`."""
        return self.state_dir or default_state_dir(self.agent_id)


def default_state_dir(agent_id: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/agentcom/sidecar/<agent_id>`` (``~/.local/state`` when unset)."""
    environ = os.environ if environ is None else environ
    home = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(home) / "agentcom" / "sidecar" / agent_id


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SidecarConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SidecarConfigError(f"{path} is not valid TOML: {exc}") from None


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'settings'}: {problem['msg']}"
        for problem in error.errors()
    )


def load(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SidecarConfig:
    """The settings from ``flags`` (None means not given), ``environ`` and ``config_file``.

    Raises:
        SidecarConfigError: the file cannot be read, or a setting is missing or invalid.
    """
    environ = os.environ if environ is None else environ
    in_file = _read_toml(config_file) if config_file else {}
    given = {name: value for name, value in flags.items() if value not in (None, [])}
    loading = _LOADING.set((environ, in_file))
    try:
        return SidecarConfig(**given)
    except ValidationError as exc:
        raise SidecarConfigError(_problems(exc)) from None
    finally:
        _LOADING.reset(loading)
