#!/usr/bin/env python3
"""Transport encrypt/decrypt packets per second on one core, through the Device API.

Baseline in the same run: the bare ChaCha20-Poly1305 `*_into` calls with no protocol work,
so the ratio shows what the WireGuard bookkeeping costs on top of the cipher.
"""

from __future__ import annotations

import argparse
import struct
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgslirp_testkit.wgpair import Pair, ip_packet


def bench(size: int, count: int) -> dict[str, float]:
    p = Pair()
    p.handshake()
    payload = b"\xab" * (size - 20 - 8)
    pkt = ip_packet("10.0.0.1", "10.0.0.2", payload)
    n = struct.unpack_from(">H", pkt, 2)[0]
    out = bytearray(n + 64)
    sealed = []
    now = p.now
    enc = p.a.encrypt
    peer = p.pa
    t0 = time.perf_counter()
    for _ in range(count):
        k = enc(peer, pkt, n, now, out)
    t_enc = time.perf_counter() - t0
    # pre-seal distinct counters for the decrypt run
    for _ in range(count):
        k = enc(peer, pkt, n, now, out)
        sealed.append(bytes(out[:k]))
    plain = bytearray(n + 64)
    dec = p.b.decrypt
    addr = ("127.0.0.1", 40001)
    t0 = time.perf_counter()
    for m in sealed:
        dec(m, addr, now, plain)
    t_dec = time.perf_counter() - t0
    assert p.b.stats.rx_packets == count, p.b.stats.as_dict()
    # baseline: the cipher alone
    aead = ChaCha20Poly1305(b"k" * 32)
    nonce = bytes(12)
    padded = (n + 15) & ~15
    src = memoryview(bytearray(padded))
    dst = memoryview(bytearray(padded + 16))
    t0 = time.perf_counter()
    for _ in range(count):
        aead.encrypt_into(nonce, src, None, dst)
    t_base = time.perf_counter() - t0
    return {"enc": count / t_enc, "dec": count / t_dec, "base": count / t_base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1420, help="inner packet size in bytes")
    ap.add_argument("--count", type=int, default=200_000)
    args = ap.parse_args()
    r = bench(args.size, args.count)
    print(f"packet size {args.size} B, {args.count} packets, one core")
    print(f"  bare AEAD encrypt_into : {r['base']:>10,.0f} pkt/s  (baseline)")
    for key, name in (("enc", "Device.encrypt"), ("dec", "Device.decrypt")):
        mbit = r[key] * args.size * 8 / 1e6
        print(
            f"  {name:<22} : {r[key]:>10,.0f} pkt/s  {mbit:>8,.0f} Mbit/s  "
            f"ratio to baseline {r[key] / r['base']:.2f}"
        )


if __name__ == "__main__":
    main()
