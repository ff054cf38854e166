"""Two in-memory WireGuard devices wired back to back, driven by a fake clock.

The WireGuard core is sans-I/O, so a handshake, rekey or replay can be played out between
two Devices in memory: datagrams move only when :meth:`Pair.deliver` moves them, and time
only when the test advances the clock.  Used by the unit tests and bench_transport.
"""

from __future__ import annotations

import random
import struct

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.peer import Peer
from wgslirp_testkit.clock import FakeClock

A_ADDR = ("127.0.0.1", 40001)
B_ADDR = ("127.0.0.1", 40002)


def ip_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytearray:
    from wgslirp.net import ipv4

    total = 20 + len(payload)
    buf = bytearray(total + 16)
    ipv4.write_header(
        buf, total_length=total, proto=proto, src=ipv4.addr_to_int(src), dst=ipv4.addr_to_int(dst)
    )
    buf[20:total] = payload
    return buf


class Pair:
    """Device `a` (10.0.0.1) initiates to device `b` (10.0.0.2); `b` has no endpoint for `a`
    until it hears from it, like the router and a roaming client."""

    def __init__(self, psk: bytes | None = None, seed: int = 1, keepalive: int = 0) -> None:
        self.clock = FakeClock()
        ka, kb = generate_private_key(), generate_private_key()
        rng_a, rng_b = random.Random(seed), random.Random(seed + 1)
        self.a = Device(ka, wall=lambda: self.clock.wall, rng=rng_a)
        self.b = Device(kb, wall=lambda: self.clock.wall, rng=rng_b)
        self.pa: Peer = self.a.add_peer(
            public_key(kb),
            preshared_key=psk,
            allowed_ips=["10.0.0.2/32"],
            endpoint=B_ADDR,
            keepalive=keepalive,
            now=self.clock.t,
        )
        self.pb: Peer = self.b.add_peer(
            public_key(ka), preshared_key=psk, allowed_ips=["10.0.0.1/32"]
        )
        self.captured: list[tuple[str, bytes]] = []

    @property
    def now(self) -> float:
        return self.clock.t

    def deliver(self) -> list[tuple[str, int]]:
        """Move every queued datagram to the other side until both outboxes are empty.

        Returns (receiver, plaintext length) for each transport message that decrypted."""
        got: list[tuple[str, int]] = []
        plain = bytearray(70000)
        for _ in range(100):
            moved = False
            for src, dst, dst_name, from_addr in (
                (self.a, self.b, "b", A_ADDR),
                (self.b, self.a, "a", B_ADDR),
            ):
                box, src.outbox = src.outbox, []
                for data, _addr in box:
                    moved = True
                    data = bytes(data)
                    self.captured.append((dst_name, data))
                    if data[0] == 4:
                        r = dst.decrypt(data, from_addr, self.now, plain)
                        if r is not None:
                            got.append((dst_name, r[1]))
                    else:
                        dst.receive_handshake(data, from_addr, self.now)
            if not moved:
                return got
        raise AssertionError("datagrams kept bouncing")

    def send_a_to_b(self, payload: bytes = b"x" * 100) -> bytes | None:
        pkt = ip_packet("10.0.0.1", "10.0.0.2", payload)
        n = struct.unpack_from(">H", pkt, 2)[0]
        out = bytearray(n + 64)
        k = self.a.encrypt(self.pa, pkt, n, self.now, out)
        return bytes(out[:k]) if k else None

    def send_b_to_a(self, payload: bytes = b"y" * 100) -> bytes | None:
        pkt = ip_packet("10.0.0.2", "10.0.0.1", payload)
        n = struct.unpack_from(">H", pkt, 2)[0]
        out = bytearray(n + 64)
        k = self.b.encrypt(self.pb, pkt, n, self.now, out)
        return bytes(out[:k]) if k else None

    def handshake(self) -> None:
        assert self.a.initiate(self.pa, self.now)
        self.deliver()
        assert self.pa.current is not None
