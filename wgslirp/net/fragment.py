"""IPv4 and IPv6 fragmentation and reassembly (RFC 791, RFC 815, RFC 8200 4.5), off the
hot path.

Guests normally keep under the tunnel MTU, so fragments are rare; both directions favour
plain code and hard bounds over speed. Reassembly happens in ingress, before flow hashing,
because only the first fragment carries the ports that choose a worker. Both families share
one Reassembler and so one memory bound: a guest cannot double its share by mixing them.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Final

from wgslirp.net import ipv4, ipv6
from wgslirp.net.checksum import checksum

MAX_DATAGRAM: Final = 0xFFFF
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_MAX_BYTES: Final = 4 << 20
DEFAULT_MAX_DATAGRAMS: Final = 1024
# What holding one piece costs beyond its data (bytes object, list slots, two offsets) and
# what a pending datagram costs before any data; charged so that a flood of 8-byte
# fragments is bounded by real memory, not by payload bytes alone.
PIECE_OVERHEAD: Final = 160
DATAGRAM_OVERHEAD: Final = 256

_U16 = struct.Struct(">H")
_FRAG6 = struct.Struct(">BBHI")
# The protocol slot of an IPv6 datagram's key: no IPv4 protocol number is this large, so the
# keys of the two families never meet even for addresses that are equal as ints.
_V6_KEY: Final = 0x100


def _copied_options(options: memoryview) -> bytes:
    """The options RFC 791 says every fragment repeats (copied flag set), padded to 32 bits.
    Parsing stops at end-of-list or at anything malformed: the first fragment keeps the
    original options intact either way."""
    kept = bytearray()
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            break
        size = options[i + 1]
        if kind & 0x80:
            kept += options[i : i + size]
        i += size
    kept += bytes(-len(kept) % 4)
    return bytes(kept)


def _finish_header(buf: bytearray, hlen: int, total: int, frag_word: int) -> None:
    buf[0] = 0x40 | (hlen // 4)
    _U16.pack_into(buf, 2, total)
    _U16.pack_into(buf, 6, frag_word)
    buf[10] = buf[11] = 0
    _U16.pack_into(buf, 10, checksum(memoryview(buf)[:hlen]))


def fragment(
    packet: bytes | bytearray | memoryview,
    length: int,
    mtu: int,
) -> list[bytearray] | None:
    """Split an IPv4 packet into fragments of at most `mtu` bytes.

    Returns None when the packet is too big and has DF set, so the caller can answer with
    ICMP FRAG_NEEDED carrying `mtu` instead. A packet that already fits comes back as a
    single copy. Fragmenting a fragment is supported: offsets are relative to the original
    datagram and its MF flag survives on the last piece. Raises ValueError for a malformed
    packet or an MTU too small to carry 8 data bytes after the header.
    """
    mv = memoryview(packet)[:length]
    if length < 20:
        raise ValueError("not an IPv4 packet")
    vihl, total, frag_word, _, _, _ = ipv4.SUMMARY.unpack_from(mv)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > length:
        raise ValueError("malformed IPv4 header")
    if total <= mtu:
        return [bytearray(mv[:total])]
    if frag_word & ipv4.FLAG_DF:
        return None
    later_options = _copied_options(mv[20:ihl])
    base = (frag_word & ipv4.OFFSET_MASK) * 8
    last_mf = frag_word & ipv4.FLAG_MF
    data = mv[ihl:total]
    out: list[bytearray] = []
    pos, hlen, options = 0, ihl, mv[20:ihl]
    while pos < len(data):
        room = (mtu - hlen) & ~7
        if room <= 0:
            raise ValueError(f"MTU {mtu} leaves no room for data after a {hlen}-byte header")
        chunk = min(room, len(data) - pos)
        end = pos + chunk
        piece = bytearray(hlen + chunk)
        piece[:20] = mv[:20]
        piece[20:hlen] = options
        piece[hlen:] = data[pos:end]
        mf = ipv4.FLAG_MF if end < len(data) else last_mf
        _finish_header(piece, hlen, hlen + chunk, mf | ((base + pos) // 8))
        out.append(piece)
        pos = end
        hlen, options = 20 + len(later_options), memoryview(later_options)
    return out


def fragment6(
    packet: bytes | bytearray | memoryview,
    length: int,
    mtu: int,
    ident: int,
) -> list[bytearray]:
    """Split an IPv6 packet the router itself originates into fragments of at most `mtu`
    bytes (RFC 8200 4.5: only the source fragments in IPv6), each with a fragment header
    carrying `ident`. The unfragmentable part is the IPv6 header alone: the router's own
    packets carry no extension headers. A packet that fits comes back as a single copy.
    """
    mv = memoryview(packet)[:length]
    if not ipv6.header_valid(mv, length):
        raise ValueError("malformed IPv6 header")
    total = ipv6.HEADER_LEN + ipv6.payload_length(mv)
    if total <= mtu:
        return [bytearray(mv[:total])]
    hlen = ipv6.HEADER_LEN + ipv6.FRAGMENT_HEADER_LEN
    room = (mtu - hlen) & ~7
    if room <= 0:
        raise ValueError(f"MTU {mtu} leaves no room for data after a {hlen}-byte header")
    data = mv[ipv6.HEADER_LEN : total]
    out: list[bytearray] = []
    pos = 0
    while pos < len(data):
        chunk = min(room, len(data) - pos)
        piece = bytearray(hlen + chunk)
        piece[:40] = mv[:40]
        more = 1 if pos + chunk < len(data) else 0
        _FRAG6.pack_into(piece, 40, mv[6], 0, pos | more, ident & 0xFFFFFFFF)
        piece[6] = ipv6.NH_FRAGMENT
        _U16.pack_into(piece, 4, ipv6.FRAGMENT_HEADER_LEN + chunk)
        piece[hlen:] = data[pos : pos + chunk]
        out.append(piece)
        pos += chunk
    return out


@dataclass(slots=True)
class _Pending:
    deadline: float
    # The offset-0 fragment's header, reused for the datagram: IPv4's header, or IPv6's
    # unfragmentable part with its last next-header byte already naming the upper layer.
    header: bytes | None = None
    total: int = -1  # data length, known once the last fragment (MF clear) arrives
    received: int = 0
    charged: int = 0  # bytes counted against the memory bound
    starts: list[int] = field(default_factory=list)  # sorted, disjoint pieces
    ends: list[int] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    v6: bool = False


Key = tuple[int, int, int, int]


class Reassembler:
    """Collects fragments per (src, dst, proto, id) and hands back whole datagrams.

    Sans-I/O: time is passed in, and `get_timer` / `handle_timer` let the shell schedule
    expiry. Memory is bounded by total buffered bytes and by the number of pending
    datagrams; when either bound is hit the oldest pending datagrams are evicted, so a
    flood of never-completed fragments cannot block new traffic for a whole timeout.
    Overlapping fragments drop the whole datagram (as RFC 5722 requires for IPv6): overlaps
    have no legitimate use and are the classic way to slip past a filter. Exact duplicates,
    which networks do produce, are ignored.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        # Insertion order is creation order, hence deadline order (the clock never goes back).
        self._pending: dict[Key, _Pending] = {}
        self._bytes = 0
        self._src_bytes: dict[int, int] = {}  # source address -> bytes charged to it
        self.completed = 0
        self.timed_out = 0
        self.dropped_overlap = 0
        self.dropped_memory = 0
        self.dropped_invalid = 0
        self.duplicates = 0

    @property
    def pending_datagrams(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def get_timer(self) -> float | None:
        """The next expiry deadline, or None when nothing is pending."""
        for p in self._pending.values():
            return p.deadline
        return None

    def handle_timer(self, now: float) -> None:
        self.expire(now)

    def expire(self, now: float) -> int:
        """Drop datagrams whose deadline has passed; returns how many."""
        expired = 0
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key].deadline > now:
                break
            self._discard(key)
            expired += 1
        self.timed_out += expired
        return expired

    def _discard(self, key: Key) -> None:
        charged = self._pending.pop(key).charged
        self._bytes -= charged
        left = self._src_bytes[key[0]] - charged
        if left > 0:
            self._src_bytes[key[0]] = left
        else:
            del self._src_bytes[key[0]]

    def _evict_oldest(self, keep: Key) -> bool:
        """Make room: the oldest pending datagram of the source holding the most memory
        goes, so one source's flood of never-completed fragments evicts its own, not the
        other sources' datagrams (with one source this is simply the oldest)."""
        if not self._src_bytes:
            return False
        heavy = max(self._src_bytes, key=self._src_bytes.__getitem__)
        victim = next((k for k in self._pending if k[0] == heavy and k != keep), None)
        if victim is None:
            return False  # the heaviest is `keep` alone: the caller drops it, not others
        self._discard(victim)
        self.dropped_memory += 1
        return True

    def feed(
        self,
        packet: bytes | bytearray | memoryview,
        length: int,
        now: float,
    ) -> bytearray | None:
        """Take one packet; return the whole datagram once its last missing piece arrives.

        A packet that is not a fragment comes straight back as a copy, so a caller may
        feed everything it is unsure about. The result is a fresh bytearray owned by the
        caller.
        """
        self.expire(now)
        if length and packet[0] >> 4 == 6:
            return self._feed6(packet, length, now)
        if not ipv4.header_valid(packet, length):
            self.dropped_invalid += 1
            return None
        mv = memoryview(packet)
        vihl, total, frag_word, proto, src, dst = ipv4.SUMMARY.unpack_from(mv)
        ihl = (vihl & 0x0F) * 4
        if not frag_word & (ipv4.FLAG_MF | ipv4.OFFSET_MASK):
            return bytearray(mv[:total])
        start = (frag_word & ipv4.OFFSET_MASK) * 8
        end = start + total - ihl
        more = bool(frag_word & ipv4.FLAG_MF)
        if (more and (end == start or (end - start) % 8)) or ihl + end > MAX_DATAGRAM:
            # Middle pieces come in 8-byte units; a piece past 65535 is a ping of death.
            self.dropped_invalid += 1
            return None
        ident: int = _U16.unpack_from(mv, 4)[0]
        key = (src, dst, proto, ident)
        p = self._pending_for(key, now, v6=False)
        header = bytes(mv[:ihl]) if start == 0 else None
        return self._add(key, p, mv, ihl, header, start, end, more)

    def _feed6(
        self, packet: bytes | bytearray | memoryview, length: int, now: float
    ) -> bytearray | None:
        """IPv6: the fragment header sits after the unfragmentable part, and the datagram
        is that part plus the reassembled data, with the next-header byte that named the
        fragment header renamed to what the fragment header announced."""
        mv = memoryview(packet)
        chain = ipv6.Chain()
        if not ipv6.walk(mv, length, chain):
            self.dropped_invalid += 1
            return None
        if chain.frag < 0:
            return bytearray(mv[: chain.end])
        nh, start, more, ident = ipv6.fragment_fields(mv, chain.frag)
        data_off = chain.offset
        end = start + chain.end - data_off
        if (more and (end == start or (end - start) % 8)) or (
            chain.frag - ipv6.HEADER_LEN + end > ipv6.MAX_PAYLOAD
        ):
            self.dropped_invalid += 1
            return None
        header: bytes | None = None
        if start == 0:
            if not self._first_fragment_ok(mv, nh, data_off, chain.end):
                self.dropped_invalid += 1
                return None
            unfrag = bytearray(mv[: chain.frag])
            unfrag[chain.nh_at] = nh
            header = bytes(unfrag)
        if header is not None and not more:
            # An atomic fragment (RFC 6946): a whole datagram, never merged with others.
            whole = bytearray(header) + mv[data_off : chain.end]
            _U16.pack_into(whole, 4, len(whole) - ipv6.HEADER_LEN)
            return whole
        src, dst = ipv6.src_dst(mv)
        key = (src, dst, _V6_KEY, ident)
        p = self._pending_for(key, now, v6=True)
        return self._add(key, p, mv, data_off, header, start, end, more)

    @staticmethod
    def _first_fragment_ok(mv: memoryview, nh: int, off: int, end: int) -> bool:
        """RFC 7112: the first fragment holds the whole header chain, so a filter never has
        to reassemble to find the upper-layer header; one that does not is dropped. The
        walk may not meet a second fragment header either."""
        chain = ipv6.Chain()
        if not ipv6.walk_from(mv, nh, off, end, 0, chain) or chain.frag >= 0:
            return False
        need = {ipv6.NH_TCP: 20, ipv6.NH_UDP: 8, ipv6.NH_ICMPV6: 8}.get(chain.proto, 0)
        return chain.offset + need <= end

    def _pending_for(self, key: Key, now: float, *, v6: bool) -> _Pending:
        p = self._pending.get(key)
        if p is None:
            while len(self._pending) >= self.max_datagrams and self._evict_oldest(key):
                pass
            while self._bytes + DATAGRAM_OVERHEAD > self.max_bytes and self._evict_oldest(key):
                pass
            p = self._pending[key] = _Pending(
                deadline=now + self.timeout, charged=DATAGRAM_OVERHEAD, v6=v6
            )
            self._bytes += DATAGRAM_OVERHEAD
            self._src_bytes[key[0]] = self._src_bytes.get(key[0], 0) + DATAGRAM_OVERHEAD
        return p

    def _add(
        self,
        key: Key,
        p: _Pending,
        mv: memoryview,
        ihl: int,
        header: bytes | None,
        start: int,
        end: int,
        more: bool,
    ) -> bytearray | None:
        i = bisect_right(p.starts, start)
        if (i and p.ends[i - 1] > start) or (i < len(p.starts) and p.starts[i] < end):
            if (
                i
                and p.starts[i - 1] == start
                and p.ends[i - 1] == end
                and p.pieces[i - 1] == mv[ihl : ihl + end - start]
            ):
                self.duplicates += 1
                return None
            self._discard(key)
            self.dropped_overlap += 1
            return None
        highest = p.ends[-1] if p.ends else 0
        if (not more and (p.total not in (-1, end) or highest > end)) or (
            p.total >= 0 and end > p.total
        ):
            # Two different "last" fragments, or data beyond the end: as unsafe as overlap.
            self._discard(key)
            self.dropped_overlap += 1
            return None
        cost = end - start + (len(header) if header is not None else 0) + PIECE_OVERHEAD
        while self._bytes + cost > self.max_bytes:
            if not self._evict_oldest(key):
                self._discard(key)
                self.dropped_memory += 1
                return None
        if header is not None:
            p.header = header
        if not more:
            p.total = end
        if end > start:
            p.starts.insert(i, start)
            p.ends.insert(i, end)
            p.pieces.insert(i, bytes(mv[ihl : ihl + end - start]))
            p.received += end - start
        p.charged += cost
        self._bytes += cost
        self._src_bytes[key[0]] += cost
        if p.header is None or p.received != p.total:
            return None
        limit = ipv6.HEADER_LEN + ipv6.MAX_PAYLOAD if p.v6 else MAX_DATAGRAM
        if len(p.header) + p.total > limit:
            self._discard(key)
            self.dropped_invalid += 1
            return None
        return self._assemble(key, p)

    def _assemble(self, key: Key, p: _Pending) -> bytearray:
        assert p.header is not None
        hlen = len(p.header)
        out = bytearray(hlen + p.total)
        out[:hlen] = p.header
        for start, piece in zip(p.starts, p.pieces, strict=True):
            out[hlen + start : hlen + start + len(piece)] = piece
        if p.v6:
            _U16.pack_into(out, 4, hlen + p.total - ipv6.HEADER_LEN)
        else:
            flags = _U16.unpack_from(p.header, 6)[0] & ipv4.FLAG_DF
            _finish_header(out, hlen, hlen + p.total, flags)
        self._discard(key)
        self.completed += 1
        return out
