"""Sans-I/O TCP endpoint: the router's side of one guest connection (RFC 9293).

The endpoint stands in for the remote host. Usually the guest opens (`on_syn`, then
`accept` or `refuse` once the host connect is decided); for an inbound forward the endpoint
opens toward the guest (`connect`: SYN-SENT, simultaneous open included) and `refused` says
the guest answered with RST. Guest bytes land in a
receive ring the bridge drains into the host socket (`peek_data`/`consume`); host bytes land in
a send ring the bridge fills from the host socket (`write_buffer`/`commit_write`) and the
endpoint sends them to the guest within the guest's window and the congestion window. Time is
passed in; packets go out through an `Egress` the bridge supplies; nothing here blocks.

Sequence numbers. Every 32-bit number from the wire is unwrapped once (`tcp_seq.unwrap`)
against RCV.NXT or SND.UNA into an unbounded integer, so all the state below is plain
integers and comparisons need no modular care (see tcp_seq's docstring).

Buffers. Each ring (TCP_RCV_BUFFER and TCP_SND_BUFFER, 1 MiB each by default in TcpConfig)
is lent by the process's tcp_rings pool only while bytes wait in it, and handed back once
drained (`_shed_rings`, from flush): an idle connection holds no ring and no kernel mapping,
and a busy one pays for the window it uses (pages are committed only when touched).
Out-of-order data is written straight into the receive ring at its final place (the ring
covers the whole window we advertise, so any acceptable segment has a slot); reassembly only
tracks which ranges arrived (tcp_recovery.OutOfOrder), and delivery is advancing RCV.NXT.
Unacked data toward the guest stays in the send ring until acknowledged, which is the
retransmission queue: a retransmission re-reads the ring. The owner calls `release` when it
drops the connection, or the rings it holds are lost to the pool.

Recovery. What loss recovery knows (the RTT estimator, the guest's SACK reports, our
out-of-order ranges) lives in tcp_recovery and the window arithmetic in tcp_cc; this module
decides when each is consulted and moves the bytes (see tcp_recovery's docstring).

Fast path. `receive` first tries header prediction (RFC 9293 3.10.7.4, Van Jacobson's
scheme): ESTABLISHED, only ACK/PSH, the next expected sequence number, no reassembly pending,
no options or the standard timestamp layout, and either pure new data or a plain new ACK.
That is the segment of every bulk transfer, and it touches a handful of attributes; anything
else goes through the full RFC processing in `_slow`.

For the bridge. `receive`, `consume`, `commit_write` and `shutdown` only change state;
`flush` sends (call it after them); `accept`, `refuse` and `abort` send at once. `closed`
turns true only once the host side has also taken every guest byte, so a graceful close never
loses data; `reset` (the guest reset) and `timed_out` (we gave up and sent RST) discard them.
`reopen` means a fresh SYN for this 4-tuple arrived while we sat in TIME_WAIT: drop this
endpoint and open a new one with that SYN. Segments are at most 40 + `TcpParams.mss` bytes,
so `mss` must be the tunnel MTU minus 40; an IPv6 endpoint (`v6=True`) writes 60-byte
headers, so its `mss` must be the tunnel MTU minus 60 (the bridge gives it such params).
"""

from __future__ import annotations

import enum
import struct
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Final

from wgslirp.net import tcp
from wgslirp.net.checksum import run_sums
from wgslirp.slirp import tcp_cc
from wgslirp.slirp.bridge_context import Egress
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_prr import Prr
from wgslirp.slirp.tcp_rate import DeliveryRate
from wgslirp.slirp.tcp_recovery import (
    CLOCK_GRANULARITY,
    OutOfOrder,
    RttEstimator,
    SackScoreboard,
)
from wgslirp.slirp.tcp_rings import EMPTY, NO_RING, POOL
from wgslirp.slirp.tcp_seq import MASK, unwrap

INF: Final = float("inf")
_HALF: Final = 1 << 31

_FIN: Final = tcp.FIN
_SYN: Final = tcp.SYN
_RST: Final = tcp.RST
_PSH: Final = tcp.PSH
_ACK: Final = tcp.ACK
_ECE: Final = tcp.ECE
_CWR: Final = tcp.CWR

_HDR = struct.Struct(">HHIIHH")  # the TCP header fields receive() needs
_TS = struct.Struct(">II")
_TS_PREFIX: Final = tcp.TS_PREFIX
_TS_OPT = struct.Struct(">III")  # the RFC 7323 Appendix A layout: NOP NOP 8 10, TSval, TSecr
_TS_PREFIX_WORD: Final = int.from_bytes(tcp.TS_PREFIX, "big")

CHALLENGE_ACK_LIMIT: Final = 10  # RFC 5961 7: challenge ACKs per second
EGRESS_RETRY: Final = 0.002  # egress ring full: look again this soon
PACE_QUANTUM: Final = tcp_cc.PACE_QUANTUM  # (the reason is there)
# Tail loss probes (RFC 8985 7): never sooner than this, and this much later when a single
# segment is in flight (the guest may hold its ACK for its delayed-ACK time; Linux's
# minimum is 40 ms).
TLP_MIN: Final = 0.010
TLP_DELACK_ALLOWANCE: Final = 0.040
# Recovery retransmissions watched for a second loss: one per hole, so up to a send ring's
# worth of segments (a 4 MiB ring is ~3100); 256 left most of a slow-start overshoot's
# holes unwatched, and each lost retransmission among them cost a timeout.
MAX_REXMIT_LOG: Final = 4096
# Entries past a stuck head of that log looked at for a later resend already delivered
# (see _lost_resends): a bound on the work per ACK while one resend is outstanding.
RACK_PEEK: Final = 16
# Never appended to (the endpoint swaps in its own first); only read, cleared when empty.
_NO_REXMIT: Final[deque[int]] = deque()
_NO_REXMIT_SET: Final[set[int]] = set()
_NO_LOG: Final[deque[tuple[int, float, int, int]]] = deque()
_NO_SUMS: Final[list[int]] = []
# Trains of new full segments whose payloads are summed in one numpy call: from 2 (one
# call costs less than two sum_at calls) to 64 (an egress GSO train).
TRAIN_MIN: Final = 2
TRAIN_MAX: Final = 64


class TcpState(enum.Enum):
    LISTEN_PENDING = "LISTEN_PENDING"  # guest SYN stored, host connect in progress
    SYN_SENT = "SYN_SENT"  # active open (inbound forward): our SYN is out to the guest
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME_WAIT"
    CLOSED = "CLOSED"


_LISTEN: Final = TcpState.LISTEN_PENDING
_SYN_RCVD: Final = TcpState.SYN_RECEIVED
_SYN_SENT: Final = TcpState.SYN_SENT
_EST: Final = TcpState.ESTABLISHED
_CLOSE_WAIT: Final = TcpState.CLOSE_WAIT
_LAST_ACK: Final = TcpState.LAST_ACK
_FIN_WAIT_1: Final = TcpState.FIN_WAIT_1
_FIN_WAIT_2: Final = TcpState.FIN_WAIT_2
_CLOSING: Final = TcpState.CLOSING
_TIME_WAIT: Final = TcpState.TIME_WAIT
_CLOSED: Final = TcpState.CLOSED

# States in which we may still send data or our FIN (or must retransmit them).
_SENDING: Final = frozenset({_EST, _CLOSE_WAIT, _FIN_WAIT_1, _CLOSING, _LAST_ACK})
# States in which data from the guest is still accepted (it has not sent its FIN).
_RECEIVING: Final = frozenset({_EST, _FIN_WAIT_1, _FIN_WAIT_2})


@dataclass(frozen=True)
class TcpParams:
    mss: int = 1340  # our MSS ceiling (WG_MTU - 40, lowered by TCP_MSS_CLAMP)
    sack: bool = True  # TCP_ENABLE_SACK; used only when the guest offers SACK
    ack_delay: float = 0.010  # TCP_ACK_DELAY_MS / 1000
    # The two ring sizes. The router passes TcpConfig's TCP_RCV_BUFFER / TCP_SND_BUFFER
    # (1 MiB each unless set); 256 KiB here is only what direct users and tests get.
    rcv_buffer: int = 256 * 1024  # guest bytes held before the host side takes them
    snd_buffer: int = 256 * 1024  # bytes toward the guest held (unacked + unsent)
    # TCP_SND_BUFFER_MAX: the send ring grows toward this while cwnd wants more than half
    # of it, out of the process's SendBudget (tcp_buffers); equal to snd_buffer = fixed.
    snd_buffer_max: int = 0  # 0 = snd_buffer
    # TCP_RCV_BUFFER_MAX: the receive ring (the window offered) doubles toward this while
    # the guest delivers more than half of it per round trip, from the same budget.
    rcv_buffer_max: int = 0  # 0 = rcv_buffer
    ecn: bool = True  # TCP_ECN: accept ECN (RFC 3168) when the guest's SYN asks for it
    wscale: int = 7  # our window-scale shift, used only if the guest sent WS
    cc: str = "newreno"  # "newreno" | "cubic" | "off" (TCP_CC)
    rto_min: float = 0.2
    rto_max: float = 60.0
    rto_initial: float = 1.0
    # TIME_WAIT exists to absorb old duplicates of this 4-tuple and to re-ACK a
    # retransmitted final FIN. Our "network" is one WireGuard hop: a segment cannot linger
    # for the 2 minutes of MSL, only for the tunnel's queueing (milliseconds); the guest
    # retransmits a lost final FIN within its RTO (200 ms to 1 s), which 2 s still covers;
    # and only the guest itself can reuse the 4-tuple, and its own stack keeps its TIME_WAIT.
    # Holding state longer would only pin a host socket and a flow-table slot.
    time_wait: float = 2.0
    keepalive_idle: float = 0.0  # 0 = off; else probe the guest after this idle time
    keepalive_interval: float = 10.0
    keepalive_count: int = 6  # unanswered probes before the connection is given up
    idle_timeout: float = 3600.0  # reset a connection idle this long (0 = never)
    max_ooo_bytes: int = 256 * 1024  # how far past RCV.NXT out-of-order data is kept
    ttl: int = 64
    init_cwnd: int = 10  # initial window in segments (RFC 6928; TCP_INIT_CWND_MSS)
    max_retries: int = 15  # consecutive RTO expirations before giving up (RST)
    synack_retries: int = 5  # SYN-ACK retransmissions before giving up silently
    # Active open (inbound forwards): SYN retransmissions before giving up, and a bound on
    # the whole of SYN-SENT (0 = only the retries bound it: 1+2+4+8+16+32 s at the
    # defaults). A host client waiting on a guest that never answers is closed then.
    syn_retries: int = 5
    syn_timeout: float = 0.0
    pace: float = 0.0  # TCP_PACE_US / 1e6: least time between new data segments (0 = off)
    # TCP_PACING: new data leaves at a rate derived from cwnd / srtt (2x in slow start,
    # 1.2x after, as Linux paces), in bursts of at most PACE_QUANTUM of that rate.
    pacing: bool = True
    # TCP_ACK_IDLE_FAIL_SEC: reset a connection whose guest has acknowledged nothing for
    # this long while at least ack_idle_min_inflight bytes wait for it (0 = never).
    ack_idle_fail: float = 120.0
    ack_idle_min_inflight: int = 0  # 0 = one MSS


def _move(old: memoryview, cap: int, new: memoryview, want: int, pos: int, n: int) -> None:
    """Copy `n` bytes from offset `pos` (modulo each ring's size) of the ring `old` to the
    same offset of the bigger ring `new`: a byte of sequence number s lives at (s - base)
    % size in either, so nothing else changes when a ring grows. At most three pieces:
    either ring may wrap once."""
    src = pos % cap
    dst = pos % want
    done = 0
    while done < n:
        k = min(n - done, cap - src, want - dst)
        new[dst : dst + k] = old[src : src + k]
        done += k
        src = (src + k) % cap
        dst = (dst + k) % want


def _ts_offset(iss: int) -> int:
    """What is added to our clock in TSval, from the ISS: hides our uptime."""
    return ((iss & MASK) * 2654435761) & MASK


def _segment_writer(
    params: TcpParams, local: tuple[int, int], remote: tuple[int, int], iss: int, v6: bool
) -> tcp.SegmentWriter | tcp.SegmentWriter6:
    if v6:
        return tcp.SegmentWriter6(local[0], remote[0], local[1], remote[1], params.ttl)
    return tcp.SegmentWriter(local[0], remote[0], local[1], remote[1], params.ttl, 0, iss >> 7)


def _read_syn(pkt: memoryview, n: int) -> tuple[tcp.Parsed, tcp.Options] | None:
    """A guest's opening SYN (no ACK, no RST) and its options; None for anything else.
    Shared by `on_syn` and `synack_into`, which must read a SYN alike."""
    parsed = tcp.parse(pkt, n)
    if parsed is None or not parsed[6] & _SYN or parsed[6] & (_ACK | _RST):
        return None
    opts = tcp.parse_options(pkt, parsed[8], parsed[9])
    return parsed, opts if opts is not None else tcp.Options()


def _our_wscale(params: TcpParams) -> int:
    """The window scale we offer (used only if the guest offered one too)."""
    return min(max(params.wscale, 0), tcp.MAX_WSCALE)


def _ecn_asked(params: TcpParams, flags: int) -> bool:
    """RFC 3168 6.1.1: a SYN with ECE and CWR asks for ECN; the SYN-ACK's ECE agrees."""
    return params.ecn and flags & (_ECE | _CWR) == _ECE | _CWR


def synack_into(
    out: memoryview,
    params: TcpParams,
    *,
    local: tuple[int, int],
    remote: tuple[int, int],
    iss: int,
    syn: memoryview,
    n: int,
    now: float,
    v6: bool = False,
) -> tuple[int, tcp.SegmentWriter | tcp.SegmentWriter6]:
    """The SYN-ACK that `TcpEndpoint(...)`, `on_syn(syn)` and `accept(now)` would send,
    written into `out` without building the endpoint; its length (0 if `syn` is not a
    plain SYN: then nothing is written) and the writer, which the endpoint built afterwards
    takes (`writer=`, then `accept(now, sent=True)`).

    Why: a host connect that completed inside connect() can be answered before the
    endpoint exists, whose construction (~130 fields, its controller, estimators and
    scoreboards) was most of the work between the connect and the SYN-ACK on a cold CPU:
    in a worker's turn, SYNs 20 ms apart, medians, TcpEndpoint + on_syn + accept took 83 us
    and the bridge's whole answer through this takes 56-60. It decides what `on_syn` and
    `_syn_options` decide; test_tcp_synack compares both paths' bytes, and what the
    connection sends afterwards, for every option a guest may offer."""
    writer = _segment_writer(params, local, remote, iss, v6)
    got = _read_syn(syn, n)
    if got is None:
        return 0, writer
    parsed, opts = got
    ts = None
    if opts.ts_val is not None:
        ts = ((int(now * 1000) + _ts_offset(iss)) & MASK, opts.ts_val)
    options = tcp.options_bytes(
        mss=params.mss,
        wscale=None if opts.wscale is None else _our_wscale(params),
        sack_perm=opts.sack_perm and params.sack,
        ts=ts,
    )
    flags = _SYN | _ACK
    if _ecn_asked(params, parsed[6]):
        flags |= _ECE
    window = min(max(params.rcv_buffer, 1), 0xFFFF)
    return writer.write(out, iss & MASK, parsed[4] + 1, flags, window, options, 0), writer


class TcpEndpoint:
    """One guest connection; see the module docstring for the shape."""

    __slots__ = (
        "_ack_delay",
        "_ack_now",
        "_active",
        "_budget",
        "_challenge_count",
        "_challenge_second",
        "_cwr_out",
        "_dupacks",
        "_ece_out",
        "_ecn_ok",
        "_ecn_recover",
        "_fin_queued",
        "_fin_seq",
        "_guest_mss",
        "_hlen",
        "_in_recovery",
        "_ka_probes",
        "_last_ack_sent",
        "_last_host",
        "_last_rx",
        "_lost_run_end",
        "_max_snd_wnd",
        "_mss",
        "_next_pace",
        "_ooo",
        "_ooo_fin",
        "_ooo_ranges",
        "_p",
        "_pace_at",
        "_pending_rst",
        "_persist_backoff",
        "_probes",
        "_prr",
        "_rack_mark",
        "_rack_rxt_n",
        "_rate",
        "_rate_s",
        "_rcv_adv_edge",
        "_rcv_base",
        "_rcv_buf",
        "_rcv_cap",
        "_rcv_lent",
        "_rcv_mss",
        "_rcv_mv",
        "_rcv_nxt",
        "_rcv_read",
        "_rcv_space_at",
        "_rcv_space_seq",
        "_rcv_ws",
        "_recover",
        "_recovery_room",
        "_reord",
        "_retries",
        "_rexmit",
        "_rexmit_high",
        "_rexmit_log",
        "_rexmit_set",
        "_rto_loss",
        "_rtt",
        "_rxt_n",
        "_sack",
        "_sack_ok",
        "_sacked",
        "_sent_head",
        "_sent_s",
        "_sent_t",
        "_snd_base",
        "_snd_buf",
        "_snd_cap",
        "_snd_end",
        "_snd_grow_at",
        "_snd_lent",
        "_snd_max",
        "_snd_mv",
        "_snd_nxt",
        "_snd_una",
        "_snd_wl1",
        "_snd_wl2",
        "_snd_wnd",
        "_snd_ws",
        "_sws_thresh",
        "_syn_deadline",
        "_synack_now",
        "_synack_rexmitted",
        "_t_delack",
        "_t_pace",
        "_t_persist",
        "_t_rack",
        "_t_retry",
        "_t_rto",
        "_t_tlp",
        "_t_tw",
        "_tlp_high",
        "_ts_offset",
        "_ts_ok",
        "_ts_recent",
        "_unacked",
        "_undo",
        "_undo_marker",
        "_undo_retrans",
        "_undo_ts",
        "_undo_until",
        "_writer",
        "_wscale_ok",
        "bytes_in",
        "bytes_out",
        "cc",
        "challenge_acks",
        "dup_acks",
        "ecn_ce",
        "ecn_reductions",
        "egress",
        "fast_retransmits",
        "guest_fin",
        "irs",
        "iss",
        "last_ack_progress",
        "local",
        "lost_retransmits",
        "ooo_segments",
        "peer",
        "refused",
        "remote",
        "reopen",
        "reset",
        "retransmits",
        "rto_expirations",
        "spurious_undos",
        "state",
        "timed_out",
        "tlp_probes",
    )

    def __init__(
        self,
        params: TcpParams,
        *,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: int,
        now: float,
        egress: Egress,
        peer: int = 0,
        budget: SendBudget | None = None,
        v6: bool = False,
        writer: tcp.SegmentWriter | tcp.SegmentWriter6 | None = None,
    ) -> None:
        """`writer`: the one `synack_into` wrote this connection's SYN-ACK with (then
        `accept(now, sent=True)`), so its IPv4 identification carries on from there."""
        self._p = params
        self.local = local
        self.remote = remote
        self.egress = egress
        self.peer = peer
        self.state = _LISTEN
        self.guest_fin = False  # guest FIN received in order: no more guest data will come
        self.reset = False  # the guest reset the connection
        self.timed_out = False  # we gave up (retries, keepalive, idle) and sent RST
        self.reopen = False  # a new SYN for this 4-tuple arrived in TIME_WAIT (see receive)
        self.refused = False  # active open: the guest answered our SYN with RST
        self._active = False  # we sent the first SYN (tcp_endpoint.connect)
        self._syn_deadline = INF
        self._writer = (
            writer if writer is not None else _segment_writer(params, local, remote, iss, v6)
        )
        self._hlen = self._writer.header_len
        self._ack_delay = params.ack_delay

        iss &= MASK
        self.iss = iss
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_max = iss
        self._snd_base = iss + 1  # sequence number of the first data byte
        self._snd_end = iss + 1  # one past the last byte queued by the host side
        self._snd_cap = max(params.snd_buffer, 1)
        self._snd_buf = NO_RING  # the ring's slot in tcp_rings.POOL while it holds one
        self._snd_mv = EMPTY
        self._budget = budget
        self._snd_lent = 0  # bytes of the ring above snd_buffer, taken from the budget
        # cwnd above this makes the ring grow (see _grow_send); INF: it cannot
        can_grow = budget is not None and params.snd_buffer_max > self._snd_cap
        self._snd_grow_at = self._snd_cap // 2 if can_grow else 1 << 62
        self._snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = iss
        self._max_snd_wnd = 0
        self._snd_ws = 0
        self._fin_queued = False
        self._fin_seq = -1

        self.irs = 0
        self._rcv_nxt = 0
        self._rcv_base = 0
        self._rcv_read = 0
        self._rcv_cap = max(params.rcv_buffer, 1)
        self._rcv_buf = NO_RING
        self._rcv_mv = EMPTY
        self._rcv_lent = 0  # bytes of the receive ring above rcv_buffer, from the budget
        self._rcv_space_at = INF  # when to look at the guest's rate again (_rcv_space)
        self._rcv_space_seq = 0  # RCV.NXT then
        self._rcv_adv_edge = 0
        self._rcv_ws = 0
        self._rcv_mss = min(tcp.DEFAULT_MSS, params.mss)
        self._ooo = OutOfOrder(params.max_ooo_bytes)
        # The range list itself, which OutOfOrder only changes in place: header prediction
        # tests it for emptiness on every segment, and one attribute load is all that costs.
        self._ooo_ranges = self._ooo.ranges
        self._ooo_fin = -1
        self._ack_now = False
        self._unacked = 0
        self._last_ack_sent = 0

        self._guest_mss = tcp.DEFAULT_MSS
        self._mss = min(tcp.DEFAULT_MSS, params.mss)  # payload of a full data segment
        self._sws_thresh = 1
        self._wscale_ok = False
        self._sack_ok = False
        self._ts_ok = False
        self._ts_recent = 0
        self._ts_offset = _ts_offset(iss)

        self.cc = tcp_cc.make(params.cc, self._mss, params.init_cwnd * self._mss)
        self.cc.paced = params.pacing
        # Delivery-rate samples only for a controller that steers by them (BBR): the
        # bookkeeping is per send batch and per ACK, not free on the hot path.
        self._rate = DeliveryRate(now) if self.cc.uses_rate else None
        self._rate_s = iss  # SND.UNA plus the SACKed bytes above it, at the last ACK
        self._rto_loss = False  # a timeout's data is not all acknowledged yet
        self._dupacks = 0
        # ECN (RFC 3168), if the guest's SYN asked for it: _ece_out echoes a CE mark on
        # our ACKs until the guest answers with CWR; _cwr_out marks our next new data
        # after we reduced for its ECE; one reduction per window (_ecn_recover).
        self._ecn_ok = False
        self._ece_out = False
        self._cwr_out = False
        self._ecn_recover = iss
        self._in_recovery = False
        self._recovery_room = 0  # new data SACK recovery may send beyond SND.MAX
        self._recover = iss
        # Proportional rate reduction (tcp_prr) for a loss-based controller's SACK
        # recovery, made at the connection's first recovery (most never have one).
        self._prr: Prr | None = None
        # Undoing a reduction that was not needed (RFC 2883's D-SACK as Linux uses it,
        # and the timestamp test of RFC 3522, Eifel): the controller's state before the
        # episode, the segment where it began (-1: nothing to undo), how many segments it
        # resent that the guest has not reported as duplicates, and our TSval when it
        # began; an ACK echoing an older TSval at its end was sent for an original.
        self._undo: object = None
        self._undo_marker = -1
        self._undo_retrans = 0
        self._undo_ts = 0
        self._undo_until = -1  # after recovery: late D-SACKs may still undo up to here
        # Starts of segments to retransmit, in order, and the same as a set: pacing can
        # hold thousands of them after a burst loss, so membership and popping must not
        # cost a scan (a list did: 81 % of a core at 3 Mbit/s, bench_wan 50ms+100mbit).
        # (Shared empty placeholders until the first retransmission: a deque is 624 bytes
        # and a set 216, and most connections never resend; see _queue_rexmit.)
        self._rexmit: deque[int] = _NO_REXMIT
        self._rexmit_set: set[int] = _NO_REXMIT_SET
        self._rexmit_high = iss
        # Each segment resent in SACK recovery or going back N after a timeout, oldest
        # first, watched for a second loss (RACK, RFC 8985 6.2; see _lost_resends).
        # (start, sent at, SND.MAX then, send number): the number orders resends sent at
        # the same instant (one flush sends a pacing quantum of them).
        self._rexmit_log: deque[tuple[int, float, int, int]] = _NO_LOG
        self._rxt_n = 0  # resends logged so far
        self._rack_rxt_n = 0  # the send number of the newest resend known delivered
        self._rack_mark = 0  # _delivered_mark() when _lost_resends last looked
        self._lost_run_end = -1  # end of the last bytes presumed lost (runs, for BBR)
        self._t_tlp = INF  # tail loss probe due (RFC 8985 7)
        # When new data went out: (time, SND.MAX after) per send batch, from _sent_head
        # on, for RACK's rule that a hole is lost only once it was sent a round trip and a
        # reordering window ago (RFC 8985 6.2). New data is sent in sequence order, so the
        # rule becomes a sequence number (see _rack_lost_below).
        self._sent_t: list[float] = []
        self._sent_s: list[int] = []
        self._sent_head = 0
        self._t_rack = INF  # the first hole becomes lost by RACK's rule then
        self._reord = False  # a hole was seen to fill by itself: reordering happens here
        self._tlp_high = -1  # SND.MAX when the outstanding probe went out (-1: none)
        self._sack = SackScoreboard()
        self._sacked = self._sack.ranges  # like _ooo_ranges, for header prediction's test

        self._rtt = RttEstimator(params.rto_initial, params.rto_min, params.rto_max)
        self._retries = 0
        self._synack_now = False
        self._synack_rexmitted = False
        self._pending_rst: tuple[int, int, int] | None = None

        self._t_rto = INF
        self._t_delack = INF
        self._t_persist = INF
        self._persist_backoff = 0
        self._t_tw = INF
        self._t_retry = INF
        self._next_pace = 0.0
        self._pace_at = 0.0  # when the next new segment is due at the pacing rate
        self._t_pace = INF  # new data waits for the pacing rate until then
        self.last_ack_progress = now  # when the guest last acknowledged new data
        self._last_rx = now
        self._last_host = now
        self._ka_probes = 0
        self._probes = 0
        self._challenge_second = 0
        self._challenge_count = 0

        self.retransmits = 0
        self.fast_retransmits = 0
        self.tlp_probes = 0
        self.lost_retransmits = 0
        self.rto_expirations = 0
        self.spurious_undos = 0
        self.ecn_ce = 0  # guest segments that arrived marked CE
        self.ecn_reductions = 0  # window reductions for the guest's ECE
        self.dup_acks = 0
        self.ooo_segments = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.challenge_acks = 0

    # ================================================================== bridge queries

    @property
    def closed(self) -> bool:
        """Nothing left to do: CLOSED and every guest byte taken by the host side."""
        return self.state is _CLOSED and self._rcv_nxt - self.guest_fin == self._rcv_read

    @property
    def tos(self) -> int:
        return self._writer.tos

    @tos.setter
    def tos(self, value: int) -> None:
        """COPY_TOS: the bridge may mirror the guest's DSCP/ECN byte."""
        self._writer.tos = value & 0xFF

    @property
    def rst_unsent(self) -> bool:
        """A RST is due but found the egress ring full (`flush` retries it)."""
        return self._pending_rst is not None

    @property
    def syn_acked(self) -> bool:
        """Our SYN (or SYN-ACK) was acknowledged: the connection was opened."""
        return self._snd_una > self.iss

    @property
    def mss(self) -> int:
        """Payload bytes of a full segment toward the guest."""
        return self._mss

    @property
    def snd_wnd(self) -> int:
        """What the guest's window leaves us beyond SND.UNA, in bytes. The window is kept
        as the guest advertised it, relative to the ACK that carried it (SND.WL2), so a
        later ACK whose window we do not believe cannot stretch the right edge."""
        return max(self._snd_wl2 + self._snd_wnd - self._snd_una, 0)

    @property
    def in_flight(self) -> int:
        return self._snd_max - self._snd_una

    @property
    def srtt(self) -> float:
        return self._rtt.srtt

    @property
    def rto(self) -> float:
        return self._rtt.rto

    def readable(self) -> int:
        return self._rcv_nxt - self.guest_fin - self._rcv_read

    def peek_data(self) -> memoryview:
        avail = self._rcv_nxt - self.guest_fin - self._rcv_read
        if avail <= 0:
            return self._rcv_mv[:0]
        cap = self._rcv_cap
        idx = (self._rcv_read - self._rcv_base) % cap
        end = idx + avail
        return self._rcv_mv[idx : min(end, cap)]

    def consume(self, n: int, now: float) -> None:
        """The host side took `n` bytes. Reopening the window is announced with an ACK only
        when it at least doubles what the guest was last told and grows by the SWS
        threshold (RFC 9293 3.8.6.2.2), so a host reading in small pieces does not make us
        send a window update per read."""
        if n <= 0:
            return
        n = min(n, self.readable())
        self._rcv_read += n
        if self.state not in _RECEIVING:
            return
        cur = self._rcv_adv_edge - self._rcv_nxt
        new = self._rcv_read + self._rcv_cap - self._rcv_nxt
        if new >= 2 * cur and new - cur >= self._sws_thresh:
            self._ack_now = True

    @property
    def snd_capacity(self) -> int:
        """The send ring's current size (it grows with the window, see _grow_send)."""
        return self._snd_cap

    @property
    def rcv_capacity(self) -> int:
        """The receive ring's size now (it grows with the guest's rate; see _rcv_space)."""
        return self._rcv_cap

    def release(self) -> None:
        """The connection is dropped: its rings, and what they borrowed from the budget,
        go back to their pools."""
        if self._snd_buf != NO_RING:
            POOL.give(self._snd_cap, self._snd_buf)
            self._snd_buf, self._snd_mv = NO_RING, EMPTY
        if self._rcv_buf != NO_RING:
            POOL.give(self._rcv_cap, self._rcv_buf)
            self._rcv_buf, self._rcv_mv = NO_RING, EMPTY
        if self._budget is not None and self._snd_lent + self._rcv_lent:
            self._budget.give(self._snd_lent + self._rcv_lent)
        self._snd_lent = self._rcv_lent = 0
        self._snd_grow_at = 1 << 62
        self._rcv_space_at = INF

    def send_space(self) -> int:
        if self._fin_queued or self.state not in _ACCEPTING_WRITES:
            return 0
        head = max(min(self._snd_una, self._snd_end), self._snd_base)
        return self._snd_cap - (self._snd_end - head)

    def write_buffer(self, n: int) -> memoryview:
        space = self.send_space()
        if n > space:
            n = space
        cap = self._snd_cap
        idx = (self._snd_end - self._snd_base) % cap
        if idx + n > cap:
            n = cap - idx
        if n <= 0:
            return EMPTY
        if self._snd_buf == NO_RING:
            self._snd_buf, self._snd_mv = POOL.take(cap)
        return self._snd_mv[idx : idx + n]

    def _shed_rings(self) -> None:
        """Hand back a ring that holds nothing any more (tcp_rings: idle connections hold
        none). The positions in a ring are sequence numbers modulo its size, so a ring
        taken again later needs no bookkeeping."""
        if self._snd_buf != NO_RING and self._snd_end <= max(self._snd_una, self._snd_base):
            POOL.give(self._snd_cap, self._snd_buf)
            self._snd_buf, self._snd_mv = NO_RING, EMPTY
        if (
            self._rcv_buf != NO_RING
            and self._rcv_read >= self._rcv_nxt - self.guest_fin
            and not self._ooo_ranges
        ):
            POOL.give(self._rcv_cap, self._rcv_buf)
            self._rcv_buf, self._rcv_mv = NO_RING, EMPTY

    def commit_write(self, n: int, now: float) -> None:
        if n <= 0:
            return
        if n > self.send_space():
            raise ValueError("commit_write beyond the space write_buffer offered")
        self._snd_end += n
        self._last_host = now

    def write(self, data: bytes | bytearray | memoryview, now: float) -> int:
        src = memoryview(data)
        done = 0
        while done < len(src):
            view = self.write_buffer(len(src) - done)
            k = len(view)
            if not k:
                break
            view[:] = src[done : done + k]
            self.commit_write(k, now)
            done += k
        return done

    def shutdown(self, now: float) -> None:
        """The host side sent EOF: our FIN follows the data already queued."""
        if self._fin_queued or self.state in (_CLOSED, _TIME_WAIT):
            return
        self._fin_queued = True
        self._fin_seq = self._snd_end
        self._last_host = now

    def abort(self, now: float) -> None:
        """Reset the guest's connection (host side failed) and close."""
        st = self.state
        if st is _CLOSED:
            # The guest already closed gracefully, but the host cannot take its last bytes:
            # drop them, so the connection is finally done.
            self._rcv_read = self._rcv_nxt - self.guest_fin
            return
        if st is _LISTEN:
            self._pending_rst = (0, self.irs + 1, _RST | _ACK)
        elif st is _SYN_SENT:
            self._pending_rst = (self._snd_nxt, 0, _RST)  # the guest may be in SYN-RECEIVED
        elif st is not _TIME_WAIT:
            self._pending_rst = (self._snd_nxt, self._rcv_nxt, _RST | _ACK)
        self._close(discard=True)
        self._send_pending_rst(now)

    # ================================================================== handshake

    def on_syn(self, pkt: memoryview, n: int, now: float) -> None:
        """The guest's first SYN: remember its sequence number and options. The SYN-ACK
        waits for `accept`, so a host that refuses can still be reported as a refusal."""
        got = _read_syn(pkt, n)
        if got is None:
            return
        parsed, opts = got
        self._learn_syn(parsed[4], parsed[7], opts, now)
        self._ecn_ok = _ecn_asked(self._p, parsed[6])
        self.state = _LISTEN

    def _learn_syn(self, seq: int, wnd: int, opts: tcp.Options, now: float) -> None:
        """The guest's SYN (passive open) or SYN-ACK / crossing SYN (active open): its
        sequence number, window and options. Actively we offer every option, so what is
        used is what the guest's segment carries either way (SACK only if enabled here)."""
        p = self._p
        self.irs = seq
        self._rcv_nxt = seq + 1
        self._rcv_base = seq + 1
        self._rcv_read = seq + 1
        self._last_ack_sent = seq + 1
        self._snd_wl1 = seq
        self._snd_wnd = wnd  # RFC 7323 2.2: the window in a SYN is never scaled
        self._max_snd_wnd = self._snd_wnd
        self._guest_mss = opts.mss if opts.mss else tcp.DEFAULT_MSS
        self._wscale_ok = opts.wscale is not None
        if opts.wscale is not None:
            self._snd_ws = opts.wscale
            self._rcv_ws = _our_wscale(p)
        else:
            self._snd_ws = self._rcv_ws = 0
        self._sack_ok = opts.sack_perm and p.sack
        self._ts_ok = opts.ts_val is not None
        self._ts_recent = opts.ts_val or 0
        mss = max(min(self._guest_mss, p.mss) - (tcp.TS_OPTION_LEN if self._ts_ok else 0), 64)
        self._mss = mss
        self.cc.set_mss(mss)
        self._rtt.set_sampling(self._ts_ok, mss)
        self._rcv_mss = min(p.mss, 536)
        self._sws_thresh = max(1, min(self._rcv_cap // 2, p.mss))
        self._rcv_adv_edge = self._rcv_nxt + min(self._rcv_cap, 0xFFFF)
        self._last_rx = now

    def accept(self, now: float, *, sent: bool = False) -> None:
        """Host connect succeeded: answer the guest's SYN. `sent`: the bridge already
        sent the SYN-ACK at `now` (`synack_into`, with this endpoint's writer)."""
        if self.state is not _LISTEN:
            return
        self.state = _SYN_RCVD
        self._snd_nxt = self._snd_max = self.iss + 1
        self._synack_now = True
        self._t_rto = now + self._rtt.rto
        self._rtt.start_timing(self.iss + 1, now)
        if sent:
            self._synack_now = False
            self._ack_sent()
        else:
            self._send_synack(now)

    def refuse(self, now: float) -> None:
        """Host connect failed and the bridge chose RST: RST/ACK for the guest's SYN."""
        if self.state is not _LISTEN:
            return
        self._pending_rst = (0, self.irs + 1, _RST | _ACK)
        self._close(discard=True)
        self._send_pending_rst(now)

    def connect(self, now: float) -> None:
        """Active open (an inbound forward): send our SYN to the guest, offering every
        option the passive side would accept (MSS, WS, SACK if enabled, TS)."""
        if self.state is not _LISTEN or self._active:
            return
        self._active = True
        self.state = _SYN_SENT
        self._snd_nxt = self._snd_max = self.iss + 1
        self._rcv_ws = min(max(self._p.wscale, 0), tcp.MAX_WSCALE)
        self._synack_now = True  # in SYN-SENT: our SYN is due
        self._t_rto = now + self._rtt.rto
        if self._p.syn_timeout > 0:
            self._syn_deadline = now + self._p.syn_timeout
        self._rtt.start_timing(self.iss + 1, now)
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        slot = self.egress.reserve()
        if slot is None:
            self._t_retry = now + EGRESS_RETRY
            return
        p = self._p
        opts = tcp.options_bytes(
            mss=p.mss, wscale=self._rcv_ws, sack_perm=p.sack, ts=(self._ts_now(now), 0)
        )
        n = self._writer.write(slot, self.iss, 0, _SYN, min(self._rcv_cap, 0xFFFF), opts, 0)
        self.egress.commit(n, self.peer)
        self._synack_now = False

    def _slow_syn_sent(
        self,
        pkt: memoryview,
        ihl: int,
        doff: int,
        flags: int,
        seq_w: int,
        ack_w: int,
        wnd: int,
        now: float,
    ) -> None:
        """RFC 9293 3.10.7.3: our SYN is out; a SYN-ACK establishes, a SYN alone is a
        simultaneous open, an RST that acknowledges our SYN is a refusal. Data on the
        SYN-ACK is not kept (no guest sends any without TCP Fast Open): ACKing only the SYN
        makes the guest send it again."""
        if flags & _ACK:
            ack = unwrap(ack_w, self._snd_una)
            if ack != self.iss + 1:
                if not flags & _RST:
                    self._pending_rst = (ack_w, 0, _RST)
                return
        if flags & _RST:
            if flags & _ACK:
                self.reset = self.refused = True
                self._close(discard=True)
            return
        if not flags & _SYN:
            return
        opts = tcp.parse_options(pkt, ihl + 20, ihl + doff) if doff > 20 else tcp.Options()
        if opts is None:
            return
        self._learn_syn(seq_w, wnd, opts, now)
        if flags & _ACK:
            self._establish(self.iss + 1, wnd, seq_w, now)
            self._snd_wnd = wnd  # the window of a SYN-ACK is never scaled either
            self._max_snd_wnd = wnd
            self._ack_now = True
        else:
            # Both sides opened at once: answer with a SYN-ACK carrying our first SYN's
            # sequence number; its ACK (or the guest's own SYN-ACK) establishes.
            self.state = _SYN_RCVD
            self._synack_now = True
            self._t_rto = now + self._rtt.rto

    def _syn_options(self, now: float) -> bytes:
        p = self._p
        return tcp.options_bytes(
            mss=p.mss,
            wscale=self._rcv_ws if self._wscale_ok else None,
            sack_perm=self._sack_ok,
            ts=(self._ts_now(now), self._ts_recent) if self._ts_ok else None,
        )

    def _send_synack(self, now: float) -> None:
        slot = self.egress.reserve()
        if slot is None:
            self._t_retry = now + EGRESS_RETRY
            return
        opts = self._syn_options(now)
        flags = _SYN | _ACK | _ECE if self._ecn_ok else _SYN | _ACK
        n = self._writer.write(
            slot, self.iss, self._rcv_nxt, flags, min(self._rcv_cap, 0xFFFF), opts, 0
        )
        self.egress.commit(n, self.peer)
        self._synack_now = False
        self._ack_sent()

    # ================================================================== receive

    def receive(self, pkt: memoryview, n: int, now: float) -> None:
        """A segment from the guest (a whole IP packet whose header ingress checked)."""
        if pkt[0] >> 4 == 6:
            ihl, total = tcp.span6(pkt, n)
        else:
            ihl = (pkt[0] & 0x0F) << 2
            total = (pkt[2] << 8) | pkt[3]
            if total > n:
                total = n
        self.segment(pkt, ihl, total, now)

    def segment(self, pkt: memoryview, ihl: int, total: int, now: float) -> None:
        """`receive` for a caller that has found the TCP header already (the bridge, which
        parses every segment for its flow key): the TCP header at `ihl`, the segment's end
        at `total` (within the buffer)."""
        if total < ihl + 20:
            return
        _, _, seq_w, ack_w, offflags, wnd = _HDR.unpack_from(pkt, ihl)
        doff = (offflags >> 12) << 2
        flags = offflags & 0x3F
        off = ihl + doff
        plen = total - off
        if plen < 0 or doff < 20:
            return
        self._last_rx = now
        self._ka_probes = 0
        self._probes = 0
        if self._ecn_ok:
            # IPv6's ECN field is the low two bits of the traffic class, which straddles
            # bytes 0 and 1; pkt[1]'s own low bits belong to the flow label, which Linux
            # fills with a hash (read as ECN, one segment in four looked CE-marked).
            ce = (pkt[1] >> 4 if pkt[0] >> 4 == 6 else pkt[1]) & 3 == 3
            if offflags & 0xC0 or ce:
                self._ecn_in(offflags, ce, plen, now)

        # ---- header prediction -------------------------------------------------------
        if (
            self.state is _EST
            and flags & 0x17 == _ACK
            and not self._ooo_ranges
            and seq_w == self._rcv_nxt & MASK
        ):
            tsval = -1
            tsecr = 0
            fast = True
            if doff == 32:
                prefix, tsval, tsecr = _TS_OPT.unpack_from(pkt, ihl + 20)
                if prefix != _TS_PREFIX_WORD or not self._ts_ok:
                    fast = False
                elif (tsval - self._ts_recent) & MASK >= _HALF:
                    fast = False  # PAWS: leave it to the full check
            elif doff != 20:
                fast = False
            if fast:
                una = self._snd_una
                ack = unwrap(ack_w, una)
                if plen:
                    # New data, nothing new acknowledged: the bulk upload case.
                    if (
                        ack != una
                        or self._ooo_fin >= 0
                        or plen > self._rcv_read + self._rcv_cap - self._rcv_nxt
                    ):
                        fast = False
                elif ack <= una or ack > self._snd_max or self._in_recovery or self._sacked:
                    fast = False  # duplicate ACK, window probe, or ACK needing care
                if fast:
                    if tsval >= 0 and self._rcv_nxt == self._last_ack_sent:
                        self._ts_recent = tsval
                    wnd <<= self._snd_ws
                    self._snd_wnd = wnd
                    if wnd > self._max_snd_wnd:
                        self._max_snd_wnd = wnd
                    self._snd_wl1 = self._rcv_nxt
                    self._snd_wl2 = ack
                    if plen:
                        self._deliver(pkt, ihl + doff, plen, now)
                    else:
                        self._on_new_ack(ack, now, tsecr)
                        if self._t_persist != INF and wnd:
                            self._t_persist = INF
                            self._persist_backoff = 0
                    return
        self._slow(pkt, ihl, doff, flags, seq_w, ack_w, wnd, plen, now)

    def _deliver(self, pkt: memoryview, off: int, plen: int, now: float) -> None:
        """In-order data at RCV.NXT that fits the ring: copy, advance, decide on the ACK
        (RFC 1122 / RFC 5681 4.2: at least every second full-sized segment, otherwise
        within the delayed-ACK time)."""
        nxt = self._rcv_nxt
        cap = self._rcv_cap
        idx = (nxt - self._rcv_base) % cap
        end = idx + plen
        if self._rcv_buf == NO_RING:
            self._rcv_buf, self._rcv_mv = POOL.take(cap)
        mv = self._rcv_mv
        if end <= cap:
            mv[idx:end] = pkt[off : off + plen]
        else:
            k = cap - idx
            mv[idx:cap] = pkt[off : off + k]
            mv[0 : end - cap] = pkt[off + k : off + plen]
        self._rcv_nxt = nxt + plen
        self.bytes_in += plen
        if plen > self._rcv_mss:
            self._rcv_mss = plen
        unacked = self._unacked + plen
        self._unacked = unacked
        if unacked >= 2 * self._rcv_mss or self._ack_delay <= 0:
            self._ack_now = True
        elif self._t_delack == INF:
            self._t_delack = now + self._ack_delay

    def _slow(
        self,
        pkt: memoryview,
        ihl: int,
        doff: int,
        flags: int,
        seq_w: int,
        ack_w: int,
        wnd: int,
        plen: int,
        now: float,
    ) -> None:
        """RFC 9293 3.10.7 "SEGMENT ARRIVES", with RFC 5961 and RFC 7323 checks."""
        st = self.state
        if st is _CLOSED:
            self._answer_closed(flags, seq_w, ack_w, plen)
            return
        if st is _LISTEN:
            self._slow_listen(pkt, ihl + doff + plen, flags, seq_w, now)
            return
        if st is _SYN_SENT:
            self._slow_syn_sent(pkt, ihl, doff, flags, seq_w, ack_w, wnd, now)
            return
        opts: tcp.Options | None = None
        if doff > 20:
            opts = tcp.parse_options(pkt, ihl + 20, ihl + doff)
            if opts is None:
                return
        rst = flags & _RST
        syn = flags & _SYN
        fin = flags & _FIN

        if st is _SYN_RCVD:
            if rst:
                if (
                    0
                    <= unwrap(seq_w, self._rcv_nxt) - self._rcv_nxt
                    < max(self._rcv_adv_edge - self._rcv_nxt, 1)
                ):
                    self.reset = True
                    self._close(discard=True)
                return
            if syn:
                if (
                    self._active
                    and flags & _ACK
                    and seq_w == self.irs
                    and unwrap(ack_w, self._snd_una) == self.iss + 1
                ):
                    # Simultaneous open: the guest's SYN-ACK acknowledges our SYN
                    # (RFC 9293 3.5 figure 7; Linux accepts it the same way).
                    self._establish(self.iss + 1, wnd, self.irs, now)
                    self._snd_wnd = wnd  # a SYN's window is never scaled
                    return
                # The guest did not get our SYN-ACK (or it crossed its retransmission):
                # answer with the same one.
                if not flags & _ACK:
                    self._synack_now = True
                    self._synack_rexmitted = True
                return
            if not flags & _ACK:
                return
            ack = unwrap(ack_w, self._snd_una)
            if ack != self.iss + 1:
                self._pending_rst = (ack_w, 0, _RST)
                return
            self._establish(ack, wnd, unwrap(seq_w, self._rcv_nxt), now)
            st = self.state

        seq = unwrap(seq_w, self._rcv_nxt)
        tsval = -1
        tsecr = 0
        if opts is not None and opts.ts_val is not None and self._ts_ok:
            tsval = opts.ts_val
            tsecr = opts.ts_ecr

        # A new SYN for this 4-tuple while we linger in TIME_WAIT is the guest reusing its
        # port: RFC 9293 3.10.7.4 / RFC 6191 accept it when it is clearly newer.
        if (
            st is _TIME_WAIT
            and syn
            and not rst
            and not flags & _ACK
            and (
                seq > self._rcv_nxt
                or (
                    tsval >= 0
                    and (tsval - self._ts_recent) & MASK < _HALF
                    and tsval != self._ts_recent
                )
            )
        ):
            self.reopen = True
            self._close()
            return

        # PAWS (RFC 7323 5.3): a timestamp older than TS.Recent marks an old duplicate.
        if tsval >= 0 and not rst and (tsval - self._ts_recent) & MASK >= _HALF:
            self._ack_now = True
            return

        # Acceptability (RFC 9293 3.10.7.4 first check), with the right edge inclusive as
        # Linux has it: a guest that filled our window sends its ACKs with SEG.SEQ exactly
        # at the edge, and the strict test would throw away every one of them (and with
        # them its window updates) for as long as the window stays full. Data beyond the
        # edge is trimmed below, so only the ACK information is let through.
        nxt = self._rcv_nxt
        limit = self._rcv_read + self._rcv_cap  # we can hold up to here
        rwnd = max(limit - nxt, self._rcv_adv_edge - nxt, 0)
        seg_len = plen + (1 if syn else 0) + (1 if fin else 0)
        ok = seq <= nxt + rwnd and (seq + seg_len > nxt if seg_len else seq >= nxt)
        if not ok:
            if rst:
                return
            if syn:
                self._challenge_ack(now)
                return
            self._ack_now = True  # tells a window probe or a retransmission where we are
            if st is _TIME_WAIT and fin:
                self._t_tw = now + self._p.time_wait  # their FIN again: our ACK was lost
            return

        if rst:
            # RFC 5961 3.2: only an exact hit resets; elsewhere in the window, challenge.
            if seq == nxt:
                self.reset = True
                self._close(discard=True)
            else:
                self._challenge_ack(now)
            return
        if syn:
            self._challenge_ack(now)  # RFC 5961 4.2
            return
        if not flags & _ACK:
            return

        # ---- ACK ---------------------------------------------------------------------
        una = self._snd_una
        ack = unwrap(ack_w, una)
        if ack > self._snd_max:
            self._ack_now = True  # acknowledges something we never sent
            return
        if ack < una - max(self._max_snd_wnd, 1):
            self._ack_now = True  # RFC 5961 5.2: too old to be believed
            return
        newly_sacked = False
        mark = -1  # what the guest had reported holding before this ACK's SACK blocks
        if opts is not None and opts.sack and self._sack_ok:
            mark = self._delivered_mark()
            blocks = opts.sack
            # RFC 2883: a first block below the cumulative ACK, or inside the second
            # block, reports data received twice (a D-SACK).
            left = unwrap(blocks[0][0], una)
            right = unwrap(blocks[0][1], una)
            if left < right and (
                right <= ack
                or (
                    len(blocks) > 1
                    and unwrap(blocks[1][0], una) <= left
                    and right <= unwrap(blocks[1][1], una)
                )
            ):
                self._on_dsack(left, right)
            newly_sacked = self._sack.take(blocks, una, self._snd_max)
        scaled = wnd << self._snd_ws
        if ack > una:
            self._on_new_ack(ack, now, tsecr)
        elif (
            ack == una
            and self._snd_max > una
            and (
                # RFC 6675 2: with SACK, an ACK that SACKs new data is a duplicate whatever
                # else it carries. A Linux guest grows its window on nearly every ACK while
                # it autotunes, and the strict RFC 5681 test (same window, no data) then
                # saw no duplicates at all: every loss waited for the timer (bench_wan).
                newly_sacked
                or (plen == 0 and not fin and ack + scaled == self._snd_wl2 + self._snd_wnd)
            )
        ):
            self._on_dup_ack(now, mark)
        # The window is taken from a segment that is not older than the last one that set
        # it (RFC 9293's SND.WL1/WL2 test) or that acknowledges new data (as Linux does: a
        # guest that rolled SND.NXT back after a timeout sends ACKs with older sequence
        # numbers, and those are still its freshest word on the window).
        if ack > una or self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            self._snd_wnd = scaled
            if scaled > self._max_snd_wnd:
                self._max_snd_wnd = scaled
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if scaled and self._t_persist != INF:
                self._t_persist = INF
                self._persist_backoff = 0
        if tsval >= 0 and seq <= self._last_ack_sent:
            self._ts_recent = tsval

        st = self.state
        if st is _CLOSED:
            return
        if st is _TIME_WAIT:
            if fin:
                self._ack_now = True
                self._t_tw = now + self._p.time_wait
            return

        # ---- data ----------------------------------------------------------------------
        off = ihl + doff
        if plen and st in _RECEIVING:
            if seq < nxt:  # trim what we already have
                cut = nxt - seq
                off += cut
                plen -= cut
                seq = nxt
            if seq + plen > limit:  # and what we cannot hold
                plen = max(limit - seq, 0)
                fin = 0
                self._ack_now = True  # a probe into a full window: tell it the window
            if plen:
                if seq == nxt:
                    self._deliver(pkt, off, plen, now)
                    if self._ooo_ranges or self._ooo_fin >= 0:
                        self._pull_ooo()
                        self._ack_now = True  # RFC 5681 4.2: a filled gap is ACKed at once
                else:
                    self._store_ooo(seq, pkt, off, plen)
                    self._ack_now = True  # RFC 5681 4.2: out-of-order data, ACK at once
        elif plen:
            plen = 0  # data after the guest's FIN: nothing can be done with it

        # ---- FIN -----------------------------------------------------------------------
        if fin and st in _RECEIVING:
            fin_at = seq + plen
            if fin_at == self._rcv_nxt:
                self._on_guest_fin(now)
            elif fin_at > self._rcv_nxt:
                self._ooo_fin = fin_at
                self._ack_now = True
        elif fin:
            self._ack_now = True  # a retransmitted FIN: re-ACK it

    def _slow_listen(self, pkt: memoryview, n: int, flags: int, seq_w: int, now: float) -> None:
        """Before `accept`: only a reset or a changed SYN from the guest matters."""
        if flags & _RST:
            if seq_w == self._rcv_nxt & MASK:
                self.reset = True
                self._close(discard=True)
            return
        if flags & _SYN and not flags & _ACK and seq_w != self.irs:
            self.on_syn(pkt, n, now)  # the guest started over with a new ISN

    def _answer_closed(self, flags: int, seq_w: int, ack_w: int, plen: int) -> None:
        """RFC 9293 3.10.7.1: anything but a RST to a closed connection is answered by RST."""
        if flags & _RST:
            return
        if flags & _ACK:
            self._pending_rst = (ack_w, 0, _RST)
        else:
            seg_len = plen + (1 if flags & _SYN else 0) + (1 if flags & _FIN else 0)
            self._pending_rst = (0, (seq_w + seg_len) & MASK, _RST | _ACK)

    def _establish(self, ack: int, wnd: int, seq: int, now: float) -> None:
        self.state = _EST
        self._snd_una = ack
        self._snd_wnd = wnd << self._snd_ws
        self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
        self._snd_wl1 = seq
        self._snd_wl2 = ack
        self._t_rto = INF
        self._retries = 0
        if not self._synack_rexmitted:
            self._rtt.sample_timed(now)  # Karn: only an unrepeated SYN-ACK is timed
        else:
            self._rtt.stop_timing()
            self._rtt.handshake_retransmitted()
        if self._wscale_ok and self._budget is not None and self._p.rcv_buffer_max > self._rcv_cap:
            self._rcv_space_seq = self._rcv_nxt
            self._rcv_space_at = now + max(self._rtt.srtt, CLOCK_GRANULARITY)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 7: challenge ACKs are rate limited so they cannot be used to flood."""
        second = int(now)
        if second != self._challenge_second:
            self._challenge_second = second
            self._challenge_count = 0
        if self._challenge_count < CHALLENGE_ACK_LIMIT:
            self._challenge_count += 1
            self.challenge_acks += 1
            self._ack_now = True

    def _on_guest_fin(self, now: float) -> None:
        self._rcv_nxt += 1
        self.guest_fin = True
        self._ooo_fin = -1
        self._ack_now = True  # a FIN is acknowledged at once, also when it rode on data
        st = self.state
        if st is _EST:
            self.state = _CLOSE_WAIT
        elif st is _FIN_WAIT_1:
            if self._fin_acked():
                self._enter_time_wait(now)
            else:
                self.state = _CLOSING
        elif st is _FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = _TIME_WAIT
        self._t_tw = now + self._p.time_wait
        self._t_rto = self._t_persist = INF
        self._rexmit.clear()
        self._rexmit_set.clear()

    def _fin_acked(self) -> bool:
        return self._fin_queued and self._snd_una > self._fin_seq

    # ---- out-of-order reassembly ---------------------------------------------------------

    def _store_ooo(self, seq: int, pkt: memoryview, off: int, plen: int) -> None:
        """Data beyond a gap goes straight to its final place in the ring; `OutOfOrder`
        decides how much of it is kept (its bounds), the ring is ours to write."""
        self.ooo_segments += 1
        plen = self._ooo.add(seq, seq + plen, self._rcv_nxt)
        if not plen:
            return
        # The same wrap-around copy as _deliver's; written out there because that is the
        # per-segment fast path, where a call costs more than these eight lines.
        cap = self._rcv_cap
        idx = (seq - self._rcv_base) % cap
        e = idx + plen
        if self._rcv_buf == NO_RING:
            self._rcv_buf, self._rcv_mv = POOL.take(cap)
        mv = self._rcv_mv
        if e <= cap:
            mv[idx:e] = pkt[off : off + plen]
        else:
            k = cap - idx
            mv[idx:cap] = pkt[off : off + k]
            mv[0 : e - cap] = pkt[off + k : off + plen]

    def _pull_ooo(self) -> None:
        nxt = self._rcv_nxt
        new = self._ooo.pull(nxt)
        self.bytes_in += new - nxt
        self._rcv_nxt = new
        if self._ooo_fin == new:
            self._on_guest_fin(self._last_rx)

    # ================================================================== ACK processing

    def _on_new_ack(self, ack: int, now: float, tsecr: int) -> None:
        self.last_ack_progress = now
        una = self._snd_una
        flight = self._snd_max - una
        self._snd_una = ack
        if self._snd_nxt < ack:
            self._snd_nxt = ack  # an ACK beyond a go-back-N restart point
        resent = self._rexmit_high > ack  # recovery already resent the segment at `ack`
        if not resent:
            self._rexmit_high = ack
        if self._sacked:
            if (
                not self._reord
                and not self._in_recovery
                and not self._rto_loss
                and self._tlp_high < 0
                and ack >= self._sacked[0][0]
            ):
                # the cumulative ACK reached SACKed data with nothing resent: the hole
                # below it filled by itself, a segment overtaken, not lost
                self._reord = True
            self._sack.trim(ack)
        # RTT: a timed segment (Karn: never a retransmitted one) or the echoed timestamp.
        rtt = self._rtt
        timed = rtt.timed_end
        cc = self.cc
        if timed >= 0 and ack >= timed:
            if cc.cwnd < cc.ssthresh:
                cc.on_rtt(now - rtt.timed_at, ack, self._snd_nxt)
            rtt.sample_timed(now, flight)
        elif tsecr and self._ts_ok:
            rtt_ms = (self._ts_now(now) - tsecr) & MASK
            if rtt_ms < 60_000:
                rtt.sample(rtt_ms / 1000.0, flight)
                if cc.cwnd < cc.ssthresh:
                    cc.on_rtt(rtt_ms / 1000.0, ack, self._snd_nxt)
        self._retries = 0
        # Data bytes acknowledged (not SYN/FIN sequence numbers) feed the window.
        data_acked = min(ack, self._snd_end) - max(una, self._snd_base)
        if self._in_recovery:
            if ack >= self._recover:
                self._in_recovery = False
                self._dupacks = 0
                self.cc.on_recovery_end(self._snd_max - ack, now)
                if self._undo_marker >= 0:
                    if self._undo_retrans <= 0 or self._echoes_original(tsecr):
                        self._do_undo()
                    else:
                        self._undo_until = self._snd_max  # late D-SACKs may still undo
                # Holes above `recover` resent in this episode stay watched: a lost one is
                # found by the next episode's first ACKs instead of by the timer.
                kept = [e for e in self._rexmit_log if e[0] >= ack]
                self._rexmit_log.clear()
                if kept:
                    self._rexmit_log.extend(kept)
            elif self._sack_ok:
                # RFC 6675: the SACK scoreboard says what to resend. With nothing SACKed
                # above the new SND.UNA nothing is known lost: NewReno's rule that a
                # partial ACK means the next hole is lost resent data merely overtaken.
                self._sack_fill(now)
            else:
                # RFC 6582 3.2 step 5: partial ACK, the next hole is lost too.
                self.cc.on_partial_ack(max(data_acked, 0))
                if not resent:
                    self._queue_rexmit(ack)
        else:
            self._dupacks = 0
            if data_acked > 0:
                self.cc.on_ack(data_acked, flight, now, rtt.srtt)
        if self.cc.cwnd > self._snd_grow_at:
            self._grow_send()
        if self._rto_loss:
            if self._undo_marker >= 0 and self._echoes_original(tsecr):
                # RFC 3522 / 4015 (Eifel): the ACK was sent for data from before the
                # timeout, so the timeout was spurious (a delay spike, not a loss): take
                # the window back and stop going back N; any real hole is SACK's work.
                self._rto_loss = False
                self._rexmit_log.clear()  # the resends since the timeout were needless
                self._do_undo()
                if self._snd_nxt < self._snd_max:
                    self._snd_nxt = self._snd_max
            elif ack >= self._recover:
                self._rto_loss = False
                self._rexmit_log.clear()  # every resend since the timeout is delivered
                self.cc.on_loss_recovered()
            elif self._rexmit_log:
                self._lost_resends(now)
        elif self._undo_until >= 0 and ack > self._undo_until and not self._in_recovery:
            self._undo_marker = self._undo_until = -1  # D-SACKs for it would have come
        if self._rate is not None:
            self._rate_ack(now)
        # RFC 6298 5.2 / 5.3: stop the timer when all is acknowledged, else restart it.
        if ack >= self._snd_max:
            self._t_rto = self._t_tlp = INF
            self._tlp_high = -1
        else:
            self._t_rto = now + rtt.rto
            if ack >= self._tlp_high:
                self._tlp_high = -1
            if self._sack_ok and not self._in_recovery:
                self._arm_tlp(now)
        st = self.state
        if st is not _EST and self._fin_queued and ack > self._fin_seq:
            if st is _FIN_WAIT_1:
                self.state = _FIN_WAIT_2
            elif st is _CLOSING:
                self._enter_time_wait(now)
            elif st is _LAST_ACK:
                self._close()

    def _on_dup_ack(self, now: float, mark: int) -> None:
        self.dup_acks += 1
        if self._rate is not None and self._sacked:
            self._rate_ack(now)  # newly SACKed bytes were delivered too
        if self._in_recovery:
            if self._sacked:
                self._sack_fill(now)
            else:
                self.cc.on_dup_ack_in_recovery()  # NewReno: one segment left the network
            return
        if self._rto_loss and self._rexmit_log:
            self._lost_resends(now)  # going back N resent some again into a loss
        self._dupacks += 1
        self._maybe_fast_retransmit(now, mark)

    def _maybe_fast_retransmit(self, now: float, mark: int = -1) -> None:
        """`mark`: _delivered_mark() before the ACK at hand took its SACK blocks (-1: no
        ACK at hand), so what that ACK delivered counts in PRR's first step."""
        if self._snd_una < self._recover:
            return  # RFC 6582 3.2 step 2: a second loss in the same window halves once
        if self._dupacks >= 3 or (self._sacked and self._sack_says_lost()):
            # RFC 5681 3.2 fast retransmit, or RFC 6675's IsLost / RACK before the third
            # duplicate ACK (see _sack_says_lost) ...
            if self._sacked and self._tlp_high < 0 and self._rack_lost_below(now) <= self._snd_una:
                # ... but not before RACK deems the first hole lost: reordering by a few
                # milliseconds makes holes that fill themselves (bench_wan's reordering
                # profile: thousands of needless retransmissions). Look again then.
                self._t_rack = self._rack_due(now)
                return
            self._t_rack = INF
            self._tlp_high = -1
            self._t_tlp = INF
            flight = self._snd_max - self._snd_una
            self._in_recovery = True
            self._recover = self._snd_max
            self._begin_undo(now)
            self.cc.on_fast_retransmit(flight, now)
            self.fast_retransmits += 1
            self._rtt.stop_timing()
            self._rexmit_high = self._snd_una
            self._queue_rexmit(self._snd_una)
            self._recovery_room = 0
            if self._sacked:
                if self.cc.uses_prr:
                    prr = self._prr
                    if prr is None:
                        prr = self._prr = Prr()
                    prr.start(flight, mark if mark >= 0 else self._delivered_mark(), self._snd_una)
                    prr.out = self._mss  # the retransmission just queued
                self.cc.on_recovery_pipe(
                    self._sack.pipe(
                        self._snd_una, self._snd_max, self._snd_una, self._rack_lost_below(now)
                    )
                )
                self._sack_fill(now)  # more holes than the first may go at once

    def _rack_lost_below(self, now: float) -> int:
        """RACK (RFC 8985 6.2) as a sequence number: un-SACKed data below it was first
        sent at least srtt + srtt/4 (the reordering window) ago while later data has been
        SACKed, so it is lost; holes above it may still be on their way."""
        srtt = self._rtt.srtt
        una = self._snd_una
        ts, ss = self._sent_t, self._sent_s
        head = self._sent_head
        n = len(ss)
        while head < n and ss[head] <= una:
            head += 1  # batches wholly acknowledged
        if head > 1024:
            del ts[:head], ss[:head]
            head = 0
        self._sent_head = head
        if srtt <= 0.0:
            return self._snd_max
        # RACK.reo_wnd: none until the path was seen to reorder, then a quarter RTT
        # (RFC 8985 6.2.3; Linux does the same), so on an ordinary path losses are found
        # as soon as with three duplicate ACKs.
        reo = 0.25 * srtt if self._reord else 0.0
        i = bisect_right(ts, now - self._rtt.latest - reo + CLOCK_GRANULARITY, head) - 1
        # batch i ends at ss[i]; everything before it was sent before the limit too
        return ss[i] if i >= head else una

    def _rack_due(self, now: float) -> float:
        """When the segment at SND.UNA becomes lost by RACK's rule."""
        ts, ss = self._sent_t, self._sent_s
        i = bisect_right(ss, self._snd_una, self._sent_head)
        sent = ts[i] if i < len(ts) else now
        reo = 0.25 * self._rtt.srtt if self._reord else 0.0
        due = sent + self._rtt.latest + reo
        return due if due > now else now + CLOCK_GRANULARITY

    def _on_rack_timer(self, now: float) -> None:
        """The first hole's reordering window has passed with no ACK filling it."""
        self._t_rack = INF
        if not self._in_recovery and self._sacked and self._snd_una < self._snd_max:
            self._maybe_fast_retransmit(now)

    def _sack_says_lost(self) -> bool:
        """Whether the segment at SND.UNA is lost before three duplicate ACKs came:
        RFC 6675's IsLost (more than two segments' worth SACKed above it: a guest that
        ACKs in stretches may never send three), or the tail loss probe was SACKed (it
        was sent a probe timeout, two round trips, after everything unacknowledged below
        it, which RACK (RFC 8985 6.2) then deems lost)."""
        if self._tlp_high >= 0:
            return True
        return self._sack.sacked > 2 * self._mss

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 7.2: a probe two round trips after the last ACK or send, if that is
        before the retransmission timer, so a lost tail costs a round trip or two
        instead of an RTO (200 ms at least, backed off). One segment in flight may sit
        in the guest's delayed-ACK timer, so it gets that much more."""
        srtt = self._rtt.srtt
        if srtt <= 0.0 or self._tlp_high >= 0:
            return
        pto = 2.0 * srtt
        if self._snd_max - self._snd_una <= self._mss:
            pto += TLP_DELACK_ALLOWANCE
        if pto < TLP_MIN:
            pto = TLP_MIN
        at = now + pto
        self._t_tlp = at if at < self._t_rto else INF

    def _on_tlp(self, now: float) -> None:
        """Resend the last segment: its SACK (or ACK) tells what of the tail is lost."""
        self._t_tlp = INF
        una = self._snd_una
        smax = self._snd_max
        if self._in_recovery or smax <= una or self.state not in _SENDING:
            return
        if self._snd_wl2 + self._snd_wnd <= una:
            return  # a closed window is the persist timer's business
        self._tlp_high = smax
        self.tlp_probes += 1
        seq = smax - self._mss
        self._queue_rexmit(seq if seq > una else una)

    def _grow_send(self) -> None:
        """cwnd wants more than half the send ring: the ring, not the path, would soon
        limit the window (docs/tcp-wan.md: 1 MiB per 41 ms capped a download at 174
        Mbit/s). Grow it to twice cwnd, up to snd_buffer_max, if the budget lends it;
        the live bytes are copied once into the new ring (a few per connection's life)."""
        p = self._p
        budget = self._budget
        cap = self._snd_cap
        want = min(max(2 * self.cc.cwnd, 2 * cap), p.snd_buffer_max)
        want = -(-want // 65536) * 65536
        if want > p.snd_buffer_max:
            want = p.snd_buffer_max
        if budget is None or want <= cap or not budget.take(want - cap):
            # Refused: try again only once the window has grown by another quarter ring.
            self._snd_grow_at = self.cc.cwnd + cap // 4 if want > cap else 1 << 62
            return
        self._snd_lent += want - cap
        if self._snd_buf == NO_RING:  # nothing buffered: the next ring taken is the big one
            self._snd_cap = want
            self._snd_grow_at = want // 2 if want < p.snd_buffer_max else 1 << 62
            return
        new, nmv = POOL.take(want)
        head = max(min(self._snd_una, self._snd_end), self._snd_base)
        _move(self._snd_mv, cap, nmv, want, head - self._snd_base, self._snd_end - head)
        POOL.give(cap, self._snd_buf)
        self._snd_buf = new
        self._snd_mv = nmv
        self._snd_cap = want
        self._snd_grow_at = want // 2 if want < p.snd_buffer_max else 1 << 62

    def _rate_ack(self, now: float) -> None:
        """Tell a rate-steered controller what this ACK delivered (tcp_rate)."""
        rate = self._rate
        assert rate is not None
        una = self._snd_una
        sacked = self._sacked
        s = una + self._sack.sacked
        high = sacked[-1][1] if sacked else una
        newly = s - self._rate_s
        self._rate_s = s
        if newly <= 0:
            return  # nothing new, or the guest reneged on a SACK
        valid = rate.on_delivery(newly, high, now)
        if self._in_recovery and self._sacked:
            inflight = self._sack.pipe(
                una, self._snd_max, self._rexmit_high, self._rack_lost_below(now)
            )
        else:
            # After a timeout only what was resent since is in flight, less what of it
            # the guest had already SACKed (skipped, not resent).
            inflight = self._snd_nxt - una
            if self._sacked:
                inflight -= self._sack.sacked_below(self._snd_nxt)
        self.cc.on_delivery(rate, valid, inflight, newly, now)

    def _sack_fill(self, now: float) -> None:
        """SACK-based loss recovery (RFC 6675, in outline): while the bytes presumed in the
        network (pipe) are below ssthresh, resend the next hole below the highest SACKed
        byte, several per ACK if the window allows; what room is left goes to new data
        (NextSeg rule 2). NewReno alone resends one hole per round trip, which after a
        burst of losses on a 40 ms path took seconds (docs/tcp-wan.md)."""
        sack = self._sack
        una = self._snd_una
        smax = self._snd_max
        lost_below = self._rack_lost_below(now)
        pipe = sack.pipe(una, smax, self._rexmit_high, lost_below)
        prr = self._prr
        if prr is not None and self.cc.uses_prr:
            room = room0 = prr.quota(pipe, self.cc.ssthresh, self._delivered_mark(), una, self._mss)
        else:
            prr = None
            room = self.cc.recovery_window() - pipe
            room0 = 0
        if self._rexmit_log:
            room -= self._lost_resends(now)
        s = self._rexmit_high if self._rexmit_high > una else una
        mss = self._mss
        uses_rate = self._rate is not None
        while room > 0:
            hole = sack.next_hole(s)
            if hole < 0 or hole >= lost_below:
                break  # no hole, or the rest may still arrive (RACK's reordering window)
            stop = sack.sacked_after(hole)
            end = hole + mss
            if 0 <= stop < end:
                end = stop
            if end > smax:
                end = smax
            if self._queue_rexmit(hole):
                room -= end - hole
                if uses_rate:
                    self.cc.on_lost(end - hole, hole != self._lost_run_end)
                    self._lost_run_end = end
            s = end
        if prr is not None:
            prr.out += room0 - room  # what the resends took
        self._recovery_room = room if room > 0 else 0

    def _log_resend(self, seq: int, now: float) -> None:
        """Watch a resend for a second loss (see _lost_resends)."""
        log = self._rexmit_log
        if len(log) < MAX_REXMIT_LOG:
            if log is _NO_LOG:
                log = self._rexmit_log = deque()
            self._rxt_n += 1
            log.append((seq, now, self._snd_max, self._rxt_n))

    def _lost_resends(self, now: float) -> int:
        """RACK (RFC 8985 6.2) for retransmissions: a resent segment is lost again once a
        segment sent after it has been delivered (new data first sent after it SACKed, or
        a later resend ACKed or SACKed) and a reordering window (srtt / 4) has passed.
        Queues those to go again and returns the bytes queued.

        Resends are judged by send time, not by sequence: a recovery that resends a burst
        of holes sends little new data behind them, and waiting for new data to be SACKed
        left a lost resend at the log's head to the timer while the resends after it were
        all delivered (pathsim at 300 Mbit/s, 40 ms, a 150-packet queue, BBR without its
        loss bound: 16 timeouts in 10 s, 38 Mbit/s). The log is in send order, so the
        newest delivered resend is looked for only a few entries past a stuck head: its
        successors, sent just after it, are the ones an in-order path delivers next."""
        log = self._rexmit_log
        sack = self._sack
        una = self._snd_una
        sacked = self._sacked
        high = sacked[-1][1] if sacked else una
        rtt = self._rtt
        reo_before = now - (0.25 * rtt.srtt + CLOCK_GRANULARITY)
        # A resend "delivered" sooner than the path's least round trip after it went out
        # was the original arriving late: it says nothing about when later resends left.
        real_before = now - rtt.min_rtt
        rack_n = self._rack_rxt_n  # the newest resend known delivered, by send order
        # This ACK delivered something: the segment it reports was sent about a round
        # trip ago, so a resend sent more than a round trip and a reordering window ago
        # was sent before it (RACK's rule with the delivered segment's send time taken
        # from the latest RTT, for resends lost in a burst longer than RACK_PEEK).
        mark = self._delivered_mark()
        lost_before = -1.0
        if mark > self._rack_mark:
            lost_before = reo_before - rtt.latest
        self._rack_mark = mark
        queued = 0
        while log:
            seq, at, smax_then, n = log[0]
            if seq < una or sack.holds(seq):
                log.popleft()  # delivered
                if n > rack_n and at <= real_before:
                    rack_n = n
                continue
            if at > reo_before:
                break  # within the reordering window: everything after it too
            if high <= smax_then and n >= rack_n and at > lost_before:
                k = 1
                last = min(len(log), RACK_PEEK + 1)
                while k < last:
                    s2, at2, _, n2 = log[k]
                    if at2 <= real_before and (s2 < una or sack.holds(s2)):
                        rack_n = n2
                        break
                    k += 1
                if n >= rack_n:
                    break  # nothing sent after it is known delivered yet
            log.popleft()
            if self._queue_rexmit(seq):
                self.lost_retransmits += 1
                queued += self._mss
        self._rack_rxt_n = rack_n
        return queued

    def _ecn_in(self, offflags: int, ce: bool, plen: int, now: float) -> None:
        """ECN signals on a guest segment (RFC 3168 6.1.2-6.1.3)."""
        if offflags & _CWR:
            self._ece_out = False  # it reduced: stop echoing (a CE on this one restarts it)
        if ce and plen:
            self.ecn_ce += 1
            self._ece_out = True
        if (
            offflags & _ECE
            and not offflags & _SYN
            and self._snd_una >= self._ecn_recover
            and self._snd_max > self._snd_una
            and not self._in_recovery
            and not self._rto_loss
        ):
            # Congestion without loss: reduce as for a loss, once per window, and say so
            # with CWR on the next new data. (BBR v1, like Linux's, does not react.)
            self._ecn_recover = self._snd_max
            self.cc.on_ecn(self._snd_max - self._snd_una, now)
            self.ecn_reductions += 1
            self._cwr_out = True

    def _begin_undo(self, now: float) -> None:
        """A loss event is about to reduce the window: remember how to undo it."""
        self._undo = self.cc.undo_state()
        self._undo_marker = self._snd_una
        self._undo_retrans = 0
        self._undo_ts = self._ts_now(now)
        self._undo_until = -1

    def _echoes_original(self, tsecr: int) -> bool:
        """Whether an ACK's echoed timestamp is older than the episode's first
        retransmission: the guest answered an original segment (RFC 3522). TS.Recent
        never moves backwards (RFC 7323), so once a retransmission filled the left edge
        no later ACK can echo an older value."""
        if not (tsecr and self._ts_ok):
            return False
        d = (self._undo_ts - tsecr) & MASK
        return 0 < d < _HALF

    def _do_undo(self) -> None:
        self.cc.undo(self._undo)
        self._undo = None
        self._undo_marker = self._undo_until = -1
        self.spurious_undos += 1

    def _on_dsack(self, left: int, right: int) -> None:
        """The guest got [left, right) twice: if we resent it in the episode that can
        still be undone, that resend was not needed (RFC 2883, as Linux counts it).

        Either way the path delivered something we had judged lost: RACK now waits a
        reordering window before judging (RFC 8985 6.2.3 widens it on a D-SACK). The
        other sign, a hole that fills with nothing resent, never shows when every hole
        was resent at once: 1 % of segments 2 ms early at 100 ms made five spurious fast
        retransmissions in STARTUP, read as 5.5 % loss, and the loss bound stopped the
        search at 33 of 200 Mbit/s (pathsim, one seed in eight; the relay's reordering
        profile collapsed to 27-43 Mbit/s in three runs of six)."""
        self._reord = True
        if self._undo_marker < 0 or left < self._undo_marker or self._undo_retrans <= 0:
            return
        self._undo_retrans -= -(-(right - left) // self._mss)
        if self._undo_retrans <= 0 and not self._in_recovery and not self._rto_loss:
            self._do_undo()  # every resend was a duplicate, and the episode is over

    def _rcv_space(self, now: float) -> None:
        """Once a round trip: if the guest delivered more than half the ring in it, the
        window it is offered may be what limits it, so double the ring (Linux's receive
        buffer autotuning, tcp_rcv_space_adjust, sizes to twice a round trip's data the
        same way). A fixed 1 MiB capped an upload at 83 Mbit/s at 100 ms (bench_wan)."""
        copied = self._rcv_nxt - self._rcv_space_seq
        self._rcv_space_seq = self._rcv_nxt
        srtt = self._rtt.srtt
        self._rcv_space_at = now + (srtt if srtt > CLOCK_GRANULARITY else CLOCK_GRANULARITY)
        if 2 * copied <= self._rcv_cap or self.state not in _RECEIVING:
            return
        p = self._p
        cap = self._rcv_cap
        want = min(2 * cap, p.rcv_buffer_max)
        budget = self._budget
        if budget is None or want <= cap or not budget.take(want - cap):
            if want <= cap:
                self._rcv_space_at = INF  # at the ceiling: nothing more to look at
            return
        self._rcv_lent += want - cap
        if self._rcv_buf == NO_RING:  # nothing held: the next ring taken is the big one
            self._rcv_cap = want
            self._ooo.max_bytes = want
            return
        new, nmv = POOL.take(want)
        # Every byte held (in order or beyond a hole) lies in [RCV.READ, RCV.READ + cap).
        _move(self._rcv_mv, cap, nmv, want, self._rcv_read - self._rcv_base, cap)
        POOL.give(cap, self._rcv_buf)
        self._rcv_buf = new
        self._rcv_mv = nmv
        self._rcv_cap = want
        self._ooo.max_bytes = want

    def _delivered_mark(self) -> int:
        """SND.UNA plus the bytes SACKed above it: what the guest reported receiving, so
        the difference between two ACKs is what the later one delivered."""
        return self._snd_una + self._sack.sacked

    def _queue_rexmit(self, seq: int) -> bool:
        """Queue the segment at `seq` for retransmission; False if it already is."""
        if seq < self._snd_max and seq not in self._rexmit_set:
            if self._rexmit is _NO_REXMIT:
                self._rexmit = deque()
                self._rexmit_set = set()
            self._rexmit.append(seq)
            self._rexmit_set.add(seq)
            return True
        return False

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & MASK

    # ================================================================== output

    def flush(self, now: float) -> None:
        """Send what the windows allow and any ACK that is due."""
        if self._snd_buf != NO_RING or self._rcv_buf != NO_RING:
            self._shed_rings()
        if self._pending_rst is not None:
            self._send_pending_rst(now)
        st = self.state
        if st is _CLOSED or st is _LISTEN:
            return
        if self._t_retry != INF:
            if now < self._t_retry:
                return
            self._t_retry = INF
        if st is _SYN_RCVD:
            if self._synack_now:
                self._send_synack(now)
            return
        if st is _SYN_SENT:
            if self._synack_now:
                self._send_syn(now)
            return
        sent = False
        if st in _SENDING and (
            self._rexmit
            or self._snd_nxt < self._snd_end
            or (self._fin_queued and self._snd_nxt <= self._fin_seq)
        ):
            sent = self._send_data(now)
        if self._ack_now and not sent and self._t_retry == INF:
            self._send_ack(now)

    def _ack_fields(self, now: float) -> tuple[int, bytes]:
        """Window field and options for the segments of one flush."""
        if now >= self._rcv_space_at:
            self._rcv_space(now)
        nxt = self._rcv_nxt
        edge = self._rcv_read + self._rcv_cap
        adv = self._rcv_adv_edge
        if edge - adv < self._sws_thresh and adv >= nxt:
            edge = adv  # receiver SWS avoidance: do not open the window by a sliver
        wnd = edge - nxt
        if wnd < 0:
            wnd = 0
        ws = self._rcv_ws
        field = wnd >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        new_edge = nxt + (field << ws)
        if new_edge > adv:
            self._rcv_adv_edge = new_edge
        if self._ts_ok:
            opts = _TS_PREFIX + _TS.pack(self._ts_now(now), self._ts_recent)
            if self._ooo_ranges and self._sack_ok:
                # 40 option bytes hold three SACK blocks next to a timestamp, four without
                opts = tcp.options_bytes(
                    ts=(self._ts_now(now), self._ts_recent), sack=self._ooo.sack_blocks(3)
                )
        elif self._ooo_ranges and self._sack_ok:
            opts = tcp.options_bytes(sack=self._ooo.sack_blocks(4))
        else:
            opts = b""
        return field, opts

    def _ack_sent(self) -> None:
        self._ack_now = False
        self._t_delack = INF
        self._unacked = 0
        self._last_ack_sent = self._rcv_nxt

    def _send_ack(self, now: float, seq: int = -1) -> bool:
        slot = self.egress.reserve()
        if slot is None:
            self._t_retry = now + EGRESS_RETRY
            return False
        window, opts = self._ack_fields(now)
        flags = _ACK | _ECE if self._ece_out else _ACK
        n = self._writer.write(
            slot, self._snd_nxt if seq < 0 else seq, self._rcv_nxt, flags, window, opts, 0
        )
        self.egress.commit(n, self.peer)
        self._ack_sent()
        return True

    def _send_pending_rst(self, now: float) -> None:
        rst = self._pending_rst
        if rst is None:
            return
        slot = self.egress.reserve()
        if slot is None:
            self._t_retry = now + EGRESS_RETRY
            return
        seq, ack, flags = rst
        n = self._writer.write(slot, seq, ack, flags, 0, b"", 0)
        self.egress.commit(n, self.peer)
        self._pending_rst = None

    def _emit(self, seq: int, n: int, flags: int, window: int, opts: bytes, psum: int = -1) -> bool:
        """Write one segment into an egress slot; `psum`: its payload's sum, if known."""
        slot = self.egress.reserve()
        if slot is None:
            return False
        if self._ece_out:
            flags |= _ECE
        if n:
            start = self._hlen + len(opts)
            cap = self._snd_cap
            idx = (seq - self._snd_base) % cap
            end = idx + n
            mv = self._snd_mv
            if end <= cap:
                slot[start : start + n] = mv[idx:end]
            else:
                k = cap - idx
                slot[start : start + k] = mv[idx:cap]
                slot[start + k : start + n] = mv[0 : end - cap]
        length = self._writer.write(slot, seq, self._rcv_nxt, flags, window, opts, n, psum)
        self.egress.commit(length, self.peer)
        return True

    def _send_data(self, now: float) -> bool:
        """Retransmissions first, then new data within min(guest window, cwnd), then our
        FIN once everything before it went out. Returns whether anything was sent (every
        segment carries the current ACK)."""
        window, opts = self._ack_fields(now)
        mss = self._mss - (len(opts) - (tcp.TS_OPTION_LEN if self._ts_ok else 0))
        fin_seq = self._fin_seq if self._fin_queued else -1
        sent = False
        una = self._snd_una
        rtt = self._rtt
        rexmit = self._rexmit
        rset = self._rexmit_set
        nxt = self._snd_nxt
        end = self._snd_end
        # Seconds per byte at the controller's pacing rate (0 = not paced). Resent
        # segments are paced too: recovery that resent every hole at once into a
        # 100-packet bottleneck lost most of them again (pathsim, 100 Mbit/s, 100 ms).
        per_byte = 0.0
        srtt = rtt.srtt
        if self._p.pacing and srtt > 0.0 and (rexmit or nxt < end):
            per_byte = 1.0 / self.cc.pacing_rate(srtt)
            floor = now - PACE_QUANTUM  # lateness beyond one quantum is not caught up
            if self._pace_at < floor:
                self._pace_at = floor
        self._t_pace = INF

        while rexmit:
            seq = rexmit[0]
            if seq < self._snd_una:
                rexmit.popleft()
                rset.discard(seq)
                continue
            if per_byte and self._pace_at > now + PACE_QUANTUM:
                self._t_pace = self._pace_at - PACE_QUANTUM
                break
            n = min(mss, self._snd_end - seq, self._snd_max - seq)
            sacked = self._sack.sacked_after(seq)
            if sacked >= 0:
                n = min(n, sacked - seq)
            flags = _ACK
            if n <= 0:
                n = 0
            if seq + n == fin_seq and self._snd_max > fin_seq:
                flags |= _FIN
            elif n == 0:
                rexmit.popleft()
                rset.discard(seq)
                continue
            if not self._emit(seq, n, flags, window, opts):
                self._t_retry = now + EGRESS_RETRY
                return sent
            rexmit.popleft()
            rset.discard(seq)
            sent = True
            self.retransmits += 1
            self._undo_retrans += 1
            self._pace_at += n * per_byte
            if self._in_recovery or self._rto_loss:  # (a tail loss probe is neither)
                if self._sack_ok:
                    self._log_resend(seq, now)
                if self._in_recovery:
                    self._rexmit_high = max(self._rexmit_high, seq + n)
            rtt.resent(seq)
            if self._t_rto == INF or (seq == una and self._in_recovery):
                # Resending the oldest segment restarts the timer, as Linux does: it is
                # recovery's progress, and when that segment is lost again RACK finds it a
                # round trip later; a segment lost four times in a row at a full queue
                # otherwise ran into the timer (pathsim, 300 Mbit/s, 40 ms, 150 packets).
                self._t_rto = now + rtt.rto

        smax = self._snd_max
        cwnd = self.cc.cwnd
        if self._dupacks and not self._in_recovery:
            cwnd += min(self._dupacks, 2) * mss  # RFC 3042 limited transmit
        edge = min(self._snd_wl2 + self._snd_wnd, una + cwnd)
        sranges = self._sacked
        if sranges:
            if self._in_recovery:
                # SACK recovery counts the pipe, not an inflated window (see _sack_fill).
                edge = min(self._snd_wl2 + self._snd_wnd, smax + self._recovery_room)
            else:
                # Resending after a timeout: what the guest SACKed within the window is
                # neither resent (skipped below) nor counted against cwnd.
                for left, right in sranges:
                    if left >= edge:
                        break
                    edge += right - left
                edge = min(self._snd_wl2 + self._snd_wnd, edge)
        half_wnd = self._max_snd_wnd >> 1
        pace = self._p.pace
        ecn = self._ecn_ok
        writer = self._writer
        plain_tos = writer.tos & 0xFC
        ect_tos = plain_tos | 2
        # A train of full new segments has its payloads summed in one call (run_sums):
        # `sums[j]` belongs to the segment at train_at + j * mss, when it is sent whole.
        sums = _NO_SUMS
        train_at = nxt
        if nxt >= smax and not pace and not mss & 1:
            k = (min(end, edge) - nxt) // mss
            if per_byte:
                # no more than pacing lets out this time (a segment over, as the loop does)
                k2 = int((now + PACE_QUANTUM - self._pace_at) / (mss * per_byte)) + 1
                if k2 < k:
                    k = k2
            cap = self._snd_cap
            idx = (nxt - self._snd_base) % cap
            if idx + k * mss > cap:
                k = (cap - idx) // mss  # only where the ring does not wrap
            if k > TRAIN_MAX:
                k = TRAIN_MAX
            if k >= TRAIN_MIN:
                sums = run_sums(self._snd_mv, idx, mss, k)
        while nxt < end:
            if nxt < smax and sranges:
                nxt = self._sack.first_unsacked(nxt)  # the guest holds the rest: skip
                if nxt >= end:
                    continue
            if pace and nxt >= smax:
                if now < self._next_pace:
                    self._t_retry = self._next_pace  # TCP_PACE_US: the next one later
                    break
                self._next_pace = now + pace
            if per_byte and self._pace_at > now + PACE_QUANTUM:
                self._t_pace = self._pace_at - PACE_QUANTUM  # the rest at the rate
                break
            n = end - nxt
            if n > mss:
                n = mss
            if nxt < smax and sranges:
                stop = self._sack.sacked_after(nxt)
                if 0 <= stop < nxt + n:
                    n = stop - nxt  # resend up to what the guest holds, not into it
            room = edge - nxt
            if room < n:
                # Sender SWS avoidance (RFC 9293 3.8.6.2.1): a partial segment only when it
                # is at least half the largest window the guest ever offered. It does not
                # hold back a retransmission: that data was already sent once.
                if room <= 0 or (room < half_wnd and room < mss and nxt >= smax):
                    break
                n = room
            flags = _ACK
            if nxt + n == end:
                flags = _ACK | _PSH
                if fin_seq == end:
                    flags |= _FIN
            if ecn:
                # RFC 3168 6.1.5: new data is ECT(0); a retransmission is not.
                if nxt >= smax:
                    writer.tos = ect_tos
                    if self._cwr_out:
                        flags |= _CWR
                        self._cwr_out = False
                else:
                    writer.tos = plain_tos
            psum = -1
            if n == mss and sums:
                j, r = divmod(nxt - train_at, mss)
                if not r and 0 <= j < len(sums):
                    psum = sums[j]
            if not self._emit(nxt, n, flags, window, opts, psum):
                self._t_retry = now + EGRESS_RETRY
                break
            sent = True
            self._pace_at += n * per_byte
            if nxt < smax:
                self.retransmits += 1
                self._undo_retrans += 1
                if self._rto_loss and self._sack_ok:
                    self._log_resend(nxt, now)  # going back N after a timeout
            else:
                self.bytes_out += n
                if rtt.timed_end < 0:
                    rtt.start_timing(nxt + n, now)
            nxt += n
            if flags & _FIN:
                nxt += 1
            if nxt > smax:
                smax = nxt
        else:
            if self._rate is not None and edge - nxt >= mss and self._snd_cap - (end - una) >= mss:
                # Window to spare and nothing to send: app-limited, unless the ring is
                # full. Then the sender is held by its own buffer (in recovery SND.UNA
                # waits at a hole), and marking those rounds app-limited kept BBR without
                # its loss bound in STARTUP for good (docs/tcp-wan.md). (The bridge reads
                # the host again only at a quarter free; counting up to there as held too
                # added ~1 ms of queue behind the relay rig's bottleneck: not done.)
                self._rate.app_limited(smax - una)
            if fin_seq == end and nxt == end and self._t_retry == INF:
                # All data went out earlier: a bare FIN (it needs no window).
                if self._emit(nxt, 0, _ACK | _FIN, window, opts):
                    if nxt < smax:
                        self.retransmits += 1
                    nxt += 1
                    if nxt > smax:
                        smax = nxt
                    sent = True
                else:
                    self._t_retry = now + EGRESS_RETRY
        if ecn:
            writer.tos = plain_tos  # ACKs and retransmissions: not ECT
        self._snd_nxt = nxt
        if smax > self._snd_max:
            if self._in_recovery and sranges:
                # New data sent in recovery spends the room _sack_fill granted (a second
                # flush before the next ACK, for pacing, must not be granted it again).
                grown = smax - self._snd_max
                room = self._recovery_room - grown
                self._recovery_room = room if room > 0 else 0
                if self._prr is not None:
                    self._prr.out += grown
            if self._rate is not None:
                self._rate.on_send(smax, now, self._snd_max == una)
            if self._sack_ok:
                self._sent_t.append(now)
                self._sent_s.append(smax)
        self._snd_max = smax
        if fin_seq >= 0 and smax > fin_seq:
            if self.state is _EST:
                self.state = _FIN_WAIT_1
            elif self.state is _CLOSE_WAIT:
                self.state = _LAST_ACK
        if smax > self._snd_una:
            if self._t_rto == INF:
                self._t_rto = now + rtt.rto
            if self._t_tlp == INF and self._sack_ok and not self._in_recovery:
                self._arm_tlp(now)
        elif (nxt < end or (fin_seq >= 0 and nxt <= fin_seq)) and self._t_persist == INF:
            # Nothing in flight yet data waits: only a probe can learn the window opened.
            self._t_persist = now + self._persist_interval()
        if sent:
            self._ack_sent()
        return sent

    def _persist_interval(self) -> float:
        """The persist timer backs off on its own from the un-backed-off RTO: a window
        that closed right after a string of retransmissions would otherwise wait out the
        retransmission backoff (up to rto_max) before the first probe."""
        return min(self._rtt.rto_base * (1 << self._persist_backoff), self._p.rto_max)

    # ================================================================== timers

    def get_timer(self) -> float | None:
        p = self._p
        t = min(
            self._t_rto,
            self._t_delack,
            self._t_persist,
            self._t_tw,
            self._t_retry,
            self._t_pace,
            self._t_tlp,
            self._t_rack,
        )
        st = self.state
        if st is not _CLOSED and st is not _TIME_WAIT:
            if p.idle_timeout > 0:
                t = min(t, max(self._last_rx, self._last_host) + p.idle_timeout)
            if p.ack_idle_fail > 0 and self._snd_max - self._snd_una >= (
                p.ack_idle_min_inflight or self._mss
            ):
                # exactly the condition handle_timer acts on: a deadline it would ignore
                # would come back as "due" forever
                t = min(t, self.last_ack_progress + p.ack_idle_fail)
            if st is _SYN_SENT:
                t = min(t, self._syn_deadline)
            elif p.keepalive_idle > 0 and st is not _LISTEN and st is not _SYN_RCVD:
                t = min(
                    t, self._last_rx + p.keepalive_idle + self._ka_probes * p.keepalive_interval
                )
        elif st is _CLOSED:
            pending = self._pending_rst is not None and self._t_retry != INF
            if pending:
                return self._t_retry
            if not self.closed and p.idle_timeout > 0:
                # closed gracefully, but the host never took the last guest bytes
                return self._last_host + p.idle_timeout
            return None
        return None if t == INF else t

    def handle_timer(self, now: float) -> None:
        st = self.state
        p = self._p
        if st is _CLOSED:
            if self._pending_rst is not None:
                self._t_retry = INF
                self._send_pending_rst(now)
            elif p.idle_timeout > 0 and now >= self._last_host + p.idle_timeout:
                self._rcv_read = self._rcv_nxt - self.guest_fin  # the host never read them
            return
        if now >= self._t_tw:
            self._close()
            return
        if st is _TIME_WAIT:
            return
        if p.idle_timeout > 0 and now >= max(self._last_rx, self._last_host) + p.idle_timeout:
            self._give_up(now)
            return
        if (
            p.ack_idle_fail > 0
            and now >= self.last_ack_progress + p.ack_idle_fail
            and self.in_flight >= (p.ack_idle_min_inflight or self._mss)
        ):
            self._give_up(now)  # the guest stopped acknowledging: free what it pins
            return
        if now >= self._t_retry:
            self._t_retry = INF
        if now >= self._t_pace:
            self._t_pace = INF
        if st is _SYN_SENT and now >= self._syn_deadline:
            self.timed_out = True
            self._close(discard=True)  # the guest never answered: nothing to reset
            return
        if now >= self._t_rto:
            self._on_rto(now)
            if self.state is _CLOSED:
                return
        elif now >= self._t_tlp:
            self._on_tlp(now)
        if now >= self._t_rack:
            self._on_rack_timer(now)
        if now >= self._t_persist:
            self._on_persist(now)
        if now >= self._t_delack:
            self._t_delack = INF
            self._ack_now = True
        if (
            p.keepalive_idle > 0
            and st is not _LISTEN
            and st is not _SYN_RCVD
            and st is not _SYN_SENT
            and now >= self._last_rx + p.keepalive_idle + self._ka_probes * p.keepalive_interval
        ):
            if self._ka_probes >= p.keepalive_count:
                self._give_up(now)
                return
            self._ka_probes += 1
            self._send_ack(now, (self._snd_una - 1) & MASK)
        self.flush(now)

    def _on_rto(self, now: float) -> None:
        p = self._p
        st = self.state
        if st is _SYN_SENT:
            if self._retries >= p.syn_retries:
                self.timed_out = True
                self._close(discard=True)  # the guest never answered our SYN
                return
            self._retries += 1
            self.rto_expirations += 1
            self.retransmits += 1
            self._synack_rexmitted = True  # Karn: the SYN-ACK's RTT is not sampled
            self._rtt.backoff()
            self._t_rto = now + self._rtt.rto
            self._synack_now = True
            return
        if st is _SYN_RCVD:
            if self._retries >= p.synack_retries:
                self.timed_out = True
                self._close(discard=True)  # the guest went away; it never saw a connection
                return
            self._retries += 1
            self.rto_expirations += 1
            self.retransmits += 1
            self._synack_rexmitted = True
            self._rtt.backoff()
            self._t_rto = now + self._rtt.rto
            self._synack_now = True
            return
        if self._snd_max <= self._snd_una:
            self._t_rto = INF
            return
        if self._snd_wl2 + self._snd_wnd <= self._snd_una:
            # The guest shrank its window to zero under data in flight: nothing may be
            # resent, and it is not congestion. Probe instead and, like Linux, give up
            # only when the probes go unanswered (a live guest may keep its window shut).
            self.rto_expirations += 1
            if self._probes >= p.max_retries:
                self._give_up(now)
                return
            self._probes += 1
            self._send_ack(now, (self._snd_una - 1) & MASK)
            self._rtt.backoff()
            self._t_rto = now + self._rtt.rto
            return
        if self._retries >= p.max_retries:
            self._give_up(now)
            return
        self._retries += 1
        self.rto_expirations += 1
        flight = self._snd_max - self._snd_una
        if not (self._in_recovery or self._rto_loss) or self._undo_marker < 0:
            self._begin_undo(now)  # (a timeout within an episode keeps its start)
        self.cc.on_rto(flight, now)
        self._rto_loss = True
        if self._rate is not None:
            self._rate.forget()
        # RFC 6582: losses revealed after a timeout are not a new congestion event.
        self._recover = self._snd_max
        self._in_recovery = False
        self._dupacks = 0
        self._t_tlp = self._t_rack = INF
        self._tlp_high = -1
        self._rexmit_log.clear()
        if self._retries > 1:
            # RFC 2018 8: the guest may renege on what it SACKed. Resending only the
            # unSACKed bytes after one timeout saves resending a whole window (RFC 6675
            # 5.1); a second timeout in a row is taken as a sign of reneging.
            self._sack.clear()
        self._rexmit.clear()
        self._rexmit_set.clear()
        self._snd_nxt = self._snd_una  # go back N, paced by the one-segment window
        self._rexmit_high = self._snd_una
        rtt = self._rtt
        rtt.stop_timing()
        rtt.backoff()  # RFC 6298 5.5
        self._t_rto = now + rtt.rto

    def _on_persist(self, now: float) -> None:
        """RFC 9293 3.8.6.1: the guest's window is closed (or too small to use) with data
        waiting and nothing in flight. A probe makes the guest tell us its window again;
        like Linux we probe with an already acknowledged sequence number, which never
        lands in the guest's buffer, so probing can go on as long as the guest answers."""
        self._t_persist = INF
        if self.state not in _SENDING or self._snd_max > self._snd_una:
            return
        usable = self._snd_wl2 + self._snd_wnd - self._snd_nxt
        if usable > 0 and self._snd_nxt < self._snd_end:
            # Window open but below the SWS threshold: send what fits (the SWS override).
            window, opts = self._ack_fields(now)
            n = min(usable, self._snd_end - self._snd_nxt, self._mss)
            if self._emit(self._snd_nxt, n, _ACK | _PSH, window, opts):
                rtt = self._rtt
                if self._snd_nxt >= self._snd_max and rtt.timed_end < 0:
                    rtt.start_timing(self._snd_nxt + n, now)
                self._snd_nxt += n
                self._snd_max = max(self._snd_max, self._snd_nxt)
                self.bytes_out += n
                self._t_rto = now + rtt.rto
                self._ack_sent()
            return
        if self._probes >= self._p.max_retries:
            self._give_up(now)  # the guest stopped answering probes
            return
        self._probes += 1
        self._send_ack(now, (self._snd_una - 1) & MASK)
        self._persist_backoff = min(self._persist_backoff + 1, 16)
        self._t_persist = now + self._persist_interval()

    def _give_up(self, now: float) -> None:
        self.timed_out = True
        self._pending_rst = (self._snd_nxt, self._rcv_nxt, _RST | _ACK)
        self._close(discard=True)
        self._send_pending_rst(now)

    def _close(self, *, discard: bool = False) -> None:
        """Enter CLOSED. After a reset, abort or timeout the guest bytes not yet taken by
        the host side are dropped (RFC 9293 3.10.7.4: a reset flushes the queues); after
        a graceful close they stay readable until the bridge drains them."""
        if discard:
            self._rcv_read = self._rcv_nxt - self.guest_fin
        self.state = _CLOSED
        self._t_rto = self._t_delack = self._t_persist = self._t_tw = INF
        self._t_tlp = self._t_rack = INF
        self._rexmit.clear()
        self._rexmit_set.clear()
        self._ack_now = False


_ACCEPTING_WRITES: Final = frozenset({_LISTEN, _SYN_SENT, _SYN_RCVD, _EST, _CLOSE_WAIT})
