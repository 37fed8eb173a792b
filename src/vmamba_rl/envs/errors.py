"""Errors environments raise that the training loop knows how to survive."""

from __future__ import annotations


class SimulatorConnectionError(ConnectionError):
    """An external simulator stopped answering, dropped the connection or sent malformed data.

    The training loop discards the broken episode from replay, keeps its last checkpoint, and either
    reconnects (``env.unwrapped.reconnect()``, bounded retries with backoff) or stops cleanly.
    """
