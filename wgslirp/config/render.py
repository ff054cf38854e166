"""Showing a loaded configuration to a person, with secrets hidden.

Separate from :mod:`wgslirp.config.docs`, which describes the settings that *could*
be set: this module only ever sees a Config that loaded, so it is where redaction
lives, and it is the code path of both ``wgslirp check-config`` and
``python -m wgslirp.config``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from wgslirp.config.docs import render_markdown
from wgslirp.config.fields import CONFIG_FIELDS, EXTRAS, PEER_FIELDS, Field
from wgslirp.config.load import load_config_sourced
from wgslirp.config.schema import Config, ConfigError
from wgslirp.config.values import format_duration
from wgslirp.keys import encode_key, public_key

__all__ = [
    "EXIT_CONFIG",
    "REDACTED",
    "check_config",
    "main",
    "redacted",
    "render_check",
    "render_effective",
]

# A configuration the router cannot run with is a user error: exit status 2, as for bad usage.
EXIT_CONFIG = 2

REDACTED = "(redacted)"


def _plain(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return _redact(value)
    if isinstance(value, bytes):
        return encode_key(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _redact(obj: msgspec.Struct) -> dict[str, Any]:
    extras = EXTRAS[type(obj)]
    out: dict[str, Any] = {}
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if extras[name].get("secret"):
            out[name] = None if value is None else REDACTED
        else:
            out[name] = _plain(value)
    return out


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective settings as JSON-ready data, safe to paste into a bug report.

    Secrets become ``"(redacted)"``; the server's public key is added under
    ``server_public_key`` because that is what users need to configure clients.
    """
    out = _redact(cfg)
    out["server_public_key"] = (
        encode_key(public_key(cfg.private_key)) if cfg.private_key is not None else None
    )
    return out


def _env_text(f: Field, value: Any) -> str:
    if value is None:
        return ""
    if f.extra.get("secret"):
        return REDACTED
    if f.kind == "flag":
        return "1" if value else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if f.kind == "duration":
        return format_duration(value)
    if isinstance(value, bytes):
        return encode_key(value)
    if f.kind in ("hostport", "endpoint"):
        return f"[{value[0]}]:{value[1]}" if ":" in value[0] else f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def render_check(cfg: Config) -> str:
    """The effective settings as ``NAME=value`` lines in the names users set, which load
    back into the same Config: a starting point for an environment file."""
    lines = []
    if cfg.private_key is not None:
        lines.append(f"# server public key: {encode_key(public_key(cfg.private_key))}")
    for f in CONFIG_FIELDS:
        if f.kind == "peers":
            lines.append(f"WG_PEERS={','.join(str(i) for i in range(len(cfg.peers)))}")
            for i, peer in enumerate(cfg.peers):
                for pf in PEER_FIELDS:
                    name = pf.env.replace("<i>", str(i))
                    lines.append(f"{name}={_env_text(pf, _get(peer, pf.path))}")
            continue
        lines.append(f"{f.env}={_env_text(f, _get(cfg, f.path))}")
    return "\n".join(lines) + "\n"


def render_effective(cfg: Config) -> str:
    """The effective configuration as people and scripts read it: the redacted settings as
    sorted, indented JSON (scripts/bench_tcp.py reads its ``tcp`` object)."""
    return json.dumps(redacted(cfg), indent=2, sort_keys=True) + "\n"


def check_config(
    env: Mapping[str, str],
    config_file: str | None,
    *,
    resolve: Callable[[str], str] | None = None,
) -> int:
    """Print the effective configuration and return 0, or print the one-line error and
    return EXIT_CONFIG. ``wgslirp check-config`` and ``python -m wgslirp.config --check``
    both end here, so they cannot drift apart in output or exit status.

    The clients of the peers file (`wgslirp peer add`) are joined as the router joins
    them at start and reload, so a clash between them and the configured peers shows
    here first, with the same message naming both sides."""
    # imported here: the peers file is read with the config's own types, one layer up
    from wgslirp.config.forwards import check_config_forwards
    from wgslirp.onboard.merge import with_stored_peers

    try:
        cfg, labels = load_config_sourced(env, config_file, resolve=resolve)
        cfg = with_stored_peers(cfg, labels)
        if cfg.private_key is not None:  # zero-config: the client is only made at start
            check_config_forwards(cfg)
    except ConfigError as e:
        print(f"wgslirp: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(render_effective(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Regenerate the docs or check a configuration without starting the router."""
    parser = argparse.ArgumentParser(prog="python -m wgslirp.config")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    mode.add_argument(
        "--check", action="store_true", help="print the effective settings (as check-config)"
    )
    parser.add_argument("config_file", nargs="?", help="wg-quick file (with --check)")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
        return 0
    return check_config(os.environ, args.config_file)
