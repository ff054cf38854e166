"""Peer names: what `peer add NAME` accepts.

A name is typed on command lines, shown in tables and logs and may become a file name
(`--output NAME.conf`), so it is kept to a portable, shell-safe alphabet, starts with a
letter or digit (never "-", which a command line would read as an option, nor "."), and
is unique regardless of case: "Phone" and "phone" are one device to a person.
"""

from __future__ import annotations

import re

from wgslirp.onboard.errors import PeerError

__all__ = ["MAX_NAME", "BadName", "name_key", "validate_name"]

MAX_NAME = 32
_ALLOWED = re.compile(r"[A-Za-z0-9._-]", re.ASCII)


class BadName(PeerError):
    """A name `peer add` refuses; the message says which rule it broke."""


def validate_name(name: str) -> str:
    """Return `name` unchanged if it is a valid peer name, else raise BadName."""
    if not name:
        raise BadName("a peer name cannot be empty")
    if len(name) > MAX_NAME:
        raise BadName(f"{name[:MAX_NAME]!r}... is {len(name)} characters; at most {MAX_NAME}")
    bad = next((c for c in name if not _ALLOWED.fullmatch(c)), None)
    if bad is not None:
        raise BadName(f"{name!r} contains {bad!r}; use letters, digits, '.', '_' and '-' only")
    if not name[0].isalnum():
        raise BadName(f"{name!r} must start with a letter or a digit")
    return name


def name_key(name: str) -> str:
    """What two names are compared by (case-insensitively)."""
    return name.casefold()
