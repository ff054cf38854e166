"""The errors a `wgslirp peer` command reports as one line, with the exit status it means."""

from __future__ import annotations

__all__ = ["PeerError"]


class PeerError(Exception):
    """A request the peer commands refuse. `exit_code` 2 means the input was wrong (a bad
    or clashing name, an unknown peer), 1 that the request was fine but cannot be done
    (the pool is full, the router refused the change)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
