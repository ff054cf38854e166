"""Cryptokey routing: the AllowedIPs table of the WireGuard whitepaper (section 2).

Each peer owns prefixes; an outbound packet goes to the peer owning the longest prefix that
matches its destination, and an inbound packet is accepted only if its source is routed back
to the peer that sent it. The table is the generic longest-prefix table of
`wgslirp.net.prefix`; this module gives it the name WireGuard uses, so the device reads like
the protocol it implements.
"""

from __future__ import annotations

from wgslirp.net.prefix import PrefixTable, format_cidr, parse_cidr

AllowedIPs = PrefixTable  # prefix -> Peer in the device

__all__ = ["AllowedIPs", "format_cidr", "parse_cidr"]
