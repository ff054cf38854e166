"""Where a router serves its wg(8) control socket, for the router and for `wgslirp peer`.

Two places, both served when possible:

- `/var/run/wireguard/WG_INTERFACE_NAME.sock`, where wg(8) and every userspace WireGuard
  look. Only root (or whoever was given that directory) can create it, so an unprivileged
  router (the systemd unit's DynamicUser, the container's user 10001) has none.
- `$WGSLIRP_STATE_DIR/wg.sock`, always. The state directory is the one place every
  router can write, and it belongs to exactly one router: the one whose keys and
  peers.json live there. The standard path is keyed by the interface name alone, which
  two routers on a host can share (the default `wgslirp0`); the second cannot serve it,
  and a `peer` command following that name would change the first router instead.

So `wgslirp peer` tries the state directory first and the standard path second (a router
of an older version, or one whose state-directory socket could not be made, e.g. a path
too long for AF_UNIX). Serving the state-directory socket only when the standard one is
unusable was the alternative; it saves one listener but makes "where is my router?"
depend on privileges, and leaves the shared-name case above wrong. The name is fixed
(`wg.sock`) because the directory already says which router it is.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STANDARD_DIR", "STATE_SOCKET", "candidates", "standard_path", "state_path"]

STANDARD_DIR = Path("/var/run/wireguard")
STATE_SOCKET = "wg.sock"


def standard_path(interface: str, directory: Path = STANDARD_DIR) -> Path:
    return directory / f"{interface}.sock"


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_SOCKET


def candidates(interface: str, state_dir: str | Path, directory: Path = STANDARD_DIR) -> list[Path]:
    """Where a `peer` command looks for its router, in order (see the module docstring)."""
    return [state_path(state_dir), standard_path(interface, directory)]
