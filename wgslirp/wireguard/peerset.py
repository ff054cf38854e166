"""Peer-set updates: the one place the running peer set changes.

Two entry points change peers while the router runs: `wg set`/`wg syncconf` through the
UAPI socket (wireguard/uapi.py parses the text into a `SetRequest`) and a configuration
reload (SIGHUP). Both reduce to the same `SetRequest` and go through `apply_set`, so a peer
updated by a reload and one updated by `wg set` end in the same state, removals close the
same flows, and there is one set of rules to test. `sync_request` is `wg syncconf`'s
difference between the running device and a wanted peer list: only what differs is asked,
so the change lines name real changes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from wgslirp.net.prefix import normalize_cidr
from wgslirp.wireguard.crypto import CryptoError
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.peer import Addr

_ZERO_KEY = bytes(32)


class PeerSetError(ValueError):
    """A change that could not be applied (a peer key that fails Diffie-Hellman)."""


class PeerSpec(Protocol):
    """A configured peer as the configuration layer describes it (config.PeerConfig)."""

    @property
    def public_key(self) -> bytes: ...
    @property
    def preshared_key(self) -> bytes | None: ...
    @property
    def allowed_ips(self) -> tuple[str, ...]: ...
    @property
    def endpoint(self) -> tuple[str, int] | None: ...
    @property
    def keepalive(self) -> int: ...


@dataclass
class PeerChange:
    """One `public_key=` section of a `set`, reduced to what applying it must do.

    Line order inside a section only matters for allowed IPs (`replace_allowed_ips` forgets
    what came before it; `-cidr` removes), so those keep their order.
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Addr | None = None
    keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[tuple[str, bool]] = field(default_factory=list)  # (cidr, remove it)


@dataclass
class SetRequest:
    private_key: bytes | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def apply_set(device: Device, req: SetRequest, *, now: float) -> list[str]:
    """Apply a parsed `set`; returns one line per change for the operator's log.

    Removing a peer drops its sessions and its allowed IPs at once (Device.remove_peer), so
    it is cut off from the next datagram on; packets of its already queued in the rings
    carry an index that no longer resolves and are dropped by ingress. A new peer can
    complete a handshake as soon as this returns. Sections naming the device's own public
    key are skipped, as wireguard-go does.
    """
    changes: list[str] = []
    if req.private_key is not None and req.private_key != device.identity.private_bytes:
        before = set(device.peers)
        device.set_private_key(req.private_key)
        changes.append(f"private key replaced; public key now {_short(device.public_key)}")
        changes.extend(
            f"peer {_short(k)} removed (it had the new device public key)"
            for k in before - set(device.peers)
        )
    if req.replace_peers:
        for key in list(device.peers):
            device.remove_peer(key)
            changes.append(f"peer {_short(key)} removed (replace_peers)")
    for pc in req.peers:
        if pc.public_key == device.public_key:
            continue
        peer = device.peers.get(pc.public_key)
        if pc.remove:
            if peer is not None:
                device.remove_peer(pc.public_key)
                changes.append(f"peer {_short(pc.public_key)} removed")
            continue
        if peer is None:
            if pc.update_only:
                continue
            try:
                peer = device.add_peer(
                    pc.public_key,
                    preshared_key=pc.preshared_key,
                    endpoint=pc.endpoint,
                    keepalive=pc.keepalive or 0,
                    now=now,
                )
            except (ValueError, CryptoError) as exc:
                raise PeerSetError(f"cannot add peer: {exc}") from exc
            changes.append(f"peer {_short(pc.public_key)} added")
        else:
            if pc.preshared_key is not None:
                peer.handshake.psk = pc.preshared_key
            if pc.endpoint is not None:
                peer.endpoint = pc.endpoint
            if pc.keepalive is not None and pc.keepalive != peer.keepalive:
                device.set_keepalive(peer, pc.keepalive, now)
            changes.append(f"peer {_short(pc.public_key)} updated")
        if pc.replace_allowed_ips:
            device.allowed.remove_owner(peer)
        for cidr, remove in pc.allowed_ips:
            if not remove:
                device.allowed.insert(cidr, peer)
            elif cidr in device.allowed.prefixes_of(peer):
                device.allowed.remove(cidr)  # only a prefix this peer owns
    return changes


def _short(key: bytes) -> str:
    """Operators know peers by their base64 public key, as wg(8) prints it."""
    return base64.b64encode(key).decode()


def add_configured(
    device: Device, peers: Iterable[PeerSpec], known: Mapping[bytes, int], now: float
) -> None:
    """Add the configured peers at start. `known` are the numbers a previous ingress gave
    its peers; they are taken first, so a new peer cannot take one of them."""
    peers = list(peers)
    for p in sorted(peers, key=lambda p: p.public_key not in known):
        device.add_peer(
            p.public_key,
            preshared_key=p.preshared_key,
            allowed_ips=p.allowed_ips,
            endpoint=p.endpoint,
            keepalive=p.keepalive,
            now=now,
            index=known.get(p.public_key),
        )


def sync_request(
    device: Device, private_key: bytes | None, peers: Iterable[PeerSpec]
) -> SetRequest:
    """What `wg syncconf` would ask to turn the running device into this configuration:
    peers not wanted are removed, new ones added, and for the others only what differs
    (allowed IPs as a whole, preshared key, a configured endpoint, keepalive). A peer
    without a configured endpoint keeps the one it roamed to."""
    req = SetRequest()
    if private_key is not None and private_key != device.identity.private_bytes:
        req.private_key = private_key
    wanted = {p.public_key: p for p in peers}
    req.peers.extend(PeerChange(k, remove=True) for k in device.peers if k not in wanted)
    for key, spec in wanted.items():
        peer = device.peers.get(key)
        psk = spec.preshared_key or _ZERO_KEY
        cidrs = [(_normal(c), False) for c in spec.allowed_ips]
        if peer is None:
            req.peers.append(
                PeerChange(
                    key,
                    preshared_key=spec.preshared_key,
                    endpoint=spec.endpoint,
                    keepalive=spec.keepalive,
                    replace_allowed_ips=True,
                    allowed_ips=cidrs,
                )
            )
            continue
        change = PeerChange(key, update_only=True)
        if sorted(device.allowed.prefixes_of(peer)) != sorted(c for c, _ in cidrs):
            change.replace_allowed_ips = True
            change.allowed_ips = cidrs
        if peer.handshake.psk != psk:
            change.preshared_key = psk
        if spec.endpoint is not None and peer.endpoint != spec.endpoint:
            change.endpoint = spec.endpoint
        if peer.keepalive != spec.keepalive:
            change.keepalive = spec.keepalive
        if change != PeerChange(key, update_only=True):
            req.peers.append(change)
    return req


def _normal(cidr: str) -> str:
    return normalize_cidr(cidr)
