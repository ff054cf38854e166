"""Longest-prefix table: IPv4 and IPv6 prefixes -> a value, the longest matching prefix wins.

One table shape serves every layer that decides by address: WireGuard's cryptokey routing
(prefix -> peer, twice per packet: the peer for a destination, and the check that a source is
routed back to the peer that sent it), the destination policy (prefix -> verdict) and the
overlay exclusions (prefix -> flag). It lives in `net/` because it is about addresses only,
so the slirp policy can use it without knowing anything of WireGuard.

A bitwise trie costs up to 32 (IPv6: 128) Python steps per lookup; instead one dict per
prefix length that is in use is probed from the longest length down, which is at most a
handful of dict lookups since real configurations use few distinct lengths. Semantics are
those of a trie: exact longest match.

The two families live side by side, each with its own lengths: an address is an int of
either family (see net/ipv6.py), so the caller, which has the packet's version nibble at
hand, says which by calling `lookup` or `lookup6`. An IPv4 prefix never matches an IPv6
address, ::/0 never matches an IPv4 one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def parse_prefix(cidr: str) -> tuple[int, int, bool]:
    """'10.0.0.0/8' -> (network as int, prefix length, is IPv6); host bits are cleared.
    Raises ValueError for anything that is not an IPv4 or IPv6 prefix."""
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    return int(net.network_address), net.prefixlen, net.version == 6


def parse_cidr(cidr: str) -> tuple[int, int]:
    """'10.0.0.0/8' -> (network as int, prefix length): IPv4 only, for IPv4-only callers."""
    net = ipaddress.IPv4Network(cidr.strip(), strict=False)
    return int(net.network_address), net.prefixlen


def format_cidr(network: int, plen: int, v6: bool = False) -> str:
    """The canonical text of a prefix, so equal prefixes compare equal as strings."""
    if v6:
        return f"{ipaddress.IPv6Address(network)}/{plen}"
    return f"{ipaddress.IPv4Address(network)}/{plen}"


def normalize_cidr(cidr: str) -> str:
    """The canonical text of a prefix of either family (host bits cleared)."""
    return format_cidr(*parse_prefix(cidr))


class PrefixTable(Generic[T]):
    """Each prefix has exactly one value; inserting a prefix again replaces its value.

    Values are matched by identity in `remove_owner` and `prefixes_of`: the table answers
    "which prefixes does this peer own", not "which prefixes map to an equal value".
    """

    __slots__ = ("_by_len", "_by_len6", "_lens", "_lens6")

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, T]] = {}
        self._lens: list[int] = []  # lengths in use, longest first
        self._by_len6: dict[int, dict[int, T]] = {}
        self._lens6: list[int] = []

    def insert(self, cidr: str, owner: T) -> None:
        network, plen, v6 = parse_prefix(cidr)
        self.insert_prefix(network, plen, owner, v6)

    def insert_prefix(self, network: int, plen: int, owner: T, v6: bool = False) -> None:
        """Add or re-own a prefix: a prefix has one owner, as a WireGuard prefix has one peer."""
        by_len = self._by_len6 if v6 else self._by_len
        table = by_len.get(plen)
        if table is None:
            table = by_len[plen] = {}
            self._sort(v6)
        table[network >> ((128 if v6 else 32) - plen) if plen else 0] = owner

    def _sort(self, v6: bool) -> None:
        if v6:
            self._lens6 = sorted(self._by_len6, reverse=True)
        else:
            self._lens = sorted(self._by_len, reverse=True)

    def remove(self, cidr: str) -> None:
        network, plen, v6 = parse_prefix(cidr)
        by_len = self._by_len6 if v6 else self._by_len
        table = by_len.get(plen)
        if table is not None:
            table.pop(network >> ((128 if v6 else 32) - plen) if plen else 0, None)
            self._prune(plen, v6)

    def remove_owner(self, owner: T) -> None:
        for v6, by_len in ((False, self._by_len), (True, self._by_len6)):
            for plen in list(by_len):
                table = by_len[plen]
                for key in [k for k, v in table.items() if v is owner]:
                    del table[key]
                self._prune(plen, v6)

    def _prune(self, plen: int, v6: bool) -> None:
        by_len = self._by_len6 if v6 else self._by_len
        if not by_len.get(plen, True):
            del by_len[plen]
            self._sort(v6)

    def lookup(self, addr: int) -> T | None:
        """The value of the longest IPv4 prefix holding the IPv4 address `addr`."""
        by_len = self._by_len
        for plen in self._lens:
            owner = by_len[plen].get(addr >> (32 - plen) if plen else 0)
            if owner is not None:
                return owner
        return None

    def lookup6(self, addr: int) -> T | None:
        """The value of the longest IPv6 prefix holding the IPv6 address `addr`."""
        by_len = self._by_len6
        for plen in self._lens6:
            owner = by_len[plen].get(addr >> (128 - plen) if plen else 0)
            if owner is not None:
                return owner
        return None

    def lookup_family(self, addr: int, v6: bool) -> T | None:
        return self.lookup6(addr) if v6 else self.lookup(addr)

    def _entries(self) -> Iterator[tuple[str, T]]:
        for v6, bits, lens, by_len in (
            (False, 32, self._lens, self._by_len),
            (True, 128, self._lens6, self._by_len6),
        ):
            mask = (1 << bits) - 1
            for plen in lens:
                for key, v in by_len[plen].items():
                    yield format_cidr((key << (bits - plen)) & mask if plen else 0, plen, v6), v

    def prefixes_of(self, owner: T) -> list[str]:
        return [cidr for cidr, v in self._entries() if v is owner]

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return self._entries()
