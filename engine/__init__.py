"""The real-time voice-call engine: supervisor, per-call logic and its configuration."""

__version__ = "0.1.0"
