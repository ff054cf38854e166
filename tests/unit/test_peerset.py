"""Peer-set updates (wireguard/peerset.py): the configuration reload path, `sync_request`
followed by `apply_set`, against a real Device. The UAPI path through the same `apply_set`
is covered in test_uapi.py."""

from __future__ import annotations

from dataclasses import dataclass

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard import peerset
from wgslirp.wireguard.device import Device


@dataclass(frozen=True)
class Spec:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: tuple[str, ...] = ()
    endpoint: tuple[str, int] | None = None
    keepalive: int = 0


def key() -> bytes:
    return public_key(generate_private_key())


def sync(dev: Device, peers: list[Spec], private_key: bytes | None = None) -> list[str]:
    req = peerset.sync_request(dev, private_key, peers)
    return peerset.apply_set(dev, req, now=5.0)


def state(dev: Device) -> dict[bytes, tuple[object, ...]]:
    return {
        k: (
            tuple(sorted(dev.allowed.prefixes_of(p))),
            p.handshake.psk,
            p.endpoint,
            p.keepalive,
        )
        for k, p in dev.peers.items()
    }


def test_sync_turns_the_device_into_the_configuration() -> None:
    dev = Device(generate_private_key())
    a, b, c = key(), key(), key()
    psk = bytes(range(32))
    sync(dev, [Spec(a, allowed_ips=("10.77.0.2/32",)), Spec(b, allowed_ips=("10.77.0.3/32",))])
    wanted = [
        Spec(a, psk, ("10.77.0.2/32", "10.88.0.0/16"), ("127.0.0.1", 4000), 25),
        Spec(c, None, ("10.77.0.4/32",)),
    ]
    sync(dev, wanted)
    assert state(dev) == {
        a: (("10.77.0.2/32", "10.88.0.0/16"), psk, ("127.0.0.1", 4000), 25),
        c: (("10.77.0.4/32",), bytes(32), None, 0),
    }
    assert dev.route(int.from_bytes(bytes([10, 88, 1, 1]), "big")) is dev.peers[a]


def test_sync_of_an_unchanged_configuration_asks_for_nothing() -> None:
    dev = Device(generate_private_key())
    spec = [Spec(key(), bytes(32), ("10.77.0.2/32", "10.9.0.0/24"), ("127.0.0.1", 1), 5)]
    sync(dev, spec)
    req = peerset.sync_request(dev, None, spec)
    assert req.peers == [] and req.private_key is None
    # Unnormalised CIDRs (host bits set) name the same prefix: still nothing to do.
    same = [Spec(spec[0].public_key, None, ("10.9.0.7/24", "10.77.0.2/32"), ("127.0.0.1", 1), 5)]
    assert peerset.sync_request(dev, None, same).peers == []


def test_a_peer_without_a_configured_endpoint_keeps_the_one_it_roamed_to() -> None:
    dev = Device(generate_private_key())
    k = key()
    sync(dev, [Spec(k, allowed_ips=("10.77.0.2/32",))])
    dev.peers[k].endpoint = ("127.0.0.9", 5555)  # learned from an authenticated packet
    assert sync(dev, [Spec(k, allowed_ips=("10.77.0.2/32",))]) == []
    assert dev.peers[k].endpoint == ("127.0.0.9", 5555)


def test_a_removed_peer_loses_its_routes_and_its_index_is_not_reused() -> None:
    dev = Device(generate_private_key())
    a, b = key(), key()
    sync(dev, [Spec(a, allowed_ips=("10.77.0.2/32",)), Spec(b, allowed_ips=("10.77.0.3/32",))])
    gone = dev.peers[a].index
    lines = sync(dev, [Spec(b, allowed_ips=("10.77.0.3/32",))])
    assert len(lines) == 1 and "removed" in lines[0]
    assert dev.route(int.from_bytes(bytes([10, 77, 0, 2]), "big")) is None
    sync(dev, [Spec(b, allowed_ips=("10.77.0.3/32",)), Spec(key(), allowed_ips=("10.1.0.0/16",))])
    assert gone not in {p.index for p in dev.peers.values()}


def test_a_new_private_key_is_applied() -> None:
    dev = Device(generate_private_key())
    sk = generate_private_key()
    lines = sync(dev, [], private_key=sk)
    assert dev.public_key == public_key(sk) and "private key replaced" in lines[0]
    assert peerset.sync_request(dev, sk, []).private_key is None


def test_add_configured_gives_known_peers_their_old_numbers_first() -> None:
    dev = Device(generate_private_key())
    old, new = key(), key()
    dev.reserve_peer_indices(8)
    # The new peer comes first in the configuration; it still may not take number 3.
    peerset.add_configured(dev, [Spec(new), Spec(old)], {old: 3}, now=1.0)
    assert dev.peers[old].index == 3
    assert dev.peers[new].index >= 8


def test_reload_with_ipv6_allowed_ips() -> None:
    dev = Device(generate_private_key())
    a = key()
    sync(dev, [Spec(a, allowed_ips=("10.77.0.2/32", "fd77::2/128"))])
    assert state(dev)[a][0] == ("10.77.0.2/32", "fd77::2/128")
    # the same prefixes written differently: nothing to do
    same = [Spec(a, allowed_ips=("FD77:0::2/128", "10.77.0.2/32"))]
    assert peerset.sync_request(dev, None, same).peers == []
    sync(dev, [Spec(a, allowed_ips=("10.77.0.2/32", "fd77::/64"))])
    assert (
        dev.route6(int.from_bytes(bytes.fromhex("fd77" + "00" * 13 + "09"), "big"))
        is (dev.peers[a])
    )
