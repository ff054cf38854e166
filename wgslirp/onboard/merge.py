"""The stored peers joined to the configured ones, at every router start and reload.

Precedence is by addition, not override: the environment and `--config` say which peers
are configured (WG_PEERS replacing the file's [Peer] list, as before), the zero-config
client is added when neither lists any, and the peers file adds its clients to that.
Nothing is silently shadowed: a stored peer whose public key or address is also
configured elsewhere stops the start with an error naming both places, because either
choice would cut one client off without a word.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import msgspec

from wgslirp.config import Config, ConfigError, PeerConfig
from wgslirp.keys import encode_key, public_key
from wgslirp.onboard.store import StoredPeer, peers_path, read_peers

__all__ = [
    "EMBEDDED_LABEL",
    "labels_for",
    "merge_stored",
    "taken_addresses",
    "with_stored_peers",
]

EMBEDDED_LABEL = "the zero-config client (client.key)"


def labels_for(cfg: Config, labels: Sequence[str]) -> list[str]:
    """Where each of `cfg`'s peers came from; a peer beyond `labels` (what the loader
    reported) is the zero-config client that `ensure_default_identity` added."""
    return [labels[i] if i < len(labels) else EMBEDDED_LABEL for i in range(len(cfg.peers))]


def taken_addresses(cfg: Config) -> list[str]:
    """Every tunnel address a new client must not get: the peers' AllowedIPs and the
    router's own gateway and DNS addresses."""
    out = [c for p in cfg.peers for c in p.allowed_ips]
    out += [f"{a}/32" for a in (cfg.gateway_ip, cfg.dns_ip) if a is not None]
    return out


def as_peer_config(p: StoredPeer) -> PeerConfig:
    return PeerConfig(
        public_key=p.public_key, preshared_key=p.preshared_key, allowed_ips=(p.address,)
    )


def check_clashes(cfg: Config, labels: Sequence[str], p: StoredPeer, where: str) -> None:
    """Raise ConfigError if `p` cannot join `cfg`'s peers; the message names both sides."""
    setting = f"{where} peer {p.name!r}"
    if cfg.private_key is not None and p.public_key == public_key(cfg.private_key):
        raise ConfigError(setting, "has the router's own public key")
    addr = ipaddress.IPv4Network(p.address)
    for label, peer in zip(labels_for(cfg, labels), cfg.peers, strict=True):
        if peer.public_key == p.public_key:
            raise ConfigError(
                setting, f"public key {encode_key(p.public_key)} is also configured as {label}"
            )
        for cidr in peer.allowed_ips:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == 4 and addr.overlaps(net):
                raise ConfigError(
                    setting, f"address {p.address} is inside {label}'s AllowedIPs {cidr}"
                )
    for name, value in (("WG_GATEWAY_IP", cfg.gateway_ip), ("WG_DNS_IP", cfg.dns_ip)):
        if value is not None and p.address == f"{value}/32":
            raise ConfigError(setting, f"address {p.address} is the router's {name}")


def merge_stored(
    cfg: Config, labels: Sequence[str], stored: Sequence[StoredPeer], where: str
) -> Config:
    """`cfg` with the stored peers appended after the configured ones; ConfigError (exit 2
    at start, a refused reload at run time) on any clash. `where` names the peers file."""
    for p in stored:
        check_clashes(cfg, labels, p, where)
    if not stored:
        return cfg
    return msgspec.structs.replace(cfg, peers=(*cfg.peers, *(as_peer_config(p) for p in stored)))


def with_stored_peers(cfg: Config, labels: Sequence[str]) -> Config:
    """The router's view of its peers: `cfg` plus the peers file of its state directory."""
    return merge_stored(cfg, labels, read_peers(cfg.state_dir), peers_path(cfg.state_dir))
