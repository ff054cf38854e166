"""A handshake flood and a legitimate peer's view of it, for scripts/flood.py and the e2e
test of the router's load shedding."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

from wgslirp.wireguard.cookie import mac1_key
from wgslirp_testkit.router import GATEWAY
from wgslirp_testkit.wgclient import WgClient

FLOOD_SOURCE = "127.0.0.2"
INITIATION_SIZE = 148


def initiation_with_mac1(server_public: bytes, *, valid_mac1: bool = True) -> bytes:
    """A well-formed initiation whose MAC1 is valid and whose content is garbage: the
    cheapest message that makes a responder do more than drop it (anyone who knows the
    router's public key can make it)."""
    body = bytearray(os.urandom(INITIATION_SIZE))
    body[0:4] = b"\x01\x00\x00\x00"
    mac1 = hashlib.blake2s(bytes(body[:116]), digest_size=16, key=mac1_key(server_public))
    body[116:132] = mac1.digest() if valid_mac1 else bytes(16)
    body[132:148] = bytes(16)  # no cookie: MAC2 empty
    return bytes(body)


def flooder(port: int, msg: bytes, seconds: float, sent: Any) -> None:
    """As fast as one Python process can: one connected socket, the same datagram."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((FLOOD_SOURCE, 0))
    s.connect(("127.0.0.1", port))
    send = s.send
    n = 0
    end = time.monotonic() + seconds
    while True:
        for _ in range(1000):
            try:
                send(msg)
            except OSError:  # ECONNREFUSED after an ICMP error, ENOBUFS
                pass
        n += 1000
        if time.monotonic() >= end:
            break
    sent.value = n


def time_to_first_reply(c: WgClient, limit: float) -> float | None:
    """Bring the tunnel up (the interface exists already; the first ping triggers the
    handshake) and return seconds until a ping is answered, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        _sent, got = c.ping(GATEWAY, count=1, interval=0.2, wait=1)
        if got:
            return time.monotonic() - t0
    return None
