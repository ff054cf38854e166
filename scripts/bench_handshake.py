#!/usr/bin/env python3
"""Responder handshakes per second on one core: consume an initiation, build the response,
derive the session. Each initiation comes from a distinct peer (the per-peer flood guard
would otherwise refuse repeats). Baseline in the same run: the X25519 operations alone that a
responder must do (4 per handshake), the floor no implementation on this library can beat.
"""

from __future__ import annotations

import argparse
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from wgslirp.keys import generate_private_key, public_key
from wgslirp.wireguard.device import Device
from wgslirp.wireguard.load import HandshakeGuard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=4000)
    args = ap.parse_args()
    responder_key = generate_private_key()
    responder = Device(responder_key, guard=HandshakeGuard(under_load_rate=10**9))
    inits = []
    for i in range(args.count):
        k = generate_private_key()
        d = Device(k)
        peer = d.add_peer(public_key(responder_key), endpoint=("127.0.0.1", 1))
        d.initiate(peer, 0.0)
        inits.append((bytes(d.outbox[0][0]), ("127.0.0.1", 10000 + i % 50000)))
        responder.add_peer(public_key(k))
    t0 = time.perf_counter()
    for msg, addr in inits:
        responder.receive_handshake(msg, addr, 1.0)
    dt = time.perf_counter() - t0
    # every initiation answered with a response (the responder counts a handshake only
    # once the initiator confirms it, which this benchmark does not simulate)
    assert len(responder.outbox) == args.count, responder.stats.as_dict()
    assert all(msg[0] == 2 for msg, _ in responder.outbox)
    # baseline: 4 X25519 operations (ephemeral keygen + 3 DH) per handshake
    priv = X25519PrivateKey.generate()
    pub = X25519PublicKey.from_public_bytes(public_key(generate_private_key()))
    t0 = time.perf_counter()
    for _ in range(args.count):
        X25519PrivateKey.generate().public_key()
        priv.exchange(pub)
        priv.exchange(pub)
        priv.exchange(pub)
    base = time.perf_counter() - t0
    rate, base_rate = args.count / dt, args.count / base
    print(f"{args.count} responder handshakes, one core")
    print(f"  X25519 floor (4 ops)  : {base_rate:>8,.0f} /s  (baseline)")
    print(
        f"  Device responder      : {rate:>8,.0f} /s  ratio to baseline {rate / base_rate:.2f}"
        f"  ({dt / args.count * 1e6:.0f} us each)"
    )


if __name__ == "__main__":
    main()
