"""agentcom: a hub that coordinates AI-agent sidecars over WebSocket."""

__all__ = ["__version__"]

__version__ = "0.1.0"
