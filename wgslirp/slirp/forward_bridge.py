"""Inbound TCP forwards: host listening sockets whose connections become guest connections.

Every worker listens on every forwarded port with SO_REUSEPORT, so the kernel spreads
accepted connections over the workers and a worker that dies takes only its own queue of
not-yet-accepted connections with it (its replacement listens again; the others never
stopped). The worker that accepts opens the guest side itself, through the TCP bridge's
active open, from the gateway address and a NAT source port it picks so that the guest's
replies, hashed by ingress like every guest packet (flow_hash % N over guest, gateway,
guest port, NAT port), come back to this same worker: no steering state in ingress, and
nothing to clean up there when a worker restarts.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial

from wgslirp.config.forwards import Forward
from wgslirp.errors import ConfigError
from wgslirp.net.flowkey import flow_hash
from wgslirp.net.ipv4 import PROTO_TCP, PROTO_UDP, addr_to_int
from wgslirp.slirp.bridge_context import Poller
from wgslirp.slirp.tcp_bridge import TcpBridge
from wgslirp.slirp.tcp_endpoint import TcpParams
from wgslirp.slirp.udp_bridge import UdpBridge

log = logging.getLogger("wgslirp.forward")

NAT_PORT_LOW = 32768  # the NAT source ports guests see, Linux's ephemeral range
NAT_PORT_HIGH = 60999
ACCEPT_BATCH = 64  # connections accepted per readiness event; the loop's other work waits
LISTEN_BACKLOG = 512
# SYN retransmissions are bounded by WG_FORWARD_CONNECT_TIMEOUT, not by a count: 1+2+...
# doubling to the 60 s RTO ceiling reaches any timeout the setting allows (600 s).
_SYN_RETRIES = 16
_LINGER_RST = struct.pack("ii", 1, 0)


class ForwardTally:
    """What one forward did in this worker (summed over workers by the metrics)."""

    __slots__ = ("accepted", "bytes_to_guest", "bytes_to_host", "failed", "forward", "refused")

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.accepted = 0  # host connections accepted and opened toward the guest
        self.refused = 0  # the guest answered RST (or never answered)
        self.failed = 0  # reset at once: no NAT port, no gateway address, or a flow cap
        # payload bytes as the host side read and wrote them, counted as they move
        self.bytes_to_guest = 0
        self.bytes_to_host = 0

    def closed(self, refused: bool, unanswered: bool) -> None:
        if refused or unanswered:
            self.refused += 1


def reset_socket(sock: socket.socket) -> None:
    """Close with RST: the host client learns at once that nothing is behind it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def open_listener(fwd: Forward, proto: int = PROTO_TCP) -> socket.socket:
    """A forward's host socket, shareable by every worker (SO_REUSEPORT)."""
    kind = socket.SOCK_STREAM if proto == PROTO_TCP else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((fwd.listen_ip, fwd.listen_port))
        if proto == PROTO_TCP:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def nat_port_for(
    guest: int,
    gateway: int,
    gport: int,
    proto: int,
    index: int,
    nworkers: int,
    taken: Callable[[int], bool],
    rng: random.Random,
) -> int | None:
    """A NAT source port whose flow (as the guest sends it: guest -> gateway, guest port
    -> NAT port) hashes to worker `index` of `nworkers`, and that `taken(port)` does not
    reject. A random start keeps ports unpredictable; about `nworkers` candidates are
    tried on average, and the search is bounded."""
    span = NAT_PORT_HIGH - NAT_PORT_LOW + 1
    start = rng.randrange(span)
    for i in range(min(span, 256 * max(nworkers, 1))):
        port = NAT_PORT_LOW + (start + i) % span
        if nworkers > 1 and flow_hash(guest, gateway, proto, gport, port) % nworkers != index:
            continue
        if taken(port):
            continue
        return port
    return None


class _Listeners:
    """One worker's listening sockets of one protocol's forwards: what TCP and UDP share
    (binding, reload, the per-forward tally); the subclass says how a socket is served
    (`_serve`) and what closing one also ends (`_closing`)."""

    proto = PROTO_TCP
    poller: Poller
    listeners: dict[Forward, socket.socket]
    tallies: dict[Forward, ForwardTally]

    def _serve(self, sock: socket.socket, tally: ForwardTally, now: float, mask: int) -> None:
        raise NotImplementedError

    def _closing(self, sock: socket.socket) -> None:
        """A listening socket is about to close."""

    def listen(self, forwards: Iterable[Forward]) -> list[tuple[Forward, OSError]]:
        """Listen on exactly these forwards: new ones are bound, ones no longer wanted
        closed (a reload), kept ones untouched. Returns the ones that could not be bound."""
        wanted = list(dict.fromkeys(forwards))
        for fwd in [f for f in self.listeners if f not in wanted]:
            self._drop(self.listeners.pop(fwd))
        failed: list[tuple[Forward, OSError]] = []
        for fwd in wanted:
            if fwd in self.listeners:
                continue
            try:
                sock = open_listener(fwd, self.proto)
            except OSError as exc:
                failed.append((fwd, exc))
                continue
            self.listeners[fwd] = sock
            tally = self.tallies.setdefault(fwd, ForwardTally(fwd))
            self.poller.register(sock, partial(self._serve, sock, tally))
        return failed

    def _drop(self, sock: socket.socket) -> None:
        self._closing(sock)
        self.poller.unregister(sock)
        sock.close()

    def close(self) -> None:
        for sock in self.listeners.values():
            self._drop(sock)
        self.listeners.clear()


class TcpForwards(_Listeners):
    """The listening sockets of WG_FORWARD_TCP in one worker."""

    def __init__(
        self,
        bridge: TcpBridge,
        poller: Poller,
        params: TcpParams,
        *,
        connect_timeout: float,
        index: int,
        nworkers: int,
        rng: random.Random | None = None,
    ) -> None:
        self.bridge = bridge
        self.poller = poller
        self.params = replace(params, syn_timeout=connect_timeout, syn_retries=_SYN_RETRIES)
        self.index = index
        self.nworkers = max(1, nworkers)
        self.rng = rng or random.Random()
        self.listeners: dict[Forward, socket.socket] = {}
        self.tallies: dict[Forward, ForwardTally] = {}

    def _serve(self, lst: socket.socket, tally: ForwardTally, now: float, _mask: int) -> None:
        fwd = tally.forward
        guest = addr_to_int(fwd.guest_ip)
        bridge = self.bridge
        gw = bridge.ctx.gateway
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = lst.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: leave it queued, say so
                log.warning("forward %s: accept failed: %s", _name(fwd), exc)
                return
            port = None
            if gw is not None:
                port = nat_port_for(
                    guest,
                    gw,
                    fwd.guest_port,
                    PROTO_TCP,
                    self.index,
                    self.nworkers,
                    partial(bridge.forwarded_port_taken, guest, fwd.guest_port),
                    self.rng,
                )
            if port is None or not bridge.open_forwarded(
                conn, guest, fwd.guest_port, port, self.params, now, tally
            ):
                tally.failed += 1
                reset_socket(conn)
                continue
            tally.accepted += 1
        bridge.ctx.egress.flush(now)


class UdpForwards(_Listeners):
    """The listening sockets of WG_FORWARD_UDP in one worker. The kernel hands each host
    client's datagrams to one worker's socket (SO_REUSEPORT hashes the 4-tuple), which
    keeps the client's NAT flow in the UDP bridge like any outbound flow."""

    proto = PROTO_UDP

    def __init__(
        self,
        bridge: UdpBridge,
        poller: Poller,
        *,
        index: int,
        nworkers: int,
        rng: random.Random | None = None,
    ) -> None:
        self.bridge = bridge
        self.poller = poller
        self.index = index
        self.nworkers = max(1, nworkers)
        self.rng = rng or random.Random()
        self.listeners: dict[Forward, socket.socket] = {}
        self.tallies: dict[Forward, ForwardTally] = {}

    def _serve(self, sock: socket.socket, tally: ForwardTally, now: float, _m: int) -> None:
        fwd = tally.forward
        guest = addr_to_int(fwd.guest_ip)
        bridge = self.bridge
        gw = bridge.ctx.gateway

        def pick() -> int | None:
            if gw is None:
                return None
            return nat_port_for(
                guest,
                gw,
                fwd.guest_port,
                PROTO_UDP,
                self.index,
                self.nworkers,
                partial(bridge.forward_port_taken, guest, fwd.guest_port),
                self.rng,
            )

        bridge.from_forward(sock, guest, fwd.guest_port, pick, tally, now)

    def _closing(self, sock: socket.socket) -> None:
        self.bridge.close_forward(sock)  # the flows of a forward that goes end with it


def _name(fwd: Forward) -> str:
    return f"{fwd.listen_ip}:{fwd.listen_port} -> {fwd.guest_ip}:{fwd.guest_port}"


def probe_forwards(settings: Iterable[tuple[str, int, Iterable[Forward]]]) -> None:
    """Start-up check that every forward's port can be bound, so a port in use stops the
    router with exit 2 naming the setting instead of a worker logging it forever after.
    `settings` is (setting name, protocol, forwards). The probe binds without
    SO_REUSEPORT, so any other socket on the port counts as in use; the workers then bind
    with it, alongside each other."""
    for name, proto, forwards in settings:
        kind = socket.SOCK_STREAM if proto == PROTO_TCP else socket.SOCK_DGRAM
        for fwd in forwards:
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((fwd.listen_ip, fwd.listen_port))
            except OSError as exc:
                raise ConfigError(
                    name, f"cannot listen on {fwd.listen_ip}:{fwd.listen_port}: {exc.strerror}"
                ) from None
            finally:
                sock.close()
            if not ipaddress.IPv4Address(fwd.listen_ip).is_loopback:
                log.warning(
                    "%s: %s:%d is exposed beyond this host (forwards to %s:%d)",
                    name,
                    fwd.listen_ip,
                    fwd.listen_port,
                    fwd.guest_ip,
                    fwd.guest_port,
                )
