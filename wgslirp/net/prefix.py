"""Longest-prefix table: IPv4 prefixes -> a value, the longest matching prefix wins.

One table shape serves every layer that decides by address: WireGuard's cryptokey routing
(prefix -> peer, twice per packet: the peer for a destination, and the check that a source is
routed back to the peer that sent it), the destination policy (prefix -> verdict) and the
overlay exclusions (prefix -> flag). It lives in `net/` because it is about addresses only,
so the slirp policy can use it without knowing anything of WireGuard.

A bitwise trie costs up to 32 Python steps per lookup; instead one dict per prefix length
that is in use is probed from the longest length down, which is at most a handful of dict
lookups since real configurations use few distinct lengths. Semantics are those of a trie:
exact longest match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def parse_cidr(cidr: str) -> tuple[int, int]:
    """'10.0.0.0/8' -> (network as int, prefix length); host bits are cleared."""
    net = ipaddress.IPv4Network(cidr.strip(), strict=False)
    return int(net.network_address), net.prefixlen


def format_cidr(network: int, plen: int) -> str:
    """The canonical text of a prefix, so equal prefixes compare equal as strings."""
    return f"{ipaddress.IPv4Address(network)}/{plen}"


class PrefixTable(Generic[T]):
    """Each prefix has exactly one value; inserting a prefix again replaces its value.

    Values are matched by identity in `remove_owner` and `prefixes_of`: the table answers
    "which prefixes does this peer own", not "which prefixes map to an equal value".
    """

    __slots__ = ("_by_len", "_lens")

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, T]] = {}
        self._lens: list[int] = []  # lengths in use, longest first

    def insert(self, cidr: str, owner: T) -> None:
        network, plen = parse_cidr(cidr)
        self.insert_prefix(network, plen, owner)

    def insert_prefix(self, network: int, plen: int, owner: T) -> None:
        """Add or re-own a prefix: a prefix has one owner, as a WireGuard prefix has one peer."""
        table = self._by_len.get(plen)
        if table is None:
            table = self._by_len[plen] = {}
            self._lens = sorted(self._by_len, reverse=True)
        table[network >> (32 - plen) if plen else 0] = owner

    def remove(self, cidr: str) -> None:
        network, plen = parse_cidr(cidr)
        table = self._by_len.get(plen)
        if table is not None:
            table.pop(network >> (32 - plen) if plen else 0, None)
            self._prune(plen)

    def remove_owner(self, owner: T) -> None:
        for plen in list(self._by_len):
            table = self._by_len[plen]
            for key in [k for k, v in table.items() if v is owner]:
                del table[key]
            self._prune(plen)

    def _prune(self, plen: int) -> None:
        if not self._by_len.get(plen, True):
            del self._by_len[plen]
            self._lens = sorted(self._by_len, reverse=True)

    def lookup(self, addr: int) -> T | None:
        by_len = self._by_len
        for plen in self._lens:
            owner = by_len[plen].get(addr >> (32 - plen) if plen else 0)
            if owner is not None:
                return owner
        return None

    def prefixes_of(self, owner: T) -> list[str]:
        out = []
        for plen in self._lens:
            for key, v in self._by_len[plen].items():
                if v is owner:
                    out.append(format_cidr((key << (32 - plen)) & 0xFFFFFFFF if plen else 0, plen))
        return out

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for plen in self._lens:
            for key, v in self._by_len[plen].items():
                yield format_cidr((key << (32 - plen)) & 0xFFFFFFFF if plen else 0, plen), v
