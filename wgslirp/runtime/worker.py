"""A worker: drains its inbound ring, runs the bridges, fills its outbound ring.

Each worker owns the host sockets of the flows hashed to it and nothing else; it never sees
a key. The same class runs in its own process (PROCESSOR_WORKERS >= 1) or inline on the
ingress loop (PROCESSOR_WORKERS=0).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterable

from wgslirp.config import Config
from wgslirp.config.forwards import expand
from wgslirp.config.values import split_upstream
from wgslirp.net import ipv6
from wgslirp.net.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, addr_to_int
from wgslirp.obs.metrics import FORWARD_FIELDS, MAX_FORWARD_METRICS, MetricsBlock, Publisher
from wgslirp.runtime.host_addresses import HostAddressWatch, open_address_events
from wgslirp.runtime.loop import Loop
from wgslirp.runtime.socketgroup import SocketGroup
from wgslirp.shm.registry import FlowRegistry
from wgslirp.shm.ring import BatchWriter, Consumer, Producer
from wgslirp.slirp.bridge_context import ROUTE_BY_DESTINATION, BridgeContext, WorkerStats
from wgslirp.slirp.forward_bridge import ForwardTally, TcpForwards, UdpForwards
from wgslirp.slirp.icmp_bridge import ECHO_IDLE_TIMEOUT, EchoFlow, IcmpBridge, probe_mode
from wgslirp.slirp.nat_table import FlowTable
from wgslirp.slirp.policy import EgressPolicy
from wgslirp.slirp.tcp_bridge import TcpBridge, TcpBridgeStats, TcpFlow
from wgslirp.slirp.tcp_buffers import SendBudget
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp.slirp.udp_bridge import UdpBridge, UdpFlow

log = logging.getLogger("wgslirp.worker")

# Stopping: how often a worker whose egress ring is full looks whether ingress made room,
# and how long it waits for any before it gives up telling the remaining guests.
ROOM_POLL = 0.0005
ROOM_STALL = 0.5

FORWARDS_MESSAGE = b"\x00forwards\n"
"""Starts a control message on a worker's ring (peer index ROUTE_BY_DESTINATION, never a
real peer's): the forwards to listen on after a reload, as JSON. An IPv4 packet cannot
start with a zero byte, so it cannot be taken for one."""

HOST_RECHECK = 0.0005  # while host sockets are muted, look at the egress ring this often
DRAIN_BUDGET = 512  # inbound packets per loop turn before sockets and timers get a turn
ERROR_LOG_INTERVAL = 10.0  # seconds in which further per-packet errors are only counted


def read_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[tuple[str, int], ...]:
    """IPv4 nameservers of the host, for WG_DNS_IP when WG_DNS_UPSTREAM is unset."""
    out: list[tuple[str, int]] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    if "%" in parts[1]:
                        continue  # scoped link-local: no scope to connect with, skipped
                    try:  # garbage is skipped, not fatal to the worker
                        out.append((str(ipaddress.ip_address(parts[1])), 53))
                    except ValueError:
                        continue
    except OSError:
        pass
    return tuple(out)


_UPPER6 = frozenset({ipv6.NH_TCP, ipv6.NH_UDP, ipv6.NH_ICMPV6})


def build_policy(cfg: Config) -> EgressPolicy:
    upstream: Iterable[tuple[str, int]]
    if cfg.dns_upstream:
        upstream = tuple(split_upstream(u) for u in cfg.dns_upstream)
    else:
        upstream = read_resolv_conf()
    return EgressPolicy(
        allow_cidrs=cfg.egress.allow_cidrs,
        deny_cidrs=cfg.egress.deny_cidrs,
        gateway=cfg.gateway_ip,
        gateway_host=cfg.gateway_host_ip,
        dns=cfg.dns_ip,
        gateway6=cfg.gateway_ip6,
        gateway_host6=cfg.gateway_host_ip6,
        dns6=cfg.dns_ip6,
        nat64=cfg.egress.nat64,
        dns_upstream=tuple(upstream),
        own_sockets=frozenset(
            {(PROTO_UDP, cfg.listen_port)}
            | ({(PROTO_TCP, cfg.metrics.listen[1])} if cfg.metrics.listen else set())
        ),
    )


WORKER_COUNTERS: tuple[str, ...] = (
    *WorkerStats.__annotations__,
    *TcpBridgeStats().as_dict(),
    "udp_flows",
    "tcp_flows",
    "icmp_flows",
    "host_read_pauses",
    *(f"fwd{i}_{f}" for i in range(MAX_FORWARD_METRICS) for f in FORWARD_FIELDS),
)


def tcp_params(cfg: Config) -> TcpParams:
    mss = cfg.mtu - 40
    if cfg.tcp.mss_clamp:
        mss = min(mss, cfg.tcp.mss_clamp)
    return TcpParams(
        mss=mss,
        sack=cfg.tcp.enable_sack,
        ecn=cfg.tcp.ecn,
        ack_delay=cfg.tcp.ack_delay_ms / 1000.0,
        cc=cfg.tcp.cc,
        ttl=cfg.ip_ttl,
        pace=cfg.tcp.pace_us / 1e6,
        pacing=cfg.tcp.pacing,
        ack_idle_fail=float(cfg.tcp.ack_idle_fail_sec),
        ack_idle_min_inflight=cfg.tcp.ack_idle_min_inflight or 0,
        init_cwnd=cfg.tcp.init_cwnd_mss or 10,
        rcv_buffer=cfg.tcp.rcv_buffer,
        # Out-of-order data sits in the receive ring at its final place, so keeping all of
        # the window we advertise costs nothing extra; 256 KiB of a 1 MiB window made a
        # lossy upload resend what arrived past it (bench_wan: ~10k retransmissions for
        # 66 lost datagrams at 20 ms + 0.1 %).
        max_ooo_bytes=cfg.tcp.rcv_buffer,
        snd_buffer=cfg.tcp.snd_buffer,
        snd_buffer_max=max(cfg.tcp.snd_buffer, cfg.tcp.snd_buffer_max),
        rcv_buffer_max=max(cfg.tcp.rcv_buffer, cfg.tcp.rcv_buffer_max),
    )


_NO_FORWARDS = {f"fwd{i}_{f}": 0 for i in range(MAX_FORWARD_METRICS) for f in FORWARD_FIELDS}

REGISTRY_UNLIMITED = 65536
"""Connections a worker records for its replacement when TCP_MAX_FLOWS is 0 (unlimited);
beyond that a dead worker's connections hang until the guests time out (counted)."""


def registry_for(cfg: Config, nworkers: int) -> FlowRegistry:
    """The open-connection table of one worker, sized for its share of TCP_MAX_FLOWS."""
    share = _share(cfg.tcp.max_flows, max(1, nworkers))
    return FlowRegistry(share or REGISTRY_UNLIMITED)


def _share(total: int, n: int) -> int:
    """A global cap split across workers (0 stays unlimited). Flows spread over workers by
    hash, not evenly, so each share has headroom; a cap is then exact with one worker and
    within about a quarter with several."""
    if total == 0 or n == 1:
        return total
    return min(total, -(-total * 5 // (4 * n)) + 8)


class Worker:
    def __init__(
        self,
        cfg: Config,
        index: int,
        nworkers: int,
        inbound: Consumer,
        outbound: Producer,
        loop: Loop,
        icmp_mode: str | None,
        inbound_big: Consumer | None = None,
        metrics: MetricsBlock | None = None,
        registry: FlowRegistry | None = None,
    ) -> None:
        """`registry`: this worker index's open-connection table, which outlives the
        process; what a dead predecessor left there is reset at start."""
        self.index = index
        self._loop = loop
        self.inbound = inbound
        self.inbound_big = inbound_big
        self.egress = BatchWriter(outbound)
        self.stats = WorkerStats()
        n = max(1, nworkers)
        # Every host socket (flows, forward listeners) in one group the loop watches through
        # one descriptor: muted while the egress ring has no room (see turn).
        slots = self.egress.slots
        self._mute_below = max(1, slots // 8)
        self._unmute_at = max(2 * self._mute_below, slots // 4)
        self.host = SocketGroup(loop, self._egress_has_room)
        self.ctx = BridgeContext(
            self.egress,
            self.host,  # the Poller the bridges register their host sockets with
            mtu=cfg.mtu,
            ttl=cfg.ip_ttl,
            copy_tos=cfg.copy_tos,
            stats=self.stats,
            worker_index=index,
            nworkers=n,
            gateway=addr_to_int(cfg.gateway_ip) if cfg.gateway_ip else None,
            gateway6=ipv6.addr_to_int(cfg.gateway_ip6) if cfg.gateway_ip6 else None,
        )
        policy = build_policy(cfg)
        self.udp = UdpBridge(
            self.ctx,
            policy,
            FlowTable[UdpFlow](
                cfg.udp.idle_timeout,
                _share(cfg.udp.max_flows, n),
                _share(cfg.udp.max_flows_per_peer, n),
            ),
        )
        self.icmp = IcmpBridge(
            self.ctx,
            policy,
            FlowTable[EchoFlow](
                ECHO_IDLE_TIMEOUT,
                _share(cfg.udp.max_flows, n),
                _share(cfg.udp.max_flows_per_peer, n),
            ),
            icmp_mode,
            probe_mode(v6=True),
        )
        self.tcp = TcpBridge(
            self.ctx,
            policy,
            FlowTable[TcpFlow](
                float("inf"), _share(cfg.tcp.max_flows, n), _share(cfg.tcp.max_flows_per_peer, n)
            ),
            tcp_params(cfg),
            error_signal=cfg.tcp.error_signal,
            fast_dial=cfg.tcp.fast_dial_ms / 1000.0,
            sock_rcvbuf=cfg.tcp.sock_rcvbuf or 0,
            sock_sndbuf=cfg.tcp.sock_sndbuf or 0,
            ack_idle_gate=cfg.tcp.ack_idle_gate_ms / 1000.0,
            ack_idle_min_inflight=cfg.tcp.ack_idle_min_inflight or 0,
            send_budget=SendBudget(cfg.tcp.snd_buffer_pool),
            gate_log=cfg.tcp.gate_log,
            log=registry,
        )
        loop.timers.append(self.tcp)
        self.tcp_forwards = TcpForwards(
            self.tcp,
            self.host,
            tcp_params(cfg),
            connect_timeout=cfg.forward_connect_timeout,
            index=index,
            nworkers=n,
        )
        self.udp_forwards = UdpForwards(self.udp, self.host, index=index, nworkers=n)
        self.set_forwards(cfg)
        if registry is not None:
            orphans = registry.adopt()
            if orphans:
                sent = self.tcp.reset_orphans(orphans)
                self.egress.flush()
                log.warning(
                    "worker %d: %d TCP connection(s) of a previous worker %d died with it; "
                    "their guests were told to reset (%d probed)",
                    index,
                    len(orphans),
                    index,
                    sent,
                )
        # Flows are decided against the host's addresses as they are at that moment.
        self.addresses = HostAddressWatch(
            policy.set_local_addresses, loop.clock(), events=open_address_events()
        )
        policy.refresh = self.addresses.sync
        if self.addresses.events is not None:
            loop.register(self.addresses.events, self.addresses.on_readable)
        loop.timers.append(self.addresses)
        if metrics is not None:
            self.publisher: Publisher | None = Publisher(
                metrics.workers[index], self.counters, lambda: loop.turns
            )
            loop.timers.append(self.publisher)
        else:
            self.publisher = None
        self._tcp_in = self.tcp.from_guest
        self._udp_in = self.udp.from_guest
        self._icmp_in = self.icmp.from_guest
        self._now = 0.0
        self._recheck_at = 0.0
        self._chain = ipv6.Chain()
        self._next_error_log = 0.0
        for cons in (inbound, inbound_big):
            if cons is not None:
                loop.add_ring(cons)
        loop.hooks.append(self.turn)
        loop.timers.append(self)

    def set_forwards(self, cfg: Config) -> None:
        self._listen(cfg.forward_tcp, cfg.forward_udp)

    def _listen(self, tcp: tuple[str, ...], udp: tuple[str, ...]) -> None:
        """Listen on these forwards (and only those): at start and on a reload. A port the
        start-up check found free but taken since is logged, not fatal to a worker."""
        tcp_list, udp_list = expand(tcp), expand(udp)
        failed = [("WG_FORWARD_TCP", *f) for f in self.tcp_forwards.listen(tcp_list)]
        failed += [("WG_FORWARD_UDP", *f) for f in self.udp_forwards.listen(udp_list)]
        # per-forward counters, in the order forward_labels names them
        self._tallies = [
            *(self.tcp_forwards.tallies.setdefault(f, ForwardTally(f)) for f in tcp_list),
            *(self.udp_forwards.tallies.setdefault(f, ForwardTally(f)) for f in udp_list),
        ][:MAX_FORWARD_METRICS]
        for name, fwd, exc in failed:
            log.error(
                "worker %d: %s %s:%d cannot be bound: %s",
                self.index,
                name,
                fwd.listen_ip,
                fwd.listen_port,
                exc.strerror or exc,
            )

    def turn(self, now: float) -> None:
        self._now = now
        self.inbound.drain(self._dispatch, DRAIN_BUDGET)
        if self.inbound_big is not None:
            self.inbound_big.drain(self._dispatch, DRAIN_BUDGET)
        self.udp.flush()
        self.tcp.flush_dirty(now)
        self.egress.flush()
        self._gate_host(now)

    def _egress_has_room(self) -> bool:
        """Asked by the host socket group before each ready socket's handler: past the
        mute threshold the rest of the turn's ready sockets wait (level-triggered, they
        stay ready) and _gate_host mutes the group after the turn."""
        return self.egress.free_slots() >= self._mute_below

    def _gate_host(self, now: float) -> None:
        """Back-pressure towards the host (the twin of ingress's read gate): with less
        than an eighth of the egress ring free, host sockets are left unread until a
        quarter is free again, so what ingress cannot take yet stays in the kernel's
        socket buffers (TCP: the host's window closes; UDP: the kernel drops when full,
        for free) instead of being read and dropped here (egress_full)."""
        host = self.host
        free = self.egress.free_slots()
        if host.muted:
            if free >= self._unmute_at:
                host.unmute()
            else:
                self._recheck_at = now + HOST_RECHECK
        elif free < self._mute_below:
            host.mute()
            self._recheck_at = now + HOST_RECHECK

    def _dispatch(self, pkt: memoryview, peer: int) -> None:
        try:
            if not pkt:  # ingress's "this peer is gone" message
                self.forget_peer(peer)
                return
            if peer == ROUTE_BY_DESTINATION:  # a control message from ingress
                self._control(pkt)
                return
            if pkt[0] >> 4 == 4:
                proto = pkt[9]
            else:  # IPv6: ingress checked the chain; usually no extension header at all
                proto = pkt[6]
                if proto not in _UPPER6:
                    chain = self._chain
                    proto = chain.proto if ipv6.walk(pkt, len(pkt), chain) else -1
                if proto == ipv6.NH_ICMPV6:
                    proto = PROTO_ICMP
            if proto == PROTO_TCP:
                self._tcp_in(peer, pkt, len(pkt), self._now)
            elif proto == PROTO_UDP:
                self._udp_in(peer, pkt, len(pkt), self._now)
            elif proto == PROTO_ICMP:
                self._icmp_in(peer, pkt, len(pkt), self._now)
            else:
                self.stats.not_handled += 1
        except Exception:  # one bad flow must not take the worker's other flows down
            self.stats.internal_errors += 1
            if self._now >= self._next_error_log:
                self._next_error_log = self._now + ERROR_LOG_INTERVAL
                log.exception(
                    "worker %d: error handling a guest packet (further errors "
                    "in the next %.0f s are only counted)",
                    self.index,
                    ERROR_LOG_INTERVAL,
                )

    def _control(self, pkt: memoryview) -> None:
        data = bytes(pkt)
        if data.startswith(FORWARDS_MESSAGE):
            entries = json.loads(data[len(FORWARDS_MESSAGE) :])
            self._listen(tuple(entries["tcp"]), tuple(entries["udp"]))

    def forget_peer(self, peer: int) -> None:
        """Close every flow of a removed peer: its host sockets, its places under the caps."""
        n = self.tcp.forget_peer(peer) + self.udp.forget_peer(peer) + self.icmp.forget_peer(peer)
        self.stats.peer_flows_closed += n
        if n:
            log.info("worker %d: closed %d flow(s) of removed peer %d", self.index, n, peer)

    def get_timer(self) -> float | None:
        a, b = self.udp.table.get_timer(), self.icmp.table.get_timer()
        if self.host.muted and (a is None or self._recheck_at < a):
            a = self._recheck_at  # nothing else may wake the loop while muted
        if a is None:
            return b
        return a if b is None or a < b else b

    def handle_timer(self, now: float) -> None:
        self.udp.expire(now)
        self.icmp.expire(now)
        self.egress.flush()
        if self.host.muted:
            self._gate_host(now)

    def counters(self) -> dict[str, int]:
        out = self.stats.as_dict() | self.tcp.stats.as_dict()
        out["udp_flows"] = len(self.udp.table)
        out["tcp_flows"] = len(self.tcp.table)
        out["icmp_flows"] = len(self.icmp.table)
        out["host_read_pauses"] = self.host.mutes
        out.update(_NO_FORWARDS)  # slots of forwards not configured (or gone) read 0
        for i, t in enumerate(self._tallies):
            out[f"fwd{i}_accepted"] = t.accepted
            out[f"fwd{i}_refused"] = t.refused
            out[f"fwd{i}_failed"] = t.failed
            out[f"fwd{i}_bytes_to_guest"] = t.bytes_to_guest
            out[f"fwd{i}_bytes_to_host"] = t.bytes_to_host
        return out

    def close(
        self, now: float, *, exiting: bool = False, drain: Callable[[], None] | None = None
    ) -> None:
        """Stopping: every guest connection is reset (the guest learns at once instead of
        waiting on a connection nobody serves any more) and the host sockets closed.

        The RSTs outnumber the egress ring's slots when many connections are open, so
        closing waits for ingress to drain it (a process of its own, or `drain`, which
        drains it in this one) while it makes progress. `exiting`: the process ends next
        (TcpBridge.close skips what its exit does anyway)."""
        self.tcp_forwards.close()
        self.udp_forwards.close()
        reset = self.tcp.close(now, make_room=lambda: self._wait_for_room(drain), exiting=exiting)
        self.egress.flush()
        self.udp.close()
        self.icmp.close()
        if self.addresses.events is not None:
            self._loop.unregister(self.addresses.events)
        self.addresses.close()
        self.host.close()
        if reset:
            lost = self.tcp.stats.close_rst_lost
            log.info(
                "worker %d: reset %d guest TCP connection(s) on the way out%s",
                self.index,
                reset,
                f" ({lost} not told: the egress ring stayed full)" if lost else "",
            )

    def _wait_for_room(self, drain: Callable[[], None] | None) -> bool:
        """The egress ring is full (and published): wait until a quarter of it is free,
        so RSTs go in batches; False once ingress has freed nothing for ROOM_STALL."""
        eg, clock = self.egress, self._loop.clock
        want = max(1, eg.slots // 4)
        free = eg.free_slots()
        since = clock()
        while True:
            if drain is not None:
                drain()
            now_free = eg.free_slots()
            if now_free >= want:
                return True
            now = clock()
            if now_free > free:
                free, since = now_free, now
            elif now - since >= ROOM_STALL:
                return now_free > 0
            time.sleep(ROOM_POLL)


def set_process_name(name: str) -> None:
    """Name the process (comm, what ps and psutil.name() show) after its role."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor (pid `parent`, read before the fork) dies,
    even by SIGKILL. Comparing with that pid, not with 1, keeps this right when the
    supervisor itself is PID 1, as in a container without an init."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the death signal was armed
        os._exit(0)
