"""A download over a simulated path, on a fake clock: the sans-I/O endpoint sends into a
bottleneck (a rate and a drop-tail queue), random loss and a fixed one-way delay each way,
to a small receiver that ACKs like a Linux guest (every second segment, at once on a hole,
SACK blocks, timestamps). The host side always has data to send.

Why a simulation next to the relay rig (impair.py): it runs in a unit test in seconds,
deterministically (seeded loss, no scheduler noise), so the behaviour of a congestion
controller on a 40 ms lossy path can be a test that fails when a change breaks it, not only
a benchmark figure. It is a model of a path, not of Linux: the relay benchmarks remain the
measure against the kernel.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from wgslirp.net import tcp
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, TcpState
from wgslirp_testkit.tcpconn import GUEST_IP, GUEST_PORT, HOST_IP, HOST_PORT, Egress, guest_pkt

ACK, SYN = tcp.ACK, tcp.SYN
M = 0xFFFFFFFF


@dataclass
class PathResult:
    seconds: float
    delivered: int  # in-order bytes the receiver got
    retransmits: int
    fast_retransmits: int
    rto_expirations: int
    snd_capacity: int  # the send ring's size at the end
    max_queue_delay: float  # worst time a segment waited in the bottleneck queue
    queue_drops: int
    mean_queue_delay: float = 0.0  # time average of the bottleneck queue's delay (what a ping sees)
    spurious_undos: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, cwnd, in flight)

    @property
    def mbit(self) -> float:
        return self.delivered * 8 / self.seconds / 1e6


class _Receiver:
    """The guest: cumulative ACK, SACK ranges for what arrived past a hole."""

    def __init__(self, irs: int, wscale: int) -> None:
        self.nxt = irs  # next expected byte, unwrapped
        self.ranges: list[list[int]] = []  # out-of-order [start, end), sorted
        self.latest: list[int] | None = None
        self.unacked = 0
        self.ts_recent = 0
        self.wscale = wscale
        self.delivered = 0
        self.last_ack = irs  # RCV.NXT in the last ACK sent (RFC 7323's Last.ACK.sent)
        self.dup: tuple[int, int] | None = None  # D-SACK for the next ACK

    def on_data(self, seq: int, n: int, tsval: int) -> bool:
        """Returns whether to ACK at once."""
        if seq <= self.last_ack and (tsval - self.ts_recent) & M < 1 << 31:
            self.ts_recent = tsval  # RFC 7323 4.3: only at the left edge, never backwards
        end = seq + n
        if end <= self.nxt or any(r[0] <= seq and end <= r[1] for r in self.ranges):
            self.dup = (seq, end)  # a duplicate: ACK at once with a D-SACK, as Linux does
            return True
        if seq <= self.nxt:
            self.delivered += end - self.nxt
            self.nxt = end
            filled = False
            while self.ranges and self.ranges[0][0] <= self.nxt:
                r = self.ranges.pop(0)
                if r[1] > self.nxt:
                    self.delivered += r[1] - self.nxt
                    self.nxt = r[1]
                filled = True
            self.unacked += n
            if filled or self.ranges:
                return True
            return self.unacked >= 2 * 1340
        # Past a hole: merge into the ranges.
        new = [seq, end]
        merged: list[list[int]] = []
        for r in self.ranges:
            if r[1] < new[0] or r[0] > new[1]:
                merged.append(r)
            else:
                new = [min(r[0], new[0]), max(r[1], new[1])]
        merged.append(new)
        merged.sort()
        self.ranges = merged
        self.latest = new
        return True

    def sack_blocks(self) -> list[tuple[int, int]]:
        blocks: list[tuple[int, int]] = []
        if self.dup is not None:
            blocks.append((self.dup[0] & M, self.dup[1] & M))
            self.dup = None
        if self.latest is not None and self.latest in self.ranges:
            blocks.append((self.latest[0] & M, self.latest[1] & M))
        for r in reversed(self.ranges):
            if len(blocks) >= 3:
                break
            if r is not self.latest:
                blocks.append((r[0] & M, r[1] & M))
        return blocks


def run(
    cc: str,
    *,
    rate_mbit: float = 20.0,
    rtt: float = 0.040,
    loss: float = 0.0,
    reorder: float = 0.0,
    queue_packets: int = 200,
    seconds: float = 10.0,
    seed: int = 1,
    snd_buffer: int = 4 << 20,
    snd_buffer_max: int = 0,
    budget: SendBudget | None = None,
    trace_every: float = 0.0,
    epoch: float = 10_000.0,
) -> PathResult:
    """Download for `seconds` of fake time; loss applies to each direction; `reorder` is
    the share of data segments that arrive 2 ms early, overtaking others (the relay's
    model, impair.py). The clock starts at `epoch`, not 0: a router's monotonic clock is
    hours past zero, and a timestamp initialised to 0.0 once hid a bug (BBR's RTprop)."""
    rng = random.Random(seed)
    egress = Egress()
    params = TcpParams(
        cc=cc, mss=1340, snd_buffer=snd_buffer, snd_buffer_max=snd_buffer_max, rcv_buffer=1 << 20
    )
    now = epoch
    ep = TcpEndpoint(
        params,
        local=(HOST_IP, HOST_PORT),
        remote=(GUEST_IP, GUEST_PORT),
        iss=1000,
        now=now,
        egress=egress,
        peer=0,
        budget=budget,
    )
    gseq = 500_000
    syn = guest_pkt(
        gseq,
        0,
        SYN,
        window=65535,
        opts=tcp.options_bytes(mss=1460, wscale=7, sack_perm=True, ts=(1, 0)),
    )
    ep.on_syn(memoryview(syn), len(syn), now)
    ep.accept(now)
    (synack,) = egress.take()
    rx = _Receiver(synack.seq + 1, 7)
    gseq += 1
    one_way = rtt / 2
    bytes_per_s = rate_mbit * 1e6 / 8
    heap: list[tuple[float, int, int, bytes]] = []  # (time, order, 0 = to ep / 1 = to rx, pkt)
    order = 0
    link_free = 0.0
    queued: list[float] = []  # departure times of what is in the bottleneck queue
    max_qdelay = 0.0
    q_area = 0.0  # integral of the queue's delay over time
    q_at = epoch  # when q_area was last brought up to date
    qdrops = 0
    samples: list[tuple[float, int, int]] = []
    next_sample = 0.0
    delack_at = float("inf")

    def ack_pkt(t: float) -> bytes:
        rx.last_ack = rx.nxt
        opts = tcp.options_bytes(ts=(int(t * 1000) & M, rx.ts_recent), sack=rx.sack_blocks())
        return bytes(guest_pkt(gseq, rx.nxt, ACK, window=65535, opts=opts))

    def to_ep(pkt: bytes, t: float) -> None:
        nonlocal order
        if rng.random() < loss:
            return
        order += 1
        heapq.heappush(heap, (t + one_way, order, 0, pkt))

    def send_out(t: float) -> None:
        nonlocal order, link_free, max_qdelay, qdrops, q_area, q_at
        if egress.packets:
            # The queue's delay falls at one second per second until link_free.
            if link_free > q_at:
                rest = link_free - t if link_free > t else 0.0
                q_area += ((link_free - q_at) ** 2 - rest**2) / 2
            q_at = t
        for pkt in egress.packets:
            if rng.random() < loss:
                continue
            while queued and queued[0] <= t:
                queued.pop(0)
            if len(queued) >= queue_packets:
                qdrops += 1
                continue
            start = max(t, link_free)
            max_qdelay = max(max_qdelay, start - t)
            link_free = start + len(pkt) / bytes_per_s
            queued.append(link_free)
            order += 1
            arrive = link_free + one_way
            if reorder and rng.random() < reorder:
                arrive -= 0.002
            heapq.heappush(heap, (arrive, order, 1, pkt))
        egress.packets.clear()

    # The guest's ACK of the SYN-ACK, one round trip later.
    now = epoch + rtt
    first = guest_pkt(gseq, rx.nxt, ACK, window=65535, opts=tcp.options_bytes(ts=(1, 0)))
    ep.receive(memoryview(first), len(first), now)
    chunk = b"\0" * 65536
    end_at = epoch + seconds
    while now < end_at:
        while ep.send_space() > 0 and ep.state is TcpState.ESTABLISHED:
            buf = ep.write_buffer(len(chunk))
            k = len(buf)
            if not k:
                break
            buf[:] = chunk[:k]
            ep.commit_write(k, now)
        ep.flush(now)
        send_out(now)
        if trace_every and now >= next_sample:
            samples.append((now - epoch, ep.cc.cwnd, ep.in_flight))
            next_sample = now + trace_every
        t_next = min(heap[0][0] if heap else end_at, end_at, delack_at)
        t = ep.get_timer()
        if t is not None and t < t_next:
            t_next = t
        now = max(now, t_next)
        if now >= delack_at:
            delack_at = float("inf")
            rx.unacked = 0
            to_ep(ack_pkt(now), now)
        while heap and heap[0][0] <= now:
            _, _, dest, pkt = heapq.heappop(heap)
            if dest == 0:
                ep.receive(memoryview(pkt), len(pkt), now)
                continue
            parsed = tcp.parse(pkt, len(pkt))
            assert parsed is not None
            seq_w, plen, ooff, poff = parsed[4], parsed[10], parsed[8], parsed[9]
            opts = tcp.parse_options(pkt, ooff, poff)
            tsval = opts.ts_val or 0 if opts is not None else 0
            seq = rx.nxt + ((seq_w - rx.nxt) & M)
            if (seq_w - rx.nxt) & M >= 1 << 31:
                seq = rx.nxt - ((rx.nxt - seq_w) & M)
            if plen and rx.on_data(seq, plen, tsval):
                rx.unacked = 0
                delack_at = float("inf")
                to_ep(ack_pkt(now), now)
            elif plen and delack_at == float("inf"):
                delack_at = now + 0.040
        t = ep.get_timer()
        if t is not None and t <= now:
            ep.handle_timer(now)
    return PathResult(
        seconds=seconds - rtt,
        delivered=rx.delivered,
        retransmits=ep.retransmits,
        fast_retransmits=ep.fast_retransmits,
        rto_expirations=ep.rto_expirations,
        snd_capacity=ep.snd_capacity,
        max_queue_delay=max_qdelay,
        queue_drops=qdrops,
        mean_queue_delay=q_area / (seconds - rtt),
        spurious_undos=ep.spurious_undos,
        samples=samples,
    )
