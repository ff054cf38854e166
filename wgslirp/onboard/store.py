"""The peers file: `$WGSLIRP_STATE_DIR/peers.json`, the clients `wgslirp peer add` made.

JSON (msgspec, strictly typed) rather than wg-quick text: each record has a name, a
creation time and, with `--keep-key`, the client's private key, none of which a [Peer]
section can hold, and a strict decoder turns a hand edit gone wrong into an error naming
the file and field instead of a peer that silently vanished. Keys are base64 text, as
`wg` prints them.

Writes are atomic and serialized. A change is made under an exclusive lock
(`peers.lock`, flock), written in full to `peers.json.tmp`, fsynced, renamed over
`peers.json` and the directory fsynced: a crash or a full disk at any point leaves the
old file or the new one, never a mix, and two `peer add` at once cannot lose either. The
temporary name is fixed because the lock serializes writers; a file left by a crash is
simply overwritten by the next write. Everything is mode 0600: the file holds preshared
keys and perhaps private keys, and is refused (like ssh refuses a key) if group or others
can read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Annotated

import msgspec

from wgslirp.errors import ConfigError
from wgslirp.onboard.names import BadName, name_key, validate_name
from wgslirp.ownership import give_to_owner, trusted_owner

__all__ = [
    "LOCK_FILE",
    "MAX_PEERS_FILE",
    "PEERS_FILE",
    "StoredPeer",
    "locked",
    "peers_path",
    "read_peers",
    "write_peers",
]

PEERS_FILE = "peers.json"
LOCK_FILE = "peers.lock"
TMP_SUFFIX = ".tmp"
MAX_PEERS_FILE = 16 << 20  # ~40,000 peers; beyond it the file is not ours
FORMAT_VERSION = 1

Key = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class StoredPeer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One client added by `peer add`."""

    name: str
    public_key: Key
    address: str  # one IPv4 address as a /32, its AllowedIPs on the router
    preshared_key: Key | None = None
    private_key: Key | None = None  # only with --keep-key
    created: str = ""  # ISO 8601, UTC


class _File(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: int = FORMAT_VERSION
    peers: list[StoredPeer] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_File)


def peers_path(state_dir: str) -> str:
    return os.path.join(state_dir, PEERS_FILE)


@contextlib.contextmanager
def locked(state_dir: str) -> Iterator[None]:
    """Hold the peers file's lock: a read-modify-write inside is not interleaved with
    another `wgslirp peer` command's."""
    path = os.path.join(state_dir, LOCK_FILE)
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = os.open(path, flags)
        else:
            try:
                give_to_owner(fd, state_dir)  # root in the service's directory
            except OSError:
                os.close(fd)
                raise
    except OSError as e:
        raise ConfigError("WGSLIRP_STATE_DIR", f"cannot open {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_peers(state_dir: str) -> tuple[StoredPeer, ...]:
    """The stored peers, validated (names, addresses, no duplicates); () if there is no
    file yet. Raises ConfigError naming the file for anything wrong with it."""
    path = peers_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                path,
                f"is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); it "
                f"holds preshared keys: run `chmod 600 {path}` if they are still secret",
            )
        if not trusted_owner(st.st_uid, state_dir):
            raise ConfigError(path, f"is owned by another user (uid {st.st_uid})")
        data = fh.read(MAX_PEERS_FILE + 1)
    if len(data) > MAX_PEERS_FILE:
        raise ConfigError(path, f"larger than {MAX_PEERS_FILE >> 20} MiB")
    try:
        doc = _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ConfigError(path, f"not a valid peers file: {e}") from None
    if doc.version != FORMAT_VERSION:
        raise ConfigError(
            path, f"format version {doc.version}; this wgslirp reads {FORMAT_VERSION}"
        )
    check_peers(doc.peers, path)
    return tuple(doc.peers)


def check_peers(peers: Sequence[StoredPeer], where: str) -> None:
    """The rules every stored peer list keeps: valid names and /32 IPv4 addresses, and no
    name (in any case), public key or address twice."""
    names: dict[str, str] = {}
    keys: dict[bytes, str] = {}
    addrs: dict[str, str] = {}
    for p in peers:
        try:
            validate_name(p.name)
        except BadName as e:
            raise ConfigError(where, f"peer name {e}") from None
        label = f"peer {p.name!r}"
        try:
            net = ipaddress.IPv4Network(p.address)
        except ValueError:
            raise ConfigError(where, f"{label}: address {p.address!r} is not IPv4") from None
        if net.prefixlen != 32 or str(net) != p.address:
            raise ConfigError(where, f"{label}: address {p.address!r} is not one a.b.c.d/32")
        for seen, value in ((names, name_key(p.name)), (addrs, p.address)):
            if value in seen:
                raise ConfigError(where, f"{label} has the same name or address as {seen[value]}")
            seen[value] = label
        if p.public_key in keys:
            raise ConfigError(where, f"{label} has the same public key as {keys[p.public_key]}")
        keys[p.public_key] = label


def write_peers(state_dir: str, peers: Sequence[StoredPeer]) -> None:
    """Replace the peers file atomically (see the module docstring); call under `locked`."""
    path = peers_path(state_dir)
    check_peers(peers, path)
    data = _encoder.encode(_File(peers=list(peers)))
    tmp = path + TMP_SUFFIX
    # a fresh file every time (a crash's leftover is removed first): never truncating or
    # chowning an inode someone linked here
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    except OSError as e:
        raise ConfigError(path, f"cannot write {tmp}: {e.strerror or e}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            give_to_owner(fd, state_dir)  # root in the service's directory
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(
            path, f"cannot write: {e.strerror or e}; the old file is unchanged"
        ) from None
    _fsync_dir(state_dir)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable: without it a power cut can bring back the old file."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
