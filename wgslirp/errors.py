"""The one exception a user's settings can cause, shared below and above the config package.

It lives outside ``wgslirp.config`` because key decoding (``wgslirp.keys``) raises it too
and the config package imports ``keys``; a leaf module lets both raise the same error
without either importing the other at run time.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A setting the router cannot run with.

    ``setting`` names what the user wrote (an environment variable, or a file,
    section and key) so the one-line message tells them exactly what to change.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(setting, problem)
        self.setting = setting
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.setting}: {self.problem}"
