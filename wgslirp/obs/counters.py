"""Counter sets: plain int attributes (one add per event on the hot path) that report
themselves as a dict for logs, exit lines and the shared metrics block."""

from __future__ import annotations

from typing import ClassVar


class Counters:
    """Subclasses declare their counters as `name: int` annotations; all start at 0."""

    prefix: ClassVar[str] = ""  # prepended to every name in as_dict()

    def __init__(self) -> None:
        for name in self.names():
            setattr(self, name, 0)

    @classmethod
    def names(cls) -> list[str]:
        return [n for n, t in cls.__annotations__.items() if t in ("int", int)]

    def as_dict(self) -> dict[str, int]:
        p = self.prefix
        return {p + name: getattr(self, name) for name in self.names()}
