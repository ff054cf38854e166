"""The guest's side of a sans-I/O TCP endpoint, driven by hand: a recording egress, segment
building and parsing, and a scripted handshake.

Every test_tcp_* file (and the UDP bridge and flow tests, for the egress) shares these, so
a test reads as the conversation it checks: the guest sends this, the endpoint answers
that, the clock moves, the timer fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgslirp.net import ipv4, ipv6, tcp
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, TcpState
from wgslirp_testkit.clock import FakeClock

GUEST_IP = ipv4.addr_to_int("10.77.0.2")
HOST_IP = ipv4.addr_to_int("93.184.216.34")
GUEST_IP6 = ipv6.addr_to_int("fd77::2")
HOST_IP6 = ipv6.addr_to_int("2001:db8::34")
GUEST_PORT = 40000
HOST_PORT = 443


class Egress:
    """Records every packet; `full` makes reserve() fail like a full ring."""

    def __init__(self, slot: int = 2048) -> None:
        self.slot = slot
        self.packets: list[bytes] = []
        self.full = False
        self._buf = bytearray(slot)

    def reserve(self) -> memoryview | None:
        if self.full:
            return None
        self._buf = bytearray(self.slot)
        return memoryview(self._buf)

    def commit(self, length: int, peer: int) -> None:
        self.packets.append(bytes(self._buf[:length]))

    def flush(self, now: float = 0.0) -> None:
        pass

    def take(self) -> list[Seg]:
        out = [parse_seg(p) for p in self.packets]
        self.packets.clear()
        return out


@dataclass
class Seg:
    seq: int
    ack: int
    flags: int
    window: int
    opts: tcp.Options
    data: bytes
    raw: bytes = field(repr=False)

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    @property
    def seg_len(self) -> int:
        return (
            len(self.data) + (1 if self.flags & tcp.SYN else 0) + (1 if self.flags & tcp.FIN else 0)
        )


def parse_seg(pkt: bytes) -> Seg:
    parsed = tcp.parse(pkt, len(pkt))
    assert parsed is not None, "endpoint emitted a malformed segment"
    assert tcp.checksum_ok(pkt, len(pkt)), "bad checksum"
    src, dst, sport, dport, seq, ack, flags, window, ooff, poff, plen = parsed
    assert (sport, dport) == (HOST_PORT, GUEST_PORT)
    assert (src, dst) in ((HOST_IP, GUEST_IP), (HOST_IP6, GUEST_IP6))
    opts = tcp.parse_options(pkt, ooff, poff)
    assert opts is not None
    return Seg(seq, ack, flags, window, opts, pkt[poff : poff + plen], pkt)


def guest_pkt(
    seq: int,
    ack: int,
    flags: int,
    data: bytes = b"",
    window: int = 65535,
    opts: bytes = b"",
    *,
    v6: bool = False,
    tos: int = 0,
) -> bytearray:
    """A guest segment, IPv4 or (`v6`) IPv6; `tos` is the TOS / traffic class byte."""
    buf = bytearray(60 + len(opts) + len(data))
    n = tcp.build_into(
        buf,
        src=GUEST_IP6 if v6 else GUEST_IP,
        dst=HOST_IP6 if v6 else HOST_IP,
        tos=tos,
        sport=GUEST_PORT,
        dport=HOST_PORT,
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        flags=flags,
        window=window,
        options=opts,
        payload=data,
    )
    return buf[:n]


class Conn:
    """An endpoint plus the guest's view of it, driven by hand."""

    def __init__(
        self,
        params: TcpParams | None = None,
        *,
        iss: int = 5000,
        guest_iss: int = 100000,
        window: int = 65535,
        syn_opts: bytes | None = None,
        ts: bool = False,
        v6: bool = False,
    ) -> None:
        self.clock = FakeClock()
        self.v6 = v6
        self.egress = Egress()
        self.params = params or TcpParams()
        self.ep = TcpEndpoint(
            self.params,
            local=(HOST_IP6 if v6 else HOST_IP, HOST_PORT),
            remote=(GUEST_IP6 if v6 else GUEST_IP, GUEST_PORT),
            iss=iss,
            now=self.clock(),
            egress=self.egress,
            peer=1,
            v6=v6,
        )
        self.ts = ts
        self.ts_val = 777
        self.gseq = guest_iss  # guest's next sequence number
        self.gack = 0  # guest's next expected from us
        self.window = window
        if syn_opts is None:
            syn_opts = tcp.options_bytes(mss=1460)
        self.syn_opts = syn_opts
        self.syn = guest_pkt(guest_iss, 0, tcp.SYN, window=window, opts=syn_opts, v6=v6)
        self.peer_ts_recent = 0

    @property
    def now(self) -> float:
        return self.clock()

    def handshake(self) -> Seg:
        ep = self.ep
        ep.on_syn(memoryview(self.syn), len(self.syn), self.now)
        assert ep.state is TcpState.LISTEN_PENDING
        assert not self.egress.packets
        ep.accept(self.now)
        segs = self.egress.take()
        assert len(segs) == 1 and segs[0].has(tcp.SYN | tcp.ACK)
        synack = segs[0]
        self.gseq += 1
        self.gack = synack.seq + 1
        if synack.opts.ts_val is not None:
            self.peer_ts_recent = synack.opts.ts_val
        self.send(b"", tcp.ACK)
        assert ep.state is TcpState.ESTABLISHED
        return synack

    def open_active(self, synack_opts: bytes | None = None) -> tuple[Seg, Seg]:
        """Active open (an inbound forward): the endpoint's SYN, the guest's SYN-ACK with
        `synack_opts` (by default what the guest's SYN would carry), the endpoint's ACK.
        Returns (SYN, ACK)."""
        ep = self.ep
        ep.connect(self.now)
        (syn,) = self.egress.take()
        assert syn.has(tcp.SYN) and not syn.flags & tcp.ACK
        self.gack = syn.seq + 1
        opts = self.syn_opts if synack_opts is None else synack_opts
        parsed = tcp.parse_options(opts, 0, len(opts))
        if parsed is not None and parsed.ts_val is not None:
            # the SYN-ACK echoes our SYN's TSval, as a real stack does
            opts = tcp.options_bytes(
                mss=parsed.mss,
                wscale=parsed.wscale,
                sack_perm=parsed.sack_perm,
                ts=(parsed.ts_val, syn.opts.ts_val or 0),
            )
        self.send(b"", tcp.SYN | tcp.ACK, opts=opts)
        assert ep.state is TcpState.ESTABLISHED
        (ack,) = self.out()
        return syn, ack

    def opts(self) -> bytes:
        if not self.ts:
            return b""
        self.ts_val += 1
        return tcp.options_bytes(ts=(self.ts_val, self.peer_ts_recent))

    def send(
        self,
        data: bytes = b"",
        flags: int = tcp.ACK,
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        opts: bytes | None = None,
        flush: bool = True,
    ) -> None:
        """A segment from the guest; by default the next in sequence."""
        s = self.gseq if seq is None else seq
        pkt = guest_pkt(
            s,
            self.gack if ack is None else ack,
            flags,
            data,
            self.window if window is None else window,
            self.opts() if opts is None else opts,
            v6=self.v6,
        )
        if seq is None:
            self.gseq += len(data) + (1 if flags & (tcp.SYN | tcp.FIN) else 0)
        self.ep.receive(memoryview(pkt), len(pkt), self.now)
        if flush:
            self.ep.flush(self.now)

    def out(self) -> list[Seg]:
        segs = self.egress.take()
        for s in segs:
            if s.opts.ts_val is not None:
                self.peer_ts_recent = s.opts.ts_val
        return segs

    def tick(self, dt: float) -> list[Seg]:
        """Advance the clock by dt, firing the endpoint's timer if it is due."""
        end = self.clock.t + dt
        while True:
            t = self.ep.get_timer()
            if t is None or t > end:
                break
            self.clock.t = max(self.clock.t, t)
            self.ep.handle_timer(self.clock.t)
        self.clock.t = end
        return self.out()

    def read_all(self) -> bytes:
        out = bytearray()
        while self.ep.readable():
            view = self.ep.peek_data()
            out += view
            self.ep.consume(len(view), self.now)
        return bytes(out)


class SackReceiver:
    """The guest's receive side: which of our bytes it holds, ACKs with SACK blocks.

    With `dsack`, data it already held is reported in the next ACK's first block (RFC
    2883), as Linux does; with `ts`, its ACKs carry timestamps whose echo follows RFC 7323
    (TS.Recent moves only on a segment at the left edge and never backwards), which is
    what a sender's spurious-retransmission test (RFC 3522) relies on."""

    def __init__(self, c: Conn, sack: bool, *, dsack: bool = False, ts: bool = False) -> None:
        self.c = c
        self.sack = sack
        self.dsack = dsack
        self.ts = ts
        self.ranges: list[tuple[int, int]] = []
        self.latest: tuple[int, int] | None = None
        self.duplicate: tuple[int, int] | None = None
        self.ts_recent = 0
        self.last_ack_sent = c.gack

    def take(self, s: Seg) -> None:
        if not s.data:
            return
        lo, hi = s.seq, s.seq + len(s.data)
        tsval = s.opts.ts_val
        if (
            self.ts
            and tsval is not None
            and lo <= self.last_ack_sent
            and (tsval - self.ts_recent) & 0xFFFFFFFF < 1 << 31
        ):
            self.ts_recent = tsval
        if hi <= self.c.gack or any(a <= lo and hi <= b for a, b in self.ranges):
            if self.dsack:
                self.duplicate = (lo, hi)
            return
        self.latest = (lo, hi)
        self.ranges.append((lo, hi))
        self.ranges.sort()
        merged: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        if merged and merged[0][0] <= self.c.gack:
            self.c.gack = max(self.c.gack, merged[0][1])
            merged.pop(0)
        self.ranges = merged

    def ack(self) -> None:
        blocks: list[tuple[int, int]] = []
        if self.sack and self.ranges:
            first = next(
                (r for r in self.ranges if self.latest and r[0] <= self.latest[0] < r[1]),
                self.ranges[0],
            )
            blocks = [first, *[r for r in self.ranges if r != first]]
        if self.duplicate is not None:
            blocks.insert(0, self.duplicate)
            self.duplicate = None
        ts = None
        if self.ts:
            self.c.ts_val += 1
            ts = (self.c.ts_val, self.ts_recent)
        blocks = blocks[: 3 if ts else 4]
        opts = tcp.options_bytes(ts=ts, sack=blocks) if blocks or ts else b""
        self.last_ack_sent = self.c.gack
        self.c.send(b"", tcp.ACK, opts=opts)
