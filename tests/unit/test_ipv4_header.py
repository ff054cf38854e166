"""ipv4.write_header sums its checksum from the field values: it must equal the checksum
of the bytes it wrote, for any values."""

from __future__ import annotations

import random

from wgslirp.net import ipv4
from wgslirp.net.checksum import checksum


def test_the_arithmetic_checksum_matches_the_bytes_for_random_headers() -> None:
    rng = random.Random(12)
    buf = bytearray(20)
    for _ in range(5000):
        fields = {
            "total_length": rng.randrange(20, 65536),
            "proto": rng.randrange(256),
            "src": rng.randrange(1 << 32),
            "dst": rng.randrange(1 << 32),
            "ttl": rng.randrange(256),
            "tos": rng.randrange(256),
            "ident": rng.randrange(1 << 16),
            "dont_fragment": rng.random() < 0.5,
        }
        ipv4.write_header(buf, **fields)  # type: ignore[arg-type]
        assert checksum(buf) == 0, fields  # the header verifies
        assert ipv4.header_valid(buf, fields["total_length"]), fields
        assert int.from_bytes(buf[12:16], "big") == fields["src"]
        assert int.from_bytes(buf[16:20], "big") == fields["dst"]


def test_extremes_fold_correctly() -> None:
    buf = bytearray(20)
    for v in (0, 0xFFFFFFFF):
        ipv4.write_header(
            buf, total_length=0xFFFF, proto=255, src=v, dst=v, ttl=255, tos=255, ident=0xFFFF
        )
        assert checksum(buf) == 0
