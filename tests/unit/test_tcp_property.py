"""Property test: random data both ways between the endpoint and a small reference TCP (the
guest) over a network that loses, duplicates and reorders, with random options, windows,
congestion control and close order. The data must arrive intact, the endpoint must never
send beyond the window the guest advertised, and both sides must finish cleanly.

The reference peer is deliberately simple and independent of the endpoint's code: go-back-N
on a timeout, ACK of every segment, SACK blocks and timestamps when negotiated, an
application that reads at a limited rate so its window closes and reopens, and (optionally)
no window updates of its own, so the endpoint's persist probes must find the reopened window.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgslirp.net import tcp
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, TcpState
from wgslirp.slirp.tcp_seq import unwrap
from wgslirp_testkit.tcpconn import (
    GUEST_IP,
    GUEST_PORT,
    HOST_IP,
    HOST_PORT,
    Egress,
    guest_pkt,
)

ACK, SYN, FIN, RST, PSH = tcp.ACK, tcp.SYN, tcp.FIN, tcp.RST, tcp.PSH
M = 0xFFFFFFFF


@dataclass
class Scenario:
    seed: int
    upload: int
    download: int
    loss: float
    dup: float
    jitter: float
    guest_mss: int
    wscale: int | None
    sack: bool
    ts: bool
    guest_cap: int
    guest_read_rate: int
    guest_window_updates: bool
    ep_rcv_buffer: int
    ep_snd_buffer: int
    ep_snd_buffer_max: int  # the send ring grows toward this (with a budget for 1.5 rings)
    ep_rcv_buffer_max: int  # and the receive ring toward this, from the same budget
    host_read_rate: int
    cc: str
    close_order: str  # "guest_first" | "host_first" | "together"
    iss: int


class Peer:
    """The guest: an active opener with a go-back-N sender and a buffering receiver."""

    def __init__(self, sc: Scenario, rng: random.Random, upload: bytes) -> None:
        self.sc = sc
        self.rng = rng
        self.upload = upload
        self.iss = rng.getrandbits(32)
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss
        self.data_end = self.iss + 1 + len(upload)
        self.want_fin = sc.close_order != "host_first"
        self.state = "SYN_SENT"
        self.irs = 0
        self.rcv_nxt = 0
        self.received = bytearray()
        self.unread = 0
        self.ooo: dict[int, bytes] = {}
        self.ooo_fin: int | None = None
        self.latest_ooo = 0
        self.got_fin = False
        self.peer_wnd = 0
        self.wl1 = 0
        self.wl2 = 0
        self.peer_ws = 0
        self.my_ws = 0
        self.use_ts = False
        self.use_sack = False
        self.ts_recent = 0
        self.mss = sc.guest_mss
        self.rto = 0.3
        self.t_rto: float | None = None
        self.right_edge = 0  # highest right edge we ever advertised
        self.reset_seen = False
        self.out: list[bytearray] = []
        self.syn_opts = tcp.options_bytes(
            mss=sc.guest_mss, wscale=sc.wscale, sack_perm=sc.sack, ts=(1, 0) if sc.ts else None
        )

    # ---- output
    def _opts(self, now: float, sack: bool = True) -> bytes:
        ts = ((int(now * 1000) + 1) & M, self.ts_recent) if self.use_ts else None
        blocks: list[tuple[int, int]] = []
        if sack and self.use_sack and self.ooo:
            ranges = self._ooo_ranges()
            first = next((r for r in ranges if r[0] <= self.latest_ooo < r[1]), ranges[0])
            blocks = [first, *[r for r in ranges if r != first]][: 3 if ts else 4]
            blocks = [(a & M, b & M) for a, b in blocks]
        return tcp.options_bytes(ts=ts, sack=blocks)

    def _ooo_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for s in sorted(self.ooo):
            e = s + len(self.ooo[s])
            if ranges and s <= ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], e))
            else:
                ranges.append((s, e))
        return ranges

    def window(self) -> int:
        return max(self.sc.guest_cap - self.unread, 0)

    def _emit(self, seq: int, flags: int, data: bytes, now: float) -> None:
        wnd = self.window()
        if self.state != "SYN_SENT":
            wfield = min(wnd >> self.my_ws, 0xFFFF)
            self.right_edge = max(self.right_edge, self.rcv_nxt + (wfield << self.my_ws))
            opts = self._opts(now)
        else:
            wfield = min(wnd, 0xFFFF)
            opts = self.syn_opts
        self.out.append(
            guest_pkt(seq, self.rcv_nxt if flags & ACK else 0, flags, data, wfield, opts)
        )

    def start(self, now: float) -> None:
        self._emit(self.iss, SYN, b"", now)
        self.snd_nxt = self.snd_max = self.iss + 1
        self.t_rto = now + 1.0

    def send_ack(self, now: float) -> None:
        self._emit(self.snd_nxt, ACK, b"", now)

    def pump(self, now: float) -> None:
        """Send what the endpoint's window allows, then our FIN when it is time."""
        if self.state != "EST":
            return
        limit = self.snd_una + self.peer_wnd
        while self.snd_nxt < self.data_end:
            n = min(
                self.mss - (12 if self.use_ts else 0),
                self.data_end - self.snd_nxt,
                limit - self.snd_nxt,
            )
            if n <= 0:
                break
            off = self.snd_nxt - self.iss - 1
            self._emit(self.snd_nxt, ACK | PSH, self.upload[off : off + n], now)
            self.snd_nxt += n
        fin_ok = self.want_fin or self.got_fin
        if fin_ok and self.snd_nxt == self.data_end:
            self._emit(self.snd_nxt, ACK | FIN, b"", now)
            self.snd_nxt += 1
        self.snd_max = max(self.snd_max, self.snd_nxt)
        pending = self.snd_nxt < self.data_end or (fin_ok and self.snd_nxt <= self.data_end)
        if self.t_rto is None and (self.snd_max > self.snd_una or pending):
            self.t_rto = now + self.rto

    def on_timer(self, now: float) -> None:
        self.t_rto = None
        if self.state == "SYN_SENT":
            self._emit(self.iss, SYN, b"", now)
            self.t_rto = now + 1.0
            return
        if self.peer_wnd == 0 and self.snd_una < self.data_end:
            self._emit(self.snd_una - 1, ACK, b"", now)  # zero-window probe
            self.snd_nxt = self.snd_una
            self.rto = min(self.rto * 2, 4.0)
        elif self.snd_max > self.snd_una:
            self.snd_nxt = self.snd_una  # go back N
            self.rto = min(self.rto * 2, 4.0)
        self.pump(now)
        if self.t_rto is None and self.snd_nxt < self.data_end:
            self.t_rto = now + self.rto

    def app_read(self, now: float) -> None:
        if not self.unread:
            return
        before = self.window()
        self.unread = max(0, self.unread - self.sc.guest_read_rate)
        if self.sc.guest_window_updates and before < self.mss <= self.window():
            self.send_ack(now)

    # ---- input
    def on_packet(self, pkt: bytes, now: float) -> None:
        p = tcp.parse(pkt, len(pkt))
        assert p is not None and tcp.checksum_ok(pkt, len(pkt))
        _, _, _, _, seq_w, ack_w, flags, wfield, ooff, poff, plen = p
        opts = tcp.parse_options(pkt, ooff, poff)
        assert opts is not None
        data = bytes(pkt[poff : poff + plen])
        if flags & RST:
            self.reset_seen = True
            return
        if self.state == "SYN_SENT":
            if flags & (SYN | ACK) == SYN | ACK and ack_w == (self.iss + 1) & M:
                self.state = "EST"
                self.irs = seq_w
                self.rcv_nxt = seq_w + 1
                self.snd_una = self.iss + 1
                if self.sc.wscale is not None and opts.wscale is not None:
                    self.peer_ws = opts.wscale
                    self.my_ws = self.sc.wscale
                else:
                    assert opts.wscale is None
                self.use_sack = self.sc.sack and opts.sack_perm
                assert not opts.sack_perm or self.sc.sack
                self.use_ts = self.sc.ts and opts.ts_val is not None
                assert opts.ts_val is None or self.sc.ts
                if self.use_ts:
                    self.ts_recent = opts.ts_val or 0
                self.mss = min(self.sc.guest_mss, opts.mss or 536)
                self.peer_wnd = wfield
                self.wl1, self.wl2 = self.rcv_nxt, self.snd_una
                self.t_rto = None
                self.rto = 0.3
                self.send_ack(now)
                self.pump(now)
            return
        seq = unwrap(seq_w, self.rcv_nxt)
        ack = unwrap(ack_w, self.snd_una)
        if flags & SYN:
            self.send_ack(now)  # our ACK of the SYN-ACK was lost
            return
        if self.use_ts and opts.ts_val is not None and seq <= self.rcv_nxt:
            self.ts_recent = opts.ts_val
        if flags & ACK:
            assert ack <= self.snd_max, "endpoint acknowledged data never sent"
            if ack > self.snd_una:
                self.snd_una = ack
                self.snd_nxt = max(self.snd_nxt, ack)
                self.rto = 0.3
                self.t_rto = None
            if self.wl1 < seq or (self.wl1 == seq and self.wl2 <= ack):
                self.peer_wnd = wfield << self.peer_ws
                self.wl1, self.wl2 = seq, ack
        if data or flags & FIN:
            end = seq + len(data)
            assert end <= self.right_edge or not data, "endpoint sent beyond our window"
            if data and end > self.rcv_nxt:
                if seq <= self.rcv_nxt:
                    take = data[self.rcv_nxt - seq :]
                    self.received += take
                    self.unread += len(take)
                    self.rcv_nxt = end
                    self._drain()
                else:
                    self.ooo[seq] = data
                    self.latest_ooo = seq
            if flags & FIN:
                if end == self.rcv_nxt and not self.got_fin:
                    self.rcv_nxt += 1
                    self.got_fin = True
                elif end > self.rcv_nxt:
                    self.ooo_fin = end
            self.send_ack(now)
        elif seq < self.rcv_nxt:
            self.send_ack(now)  # an old sequence number (a window probe): say where we are
        self.pump(now)

    def _drain(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for s in sorted(self.ooo):
                d = self.ooo[s]
                if s <= self.rcv_nxt:
                    del self.ooo[s]
                    if s + len(d) > self.rcv_nxt:
                        take = d[self.rcv_nxt - s :]
                        self.received += take
                        self.unread += len(take)
                        self.rcv_nxt += len(take)
                        progressed = True
        if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt and not self.got_fin:
            self.rcv_nxt += 1
            self.got_fin = True

    @property
    def done(self) -> bool:
        fin_acked = self.snd_una == self.data_end + 1
        return self.got_fin and fin_acked

    def timer(self) -> float | None:
        return self.t_rto


def run(sc: Scenario) -> tuple[float, TcpEndpoint]:
    rng = random.Random(sc.seed)
    upload = rng.randbytes(sc.upload)
    download = rng.randbytes(sc.download)
    peer = Peer(sc, rng, upload)
    egress = Egress()
    params = TcpParams(
        cc=sc.cc,
        rcv_buffer=sc.ep_rcv_buffer,
        snd_buffer=sc.ep_snd_buffer,
        snd_buffer_max=sc.ep_snd_buffer_max,
        rcv_buffer_max=sc.ep_rcv_buffer_max,
        sack=True,
        keepalive_idle=0.0,
    )
    now = 0.0
    ep = TcpEndpoint(
        params,
        local=(HOST_IP, HOST_PORT),
        remote=(GUEST_IP, GUEST_PORT),
        iss=sc.iss,
        now=now,
        egress=egress,
        peer=0,
        budget=SendBudget((sc.ep_snd_buffer_max + sc.ep_rcv_buffer_max) * 3 // 2),
    )
    started = False
    net: list[tuple[float, int, str, bytes]] = []
    counter = 0
    host_got = bytearray()
    host_written = 0
    host_closed = False

    def transmit(pkts: list[bytes] | list[bytearray], dest: str) -> None:
        nonlocal counter
        for pkt in pkts:
            if rng.random() < sc.loss:
                continue
            copies = 2 if rng.random() < sc.dup else 1
            for _ in range(copies):
                counter += 1
                heapq.heappush(
                    net, (now + 0.005 + rng.random() * sc.jitter, counter, dest, bytes(pkt))
                )

    def outputs() -> None:
        transmit(egress.packets, "guest")
        egress.packets.clear()
        transmit(peer.out, "ep")
        peer.out.clear()

    peer.start(now)
    outputs()
    limit = 3000.0
    finished_at: float | None = None
    while now < limit:
        host_busy = (
            ep.readable() > 0
            or peer.unread > 0
            or (ep.state is not TcpState.CLOSED and host_written < len(download))
        )
        candidates = [limit]
        if net:
            candidates.append(net[0][0])
        t = ep.get_timer()
        if t is not None:
            candidates.append(t)
        t = peer.timer()
        if t is not None:
            candidates.append(t)
        if host_busy:
            candidates.append(now + 0.002)
        now = max(now, min(candidates))
        while net and net[0][0] <= now:
            _, _, dest, pkt = heapq.heappop(net)
            if dest == "guest":
                peer.on_packet(pkt, now)
            elif not started:
                p = tcp.parse(pkt, len(pkt))
                if p is not None and p[6] & SYN and not p[6] & ACK:
                    ep.on_syn(memoryview(pkt), len(pkt), now)
                    ep.accept(now)
                    started = True
            else:
                ep.receive(memoryview(pkt), len(pkt), now)
                ep.flush(now)
        t = ep.get_timer()
        if t is not None and t <= now:
            ep.handle_timer(now)
        t = peer.timer()
        if t is not None and t <= now:
            peer.on_timer(now)
        # The host application (the bridge's side of the endpoint).
        if started:
            budget = sc.host_read_rate
            while budget and ep.readable():
                view = ep.peek_data()[:budget]
                host_got += view
                ep.consume(len(view), now)
                budget -= len(view)
        if started and ep.state is not TcpState.CLOSED:
            while host_written < len(download) and ep.send_space():
                buf = ep.write_buffer(len(download) - host_written)
                k = len(buf)
                buf[:] = download[host_written : host_written + k]
                ep.commit_write(k, now)
                host_written += k
            if (
                not host_closed
                and host_written == len(download)
                and (sc.close_order != "guest_first" or ep.guest_fin)
            ):
                ep.shutdown(now)
                host_closed = True
            ep.flush(now)
        peer.app_read(now)
        outputs()
        # A reset is harmless only once the guest has everything and the host side has all
        # the guest's data: then it can only answer a FIN (or an ACK) retransmitted after
        # our short TIME_WAIT ended, because all our ACKs of it were lost.
        assert not peer.reset_seen or (
            peer.got_fin and ep.guest_fin and not ep.reset and not ep.timed_out
        ), "endpoint reset the connection"
        assert not ep.reset and not ep.timed_out, (
            f"connection failed: reset={ep.reset} timed_out={ep.timed_out} "
            f"retransmits={ep.retransmits} rto={ep.rto_expirations}"
        )
        if (
            finished_at is None
            and (peer.done or peer.reset_seen)
            and ep.guest_fin
            and (ep.readable() == 0)
        ):
            finished_at = now
        if finished_at is not None and (
            ep.closed or ep.state is TcpState.TIME_WAIT or now > finished_at + 600
        ):
            break
    assert finished_at is not None, f"transfer did not finish: state {ep.state}"
    assert bytes(peer.received) == download
    assert bytes(host_got) == upload
    assert ep.state in (TcpState.CLOSED, TcpState.TIME_WAIT)
    assert not ep.reset and not ep.timed_out
    return now, ep


scenarios = st.builds(
    Scenario,
    seed=st.integers(0, 2**32),
    upload=st.one_of(st.just(0), st.integers(1, 120_000)),
    download=st.one_of(st.just(0), st.integers(1, 200_000)),
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.15]),
    dup=st.sampled_from([0.0, 0.02, 0.1]),
    jitter=st.sampled_from([0.0, 0.002, 0.02]),
    guest_mss=st.sampled_from([536, 1200, 1460]),
    wscale=st.sampled_from([None, 0, 3, 7]),
    sack=st.booleans(),
    ts=st.booleans(),
    guest_cap=st.sampled_from([3000, 16_000, 65_535, 300_000]),
    guest_read_rate=st.sampled_from([500, 5000, 1_000_000]),
    guest_window_updates=st.booleans(),
    ep_rcv_buffer=st.sampled_from([4096, 65_536, 256 * 1024]),
    ep_snd_buffer=st.sampled_from([8192, 256 * 1024]),
    ep_snd_buffer_max=st.sampled_from([0, 20_000, 1 << 20]),
    ep_rcv_buffer_max=st.sampled_from([0, 20_000, 1 << 20]),
    host_read_rate=st.sampled_from([700, 100_000]),
    cc=st.sampled_from(["newreno", "cubic", "bbr", "off"]),
    close_order=st.sampled_from(["guest_first", "host_first", "together"]),
    iss=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 200_000, 2**32 - 1)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_random_transfers_over_a_bad_network(sc: Scenario) -> None:
    run(sc)


CLEAN = Scenario(
    seed=1,
    upload=1_000_000,
    download=2_000_000,
    loss=0.0,
    dup=0.0,
    jitter=0.0,
    guest_mss=1460,
    wscale=7,
    sack=True,
    ts=True,
    guest_cap=1 << 20,
    guest_read_rate=1 << 30,
    guest_window_updates=True,
    ep_rcv_buffer=256 * 1024,
    ep_snd_buffer=256 * 1024,
    ep_snd_buffer_max=4 << 20,
    ep_rcv_buffer_max=4 << 20,
    host_read_rate=1 << 30,
    cc="cubic",
    close_order="together",
    iss=2**32 - 1000,
)


def test_clean_network_large_transfer_both_ways() -> None:
    run(CLEAN)


@pytest.mark.parametrize("cc", ["bbr", "cubic"])
def test_lossy_reordering_download_through_a_growing_send_ring(cc: str) -> None:
    """Several MB over loss, duplication and reordering while the send ring grows (the
    live bytes are copied into a bigger ring mid-transfer, more than once), with the
    sequence space wrapping: every byte must still arrive, in order."""
    sc = dataclasses.replace(
        CLEAN,
        seed=7,
        upload=50_000,
        download=3_000_000,
        loss=0.02,
        dup=0.02,
        jitter=0.004,
        ep_snd_buffer=16 * 1024,
        ep_snd_buffer_max=1 << 20,
        cc=cc,
        close_order="host_first",
        iss=2**32 - 5000,
    )
    _, ep = run(sc)
    assert ep.snd_capacity > 16 * 1024


def test_lossy_reordering_upload_through_a_growing_receive_ring() -> None:
    """The same for the guest's upload: the receive ring doubles under data held past
    holes at their final places, which must move with it."""
    sc = dataclasses.replace(
        CLEAN,
        seed=11,
        upload=3_000_000,
        download=50_000,
        loss=0.02,
        dup=0.02,
        jitter=0.004,
        ep_rcv_buffer=16 * 1024,
        ep_rcv_buffer_max=1 << 20,
        close_order="guest_first",
        iss=2**32 - 5000,
    )
    _, ep = run(sc)
    assert ep.rcv_capacity > 16 * 1024


segments = st.tuples(
    st.integers(-70_000, 70_000),  # seq relative to what the endpoint expects
    st.integers(-70_000, 70_000),  # ack relative to SND.UNA
    st.integers(0, 0x3F),  # flags
    st.integers(0, 0xFFFF),  # window
    st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),  # raw option bytes
    st.integers(0, 3000),  # payload length
)


@settings(max_examples=200, deadline=None)
@given(st.lists(segments, max_size=30), st.booleans())
def test_arbitrary_segments_never_break_invariants(
    segs: list[tuple[int, int, int, int, bytes, int]], negotiated: bool
) -> None:
    """Whatever a (buggy or hostile) guest sends, the endpoint neither raises nor loses
    track of its own sequence space, and everything it emits is well formed."""
    egress = Egress()
    ep = TcpEndpoint(
        TcpParams(rcv_buffer=8192),
        local=(HOST_IP, HOST_PORT),
        remote=(GUEST_IP, GUEST_PORT),
        iss=2**32 - 10,
        now=0.0,
        egress=egress,
    )
    opts = tcp.options_bytes(mss=1000, wscale=2, sack_perm=True, ts=(5, 0)) if negotiated else b""
    syn = guest_pkt(2**32 - 5, 0, SYN, opts=opts)
    ep.on_syn(memoryview(syn), len(syn), 0.0)
    ep.accept(0.0)
    ep.write(b"h" * 20_000, 0.0)
    now = 0.0
    for rel_seq, rel_ack, flags, window, raw, plen in segs:
        now += 0.05
        pkt = guest_pkt(2**32 - 4 + rel_seq, 2**32 - 9 + rel_ack, flags, b"g" * plen, window, raw)
        ep.receive(memoryview(pkt), len(pkt), now)
        ep.flush(now)
        t = ep.get_timer()
        if t is not None and t <= now + 0.05:
            ep.handle_timer(max(now, t))
        ep.consume(ep.readable(), now)
        assert ep.in_flight >= 0 and ep.readable() >= 0
        for out in egress.packets:
            assert tcp.checksum_ok(out, len(out))
            assert len(out) <= 40 + 1340
        egress.packets.clear()
