"""The wg-quick INI dialect, read strictly: sections and keys, nothing about their values.

Kept apart from the loader because the format's rules (which keys belong to which
section, which may repeat, what a malformed line is) are independent of what wgslirp
does with a value, and because a secret pasted into the wrong line must never reach an
error message: that care is easiest to check in one small module.
"""

from __future__ import annotations

import re

import msgspec

from wgslirp.config.schema import ConfigError

__all__ = ["WgSection", "parse_wg_quick"]


_INTERFACE_KEYS = {
    k.lower(): k
    for k in (
        "PrivateKey",
        "ListenPort",
        "MTU",
        # wgslirp's own: inbound port forwards (WG_FORWARD_TCP / WG_FORWARD_UDP)
        "ForwardTCP",
        "ForwardUDP",
        # wg-quick keys that configure the kernel side; accepted so an existing
        # wg0.conf loads unchanged, but they have no meaning for a user-space router.
        "Address",
        "DNS",
        "Table",
        "FwMark",
        "SaveConfig",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
    )
}
_PEER_KEYS = {
    k.lower(): k
    for k in ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
}
_REPEATABLE = frozenset({"AllowedIPs", "Address", "DNS", "ForwardTCP", "ForwardUDP"})


class WgSection(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[Interface]`` or ``[Peer]`` block of a wg-quick file, keys canonicalised."""

    kind: str
    label: str
    line: int
    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The value of a key given at most once per section, or None."""
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        """Every value of a repeatable key (AllowedIPs, Address, DNS) in file order."""
        return [v for k, v in self.entries if k == key]


def parse_wg_quick(text: str, source: str = "<string>") -> list[WgSection]:
    """Split wg-quick text into sections, rejecting anything wg-quick would not accept.

    Unknown keys are errors rather than ignored so that a misspelt
    ``AllowedIP`` does not silently leave a peer unroutable.
    """
    sections: list[WgSection] = []
    kind: str | None = None
    label = ""
    start = 0
    entries: list[tuple[str, str]] = []
    peer_count = 0

    def close() -> None:
        if kind is not None:
            sections.append(WgSection(kind=kind, label=label, line=start, entries=tuple(entries)))

    for lineno, full in enumerate(text.splitlines(), 1):
        line = full.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(where, f"malformed section header {line!r}")
            name = line[1:-1].strip().lower()
            close()
            entries = []
            start = lineno
            if name == "interface":
                if any(s.kind == "Interface" for s in sections):
                    raise ConfigError(where, "[Interface] appears more than once")
                kind, label = "Interface", "Interface"
            elif name == "peer":
                peer_count += 1
                kind, label = "Peer", f"Peer {peer_count}"
            else:
                raise ConfigError(where, f"unknown section {line} (expected [Interface] or [Peer])")
            continue
        if kind is None:
            raise ConfigError(where, "setting before the first [Interface] or [Peer] section")
        key, sep, value = line.partition("=")
        if not sep:
            # never echo the line: it may be a key with its "=" forgotten
            raise ConfigError(where, f"expected 'Key = Value' after {_key_name(line)}")
        key, value = key.strip(), value.strip()
        if not _KEY_NAME.fullmatch(key):  # "PrivateKey <base64>=": the "=" was the key's
            raise ConfigError(where, f"expected 'Key = Value' after {_key_name(key)}")
        known = _INTERFACE_KEYS if kind == "Interface" else _PEER_KEYS
        canon = known.get(key.lower())
        if canon is None:
            raise ConfigError(
                f"{source} [{label}] {_key_name(key)}",
                f"unknown key (expected one of {', '.join(known.values())})",
            )
        if canon not in _REPEATABLE and any(k == canon for k, _ in entries):
            raise ConfigError(f"{source} [{label}] {canon}", "given more than once")
        entries.append((canon, value))
    close()
    return sections


_KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}", re.ASCII)


def _key_name(text: str) -> str:
    """The setting name a bad line starts with, for an error message; a secret pasted in
    the wrong place ("PrivateKey: <base64>", "PrivateKey <base64>") must not be printed."""
    first = text.strip().split(None, 1)[0].rstrip(":") if text.strip() else ""
    return first if _KEY_NAME.fullmatch(first) else "a line that is not a setting"
