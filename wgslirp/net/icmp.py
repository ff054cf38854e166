"""ICMP messages the router originates itself (RFC 792)."""

from __future__ import annotations

import struct
from typing import Final

from wgslirp.net import ipv4
from wgslirp.net.checksum import checksum

ECHO_REPLY: Final = 0
DEST_UNREACHABLE: Final = 3
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11


def echo_reply_into(
    request: bytes | bytearray | memoryview, length: int, out: bytearray | memoryview,
    ttl: int = 64,
) -> int:
    """Answer an IPv4 ICMP echo request in `out`; returns the reply length or 0 if the
    request is not a well-formed echo request. Identifier, sequence and payload are echoed."""
    if not ipv4.header_valid(request, length):
        return 0
    ihl = ipv4.header_length(request)
    total: int = struct.unpack_from(">H", request, 2)[0]
    if request[9] != ipv4.PROTO_ICMP or total - ihl < 8 or ipv4.is_fragment(request):
        return 0
    icmp = memoryview(request)[ihl:total]
    if icmp[0] != ECHO_REQUEST or icmp[1] != 0 or checksum(icmp) != 0:
        return 0
    src, dst = ipv4.src_dst(request)
    n = 20 + len(icmp)
    o = memoryview(out)
    o[20:n] = icmp
    o[20] = ECHO_REPLY
    o[22:24] = b"\x00\x00"
    struct.pack_into(">H", o, 22, checksum(o[20:n]))
    ident: int = struct.unpack_from(">H", request, 4)[0]
    ipv4.write_header(o, total_length=n, proto=ipv4.PROTO_ICMP, src=dst, dst=src, ttl=ttl,
                      ident=ident, dont_fragment=False)
    return n
