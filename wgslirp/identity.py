"""The router's persistent identity for zero-config starts.

Running ``wgslirp`` with no settings at all should give a working tunnel: a
server key and one client key are created once in the state directory and
reused on every later start, so a client configured from the printed wg-quick
file keeps working across restarts. The files are plain ``wg genkey`` text so
an operator can inspect, back up or replace them with the usual tools.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Callable

import msgspec

from wgslirp.config import Config, ConfigError, PeerConfig
from wgslirp.keys import decode_key, encode_key, generate_private_key, public_key
from wgslirp.ownership import give_to_owner, trusted_owner

__all__ = [
    "CLIENT_KEY_FILE",
    "EMBEDDED_CLIENT_ADDRESS",
    "EMBEDDED_GATEWAY_IP",
    "SERVER_KEY_FILE",
    "client_config_text",
    "ensure_default_identity",
    "ensure_state_dir",
    "first_host_ipv4",
    "load_or_create_key",
    "read_client_private_key",
]

SERVER_KEY_FILE = "server.key"
CLIENT_KEY_FILE = "client.key"
EMBEDDED_CLIENT_ADDRESS = "10.77.0.2/32"
EMBEDDED_GATEWAY_IP = "10.77.0.1"
# The generated client gets an IPv6 tunnel address too, always, whether the host has IPv6 or
# not: a client whose AllowedIPs leave out ::/0 sends its IPv6 traffic around the tunnel
# (the classic VPN leak), while one that tunnels it and meets a host without IPv6 gets a
# quick ICMPv6 unreachable from the router and falls back to IPv4 (RFC 8305).
EMBEDDED_CLIENT_ADDRESS6 = "fd77::2/128"
EMBEDDED_GATEWAY_IP6 = "fd77::1"
_SETTING = "WGSLIRP_STATE_DIR"
log = logging.getLogger("wgslirp.identity")


def ensure_state_dir(path: str) -> None:
    """Create the state directory (0700) if needed; refuse one others could write in."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(_SETTING, f"cannot create {path}: {e.strerror or e}") from None
    if not os.path.isdir(path):
        raise ConfigError(_SETTING, f"{path} is not a directory")
    st = os.stat(path)
    if st.st_mode & 0o022:
        # It holds private keys; where others may create or rename files, a key could be
        # swapped. Refused, not "fixed": it may be a shared directory such as /tmp.
        raise ConfigError(
            _SETTING,
            f"{path} is writable by group or others (mode "
            f"{st.st_mode & 0o7777:o}); use a private directory (mode 0700)",
        )
    if st.st_mode & 0o077:
        log.warning(
            "%s: state directory is readable by others (mode %o); 0700 is safer",
            path,
            st.st_mode & 0o777,
        )


def _read_key(path: str) -> bytes | None:
    """Read a key file, refusing one that others could have read or swapped.

    A leaked router key lets anyone impersonate the router, so a key that was
    ever readable by group or others is treated as a configuration error
    (like ssh does) rather than silently used.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(_SETTING, f"cannot read {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(_SETTING, f"{path} is not a regular file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise ConfigError(
                _SETTING,
                f"{path} is accessible by group or others (mode {mode:04o}); "
                f"run `chmod 600 {path}` if the key is still secret",
            )
        if not trusted_owner(st.st_uid, os.path.dirname(path) or "."):
            raise ConfigError(_SETTING, f"{path} is owned by another user (uid {st.st_uid})")
        text = fh.read(4096)
    try:
        return decode_key(text, _SETTING)
    except ConfigError as e:
        raise ConfigError(_SETTING, f"{path} does not hold a valid key: {e.problem}") from None


def _write_new_key(path: str) -> None:
    """Publish a complete key file atomically; lose gracefully to a concurrent writer.

    The key is written to a private temporary file and hard-linked into place,
    so another wgslirp starting at the same moment never reads a half-written
    file, and whichever process links first wins.
    """
    directory = os.path.dirname(path) or "."
    text = encode_key(generate_private_key()) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".key-", dir=directory)
    except OSError as e:
        raise ConfigError(_SETTING, f"cannot write in {directory}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            os.fchmod(fh.fileno(), 0o600)
            give_to_owner(fh.fileno(), directory)  # root in the service's directory
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        except OSError:
            # Some filesystems have no hard links; exclusive create is the next best.
            _write_exclusive(path, text)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_exclusive(path: str, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise ConfigError(_SETTING, f"cannot create {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        give_to_owner(fh.fileno(), os.path.dirname(path) or ".")
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def load_or_create_key(state_dir: str, name: str) -> bytes:
    """Return the private key stored as ``name`` in ``state_dir``, creating it once."""
    ensure_state_dir(state_dir)
    path = os.path.join(state_dir, name)
    key = _read_key(path)
    if key is None:
        _write_new_key(path)
        key = _read_key(path)
        if key is None:
            raise ConfigError(_SETTING, f"{path} vanished right after it was created")
    return key


def ensure_default_identity(cfg: Config) -> Config:
    """Fill in the stored identity when no private key was configured.

    The generated client (and the 10.77.0.1 host alias that comes with it) is
    only added when no peers are configured: once an operator lists their own
    peers, exposing the host's loopback services to them must be an explicit
    choice via WG_GATEWAY_IP, not a side effect of omitting WG_PRIVATE_KEY.
    """
    if cfg.private_key is not None:
        return cfg
    server = load_or_create_key(cfg.state_dir, SERVER_KEY_FILE)
    server_pub = public_key(server)
    for i, peer in enumerate(cfg.peers):
        if peer.public_key == server_pub:
            raise ConfigError(
                _SETTING,
                f"the public key of {SERVER_KEY_FILE} is also configured as peer {i + 1}",
            )
    if cfg.peers:
        return msgspec.structs.replace(cfg, private_key=server)

    client = load_or_create_key(cfg.state_dir, CLIENT_KEY_FILE)
    peer = PeerConfig(
        public_key=public_key(client),
        allowed_ips=(EMBEDDED_CLIENT_ADDRESS, EMBEDDED_CLIENT_ADDRESS6),
    )
    gateway = cfg.gateway_ip
    if gateway is None and cfg.dns_ip != EMBEDDED_GATEWAY_IP:
        gateway = EMBEDDED_GATEWAY_IP
    gateway6 = cfg.gateway_ip6
    if gateway6 is None and cfg.dns_ip6 != EMBEDDED_GATEWAY_IP6:
        gateway6 = EMBEDDED_GATEWAY_IP6
    return msgspec.structs.replace(
        cfg, private_key=server, peers=(peer,), gateway_ip=gateway, gateway_ip6=gateway6
    )


def read_client_private_key(cfg: Config | str) -> bytes | None:
    """The generated client's private key, or None if there is none (yet).

    Accepts a Config or a state directory path; never creates anything, so
    printing a client config cannot change the router's state.
    """
    state_dir = cfg.state_dir if isinstance(cfg, Config) else cfg
    return _read_key(os.path.join(state_dir, CLIENT_KEY_FILE))


def first_host_ipv4() -> str:
    """Best guess at an address clients can reach, without sending any packet.

    Only the host's own name is looked up; connecting a UDP socket to learn the
    default route's source address would be more accurate but touches the
    network, which a config printer must not do.
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except (OSError, UnicodeError):
        return "127.0.0.1"
    for info in infos:
        addr = str(info[4][0])
        if not ipaddress.IPv4Address(addr).is_loopback:
            return addr
    return "127.0.0.1"


def _endpoint(cfg: Config, local_ipv4: Callable[[], str]) -> str:
    if cfg.public_endpoint:
        return cfg.public_endpoint
    host = cfg.listen_addr if cfg.listen_addr not in ("0.0.0.0", "::") else local_ipv4()
    return f"[{host}]:{cfg.listen_port}" if ":" in host else f"{host}:{cfg.listen_port}"


def client_config_text(
    cfg: Config,
    client_private_key: bytes | None,
    *,
    peer_index: int = 0,
    local_ipv4: Callable[[], str] = first_host_ipv4,
) -> str:
    """A wg-quick file for peer ``peer_index`` that tunnels all its IPv4 traffic, and all
    its IPv6 traffic when the peer has an IPv6 tunnel address.

    A ``client_private_key`` that does not belong to that peer (for example a
    client.key left from an earlier zero-config run after peers were
    configured) is not written, because the client would fail the handshake
    with it; a placeholder comment is written instead.
    """
    if cfg.private_key is None:
        raise ConfigError("WG_PRIVATE_KEY", "no router key yet, so no client config can name it")
    if not cfg.peers:
        raise ConfigError("WG_PEERS", "no peer is configured to write a client config for")
    if not 0 <= peer_index < len(cfg.peers):
        raise ConfigError("WG_PEERS", f"there is no peer number {peer_index}")
    peer = cfg.peers[peer_index]
    if client_private_key is not None and public_key(client_private_key) != peer.public_key:
        client_private_key = None

    lines = ["[Interface]"]
    if client_private_key is not None:
        lines.append(f"PrivateKey = {encode_key(client_private_key)}")
    else:
        lines.append(
            f"# PrivateKey = <the private key whose public key is {encode_key(peer.public_key)}>"
        )
    # One address per family: the first prefix of each, when it is a single address.
    v4 = [c for c in peer.allowed_ips if ":" not in c]
    v6 = [c for c in peer.allowed_ips if ":" in c]
    hosts = [f[0] for f, full in ((v4, "/32"), (v6, "/128")) if f and f[0].endswith(full)]
    first = peer.allowed_ips[0] if peer.allowed_ips else None
    if hosts:
        lines.append(f"Address = {', '.join(hosts)}")
    elif first is not None:
        lines.append(f"# Address = <an address in {first}>")
    else:
        lines.append("# Address = <none: this peer has no AllowedIPs on the router>")
    dns = [a for a in (cfg.dns_ip, cfg.dns_ip6) if a is not None]
    if dns:
        lines.append(f"DNS = {', '.join(dns)}")
    lines.append(f"MTU = {cfg.mtu}")
    lines += ["", "[Peer]", f"PublicKey = {encode_key(public_key(cfg.private_key))}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {encode_key(peer.preshared_key)}")
    lines += [
        f"Endpoint = {_endpoint(cfg, local_ipv4)}",
        "AllowedIPs = 0.0.0.0/0, ::/0"
        if any(":" in c for c in peer.allowed_ips)
        else "AllowedIPs = 0.0.0.0/0",
        "PersistentKeepalive = 25",
    ]
    return "\n".join(lines) + "\n"
