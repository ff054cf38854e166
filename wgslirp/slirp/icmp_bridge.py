"""ICMP echo bridge: guest pings go out through the host's own ICMP sockets.

Two kinds of host socket can send an echo request without spawning `ping`:
- an unprivileged "ping socket" (SOCK_DGRAM/IPPROTO_ICMP, allowed by
  net.ipv4.ping_group_range): one per flow; the kernel picks the echo identifier and
  delivers only that flow's replies to it;
- a raw ICMP socket (needs CAP_NET_RAW): one per worker; it sees every ICMP packet the host
  receives, so each worker owns the identifiers congruent to its index modulo the number of
  workers and ignores the rest.
Either way the guest's identifier is mapped to a host one per (peer, guest, destination, id),
so two guests using the same identifier never see each other's replies.

ICMPv6 echo works the same way with the IPv6 twins of both sockets (SOCK_DGRAM or SOCK_RAW
with IPPROTO_ICMPV6, whose checksums the kernel computes because they cover the
pseudo-header). The guest's family and the host socket's family are kept apart: a ping of
an IPv4-mapped address goes out as ICMP and its reply comes back to the guest as ICMPv6.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from functools import partial

from wgslirp.net import icmp, icmpv6, ipv4, ipv6
from wgslirp.net.checksum import checksum
from wgslirp.net.ipv4 import PROTO_ICMP
from wgslirp.slirp.bridge_context import BridgeContext, sock_addr
from wgslirp.slirp.nat_table import Flow, FlowTable
from wgslirp.slirp.policy import EgressPolicy, Verdict

log = logging.getLogger("wgslirp.icmp")

ICMP_FILTER = 1  # SOL_RAW option: bitmask of ICMP types the raw socket must NOT receive
ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option: 256-bit map, a set bit blocks that type
SOL_RAW = getattr(socket, "SOL_RAW", 255)
_ECHO_HDR = struct.Struct(">BBHHH")
RECV_BATCH = 64
ECHO_IDLE_TIMEOUT = 30.0

EchoKey = tuple[int, int, int, int]  # peer, guest addr, destination, guest echo id


SO_ATTACH_FILTER = 26  # asm-generic/socket.h
# classic BPF opcodes (linux/filter.h)
_BPF_LDX_MSH = 0x01 | 0x10 | 0xA0  # X = 4 * (pkt[k] & 0xf): the IPv4 header's length
_BPF_LDH_IND = 0x00 | 0x08 | 0x40  # A = 16 bits at X + k
_BPF_MOD_K = 0x04 | 0x90  # A %= k
_BPF_JEQ_K = 0x05 | 0x10  # A == k ? jt : jf
_BPF_RET_K = 0x06  # accept k bytes (0: drop)
_SOCK_FILTER = struct.Struct("=HBBI")


def echo_id_filter(index: int, nworkers: int) -> bytes:
    """A classic BPF program for a raw ICMP socket (which sees the IPv4 header): accept a
    packet only if its echo identifier is congruent to `index` modulo `nworkers`, the
    identifiers worker `index` hands out (_alloc_id). Without it every worker's raw socket
    wakes for every echo reply, and all but one read it for nothing: with 2 workers on a
    busy 2-core machine the other worker woke for 7 in 10 replies of a far-host ping and
    spent ~40 us of a core the owner was waiting for (timestamps around each handler)."""
    prog = (
        (_BPF_LDX_MSH, 0, 0, 0),
        (_BPF_LDH_IND, 0, 0, 4),  # ICMP header: type, code, checksum, then the identifier
        (_BPF_MOD_K, 0, 0, nworkers),
        (_BPF_JEQ_K, 0, 1, index),
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, 0),
    )
    return b"".join(_SOCK_FILTER.pack(*ins) for ins in prog)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER with `program` (packed sock_filter instructions); the kernel copies
    it, so the buffer only has to outlive the call."""
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // _SOCK_FILTER.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def probe_mode(v6: bool = False) -> str | None:
    """'ping', 'raw' or None: which ICMP (`v6`: ICMPv6) socket this process may open."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    for mode, kind in (("ping", socket.SOCK_DGRAM), ("raw", socket.SOCK_RAW)):
        try:
            socket.socket(family, kind, proto).close()
            return mode
        except OSError:
            continue
    return None


class EchoFlow(Flow):
    __slots__ = ("guest", "guest_id", "host_id", "host_v6", "remote", "sock", "target", "v6")

    def __init__(
        self,
        key: EchoKey,
        peer: int,
        now: float,
        guest: int,
        target: int,
        remote: int,
        guest_id: int,
        host_id: int,
        sock: socket.socket | None,
        v6: bool = False,
        host_v6: bool = False,
    ) -> None:
        super().__init__(key, peer, now)
        self.guest = guest
        self.target = target  # what the guest pinged (replies come from it)
        self.remote = remote  # what we actually ping (differs for the gateway alias)
        self.guest_id = guest_id
        self.host_id = host_id
        self.sock = sock
        self.v6 = v6  # the guest pings in ICMPv6
        self.host_v6 = host_v6  # the host socket is ICMPv6


class IcmpBridge:
    def __init__(
        self,
        ctx: BridgeContext,
        policy: EgressPolicy,
        table: FlowTable[EchoFlow],
        mode: str | None,
        mode6: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.table = table
        self.mode = mode
        self.mode6 = mode6
        self._raw6: socket.socket | None = None
        self._by_host_id: dict[int, EchoFlow] = {}
        self._next_k = 0
        self._raw: socket.socket | None = None
        self._buf = bytearray(65536)
        if mode == "raw":
            self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self._raw.setblocking(False)
            # Echo replies only: nothing else is read from this socket, and every ICMP
            # error the host receives (each UDP port unreachable, ours included) would wake
            # every worker for nothing.
            wanted = 1 << icmp.ECHO_REPLY
            try:
                self._raw.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~wanted & 0xFFFFFFFF))
                if ctx.nworkers > 1:
                    attach_filter(self._raw, echo_id_filter(ctx.worker_index, ctx.nworkers))
            except OSError:
                pass  # unfiltered works too, only costs more wake-ups
            ctx.poller.register(self._raw, partial(self.on_readable, None))
        if mode6 == "raw":
            self._raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self._raw6.setblocking(False)
            # struct icmp6_filter: eight native 32-bit words, a set bit blocks that type.
            words = [0xFFFFFFFF] * 8
            words[icmpv6.ECHO_REPLY >> 5] &= ~(1 << (icmpv6.ECHO_REPLY & 31)) & 0xFFFFFFFF
            try:
                self._raw6.setsockopt(
                    socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words)
                )
            except OSError:
                pass  # unfiltered works too, only costs more wake-ups
            ctx.poller.register(self._raw6, partial(self._on_raw6, None))

    # ------------------------------------------------------------- guest -> host

    def from_guest(self, peer: int, pkt: memoryview, n: int, now: float) -> None:
        stats = self.ctx.stats
        v6 = pkt[0] >> 4 == 6
        parsed = icmpv6.parse(pkt, n) if v6 else icmp.parse(pkt, n)
        if parsed is None:
            stats.icmp_unsupported += 1
            return
        itype, code, off, ilen = parsed
        if itype != (icmpv6.ECHO_REQUEST if v6 else icmp.ECHO_REQUEST) or code != 0 or ilen < 8:
            stats.icmp_unsupported += 1  # errors and other queries are not forwarded
            return
        if self.mode is None and self.mode6 is None:
            stats.icmp_unavailable += 1
            return
        src, dst = ipv6.src_dst(pkt) if v6 else ipv4.src_dst(pkt)
        guest_id, seq = icmp.echo_id_seq(pkt, off)
        key = (peer, src, dst, guest_id)
        flow = self.table.get(key)
        if flow is None:
            flow = self._open(key, peer, pkt, n, now)
            if flow is None:
                return
        flow.last_active = now
        # Re-issue the request under our identifier, same sequence and payload.
        out = memoryview(self._buf)
        out[:ilen] = pkt[off : off + ilen]
        if flow.host_v6:  # the kernel fills in ICMPv6 checksums (they need the addresses)
            _ECHO_HDR.pack_into(out, 0, icmpv6.ECHO_REQUEST, 0, 0, flow.host_id, seq)
        else:
            _ECHO_HDR.pack_into(out, 0, icmp.ECHO_REQUEST, 0, 0, flow.host_id, seq)
            struct.pack_into(">H", out, 2, checksum(out[:ilen]))
        try:
            if flow.sock is not None:
                flow.sock.send(out[:ilen])
            else:
                raw = self._raw6 if flow.host_v6 else self._raw
                assert raw is not None
                raw.sendto(out[:ilen], (sock_addr(flow.remote, flow.host_v6), 0))
        except OSError:
            stats.socket_errors += 1
            return
        stats.icmp_echo_requests += 1
        if not flow.host_v6:
            # A local or LAN host has usually answered before sendto() returned (the
            # kernel ran its softirq on the way out): relay the reply in this turn, not
            # after the next poll; a farther host costs one recv that finds nothing.
            self.on_readable(flow if flow.sock is not None else None, now)

    def _alloc_id(self) -> int | None:
        """Identifiers index + k * nworkers: each worker owns its own residue class, so
        workers sharing the raw socket never claim each other's replies."""
        step = self.ctx.nworkers
        count = 0x10000 // step
        for _ in range(count):
            self._next_k = (self._next_k + 1) % count
            ident = self.ctx.worker_index + self._next_k * step
            if ident not in self._by_host_id:
                return ident
        return None

    def _open(
        self, key: EchoKey, peer: int, pkt: memoryview, n: int, now: float
    ) -> EchoFlow | None:
        _, src, dst, guest_id = key
        ctx = self.ctx
        v6 = pkt[0] >> 4 == 6
        decision = self.policy.decide(PROTO_ICMP, dst, 0, v6)
        if decision.verdict is Verdict.DENY:
            ctx.stats.policy_denied += 1
            ctx.send_unreachable(pkt, n, icmp.ADMIN_PROHIBITED, peer, now)
            return None
        host_v6 = decision.v6
        mode = self.mode6 if host_v6 else self.mode
        if mode is None:
            ctx.stats.icmp_unavailable += 1
            return None
        for old in self.table.make_room(peer):
            self._close(old)
        sock: socket.socket | None = None
        if mode == "ping":
            try:
                if host_v6:
                    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
                else:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
                sock.setblocking(False)
                sock.connect((sock_addr(decision.host, host_v6), 0))
            except OSError:
                if sock is not None:
                    sock.close()
                ctx.stats.socket_errors += 1
                return None
            host_id = sock.getsockname()[1]  # the kernel's identifier for this socket
        else:
            alloc = self._alloc_id()
            if alloc is None:
                ctx.stats.socket_errors += 1
                return None
            host_id = alloc
        flow = EchoFlow(
            key, peer, now, src, dst, decision.host, guest_id, host_id, sock, v6, host_v6
        )
        if sock is not None:
            ctx.poller.register(sock, partial(self.on_readable, flow))
        else:
            self._by_host_id[host_id] = flow
        self.table.add(flow, now)
        return flow

    # ------------------------------------------------------------- host -> guest

    def on_readable(self, flow: EchoFlow | None, now: float, _mask: int = 0) -> None:
        """`flow` is set for a ping socket; None means the shared raw socket."""
        buf = self._buf
        for _ in range(RECV_BATCH):
            try:
                if flow is not None and flow.sock is not None:
                    n = flow.sock.recv_into(buf)
                    self._reply(flow, memoryview(buf)[:n], now)
                else:
                    assert self._raw is not None
                    n, (_src_str, _) = self._raw.recvfrom_into(buf)
                    self._from_raw(memoryview(buf)[:n], n, now)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.ctx.stats.socket_errors += 1
                return

    def _on_raw6(self, _flow: None, now: float, _mask: int = 0) -> None:
        """The shared raw ICMPv6 socket: it delivers the ICMPv6 message without the IPv6
        header (RFC 3542), checksum already verified by the kernel, and the source apart."""
        buf = self._buf
        assert self._raw6 is not None
        for _ in range(RECV_BATCH):
            try:
                n, src_addr = self._raw6.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.ctx.stats.socket_errors += 1
                return
            if n < 8 or buf[0] != icmpv6.ECHO_REPLY:
                continue
            host_id: int = struct.unpack_from(">H", buf, 4)[0]
            flow = self._by_host_id.get(host_id)
            if flow is None or not flow.host_v6:
                continue
            src = socket.inet_pton(socket.AF_INET6, src_addr[0].split("%", 1)[0])
            if int.from_bytes(src, "big") != flow.remote:
                continue
            self._reply(flow, memoryview(buf)[:n], now)

    def _from_raw(self, pkt: memoryview, n: int, now: float) -> None:
        parsed = icmp.parse(pkt, n)
        if parsed is None:
            return
        itype, _code, off, ilen = parsed
        if itype != icmp.ECHO_REPLY or ilen < 8:
            return
        if checksum(pkt[off : off + ilen]) != 0:
            return  # a raw socket gets what the wire delivered; the reply is re-checksummed
        host_id, _seq = icmp.echo_id_seq(pkt, off)
        flow = self._by_host_id.get(host_id)
        src, _ = ipv4.src_dst(pkt)
        if flow is None or flow.host_v6 or src != flow.remote:
            return  # another worker's, or a ping of the host's own
        self._reply(flow, pkt[off : off + ilen], now)

    def _reply(self, flow: EchoFlow, message: memoryview, now: float) -> None:
        """`message` is an ICMP echo reply (header + data) from the host side."""
        ctx = self.ctx
        ilen = len(message)
        if ilen < 8 or message[0] != (icmpv6.ECHO_REPLY if flow.host_v6 else icmp.ECHO_REPLY):
            return
        total = (40 if flow.v6 else 20) + ilen
        if total > ctx.mtu:
            big = memoryview(ctx.scratch)
            self._build_reply(big, flow, message, ilen)
            ctx.emit(big, total, flow.peer)
        else:
            slot = ctx.egress.reserve()
            if slot is None:
                ctx.stats.egress_full += 1
                return
            self._build_reply(slot, flow, message, ilen)
            ctx.egress.commit(total, flow.peer)
        flow.last_active = now
        ctx.stats.icmp_echo_replies += 1

    def _build_reply(self, out: memoryview, flow: EchoFlow, message: memoryview, ilen: int) -> None:
        if flow.v6:
            out[40 : 40 + ilen] = message
            seq6: int = struct.unpack_from(">H", message, 6)[0]
            _ECHO_HDR.pack_into(out, 40, icmpv6.ECHO_REPLY, 0, 0, flow.guest_id, seq6)
            ipv6.write_header(
                out,
                payload_length=ilen,
                next_header=ipv6.NH_ICMPV6,
                src=flow.target,
                dst=flow.guest,
                hop_limit=self.ctx.ttl,
            )
            csum = icmpv6.icmp_checksum(out, 40, ilen, flow.target, flow.guest)
            struct.pack_into(">H", out, 42, csum)
            return
        out[20 : 20 + ilen] = message
        seq: int = struct.unpack_from(">H", message, 6)[0]
        _ECHO_HDR.pack_into(out, 20, icmp.ECHO_REPLY, 0, 0, flow.guest_id, seq)
        struct.pack_into(">H", out, 22, checksum(out[20 : 20 + ilen]))
        ipv4.write_header(
            out,
            total_length=20 + ilen,
            proto=PROTO_ICMP,
            src=flow.target,
            dst=flow.guest,
            ttl=self.ctx.ttl,
            ident=self.ctx.next_ident(),
            dont_fragment=False,
        )

    # ------------------------------------------------------------------ timers

    def expire(self, now: float) -> None:
        for flow in self.table.expire(now):
            self._close(flow)

    def _close(self, flow: EchoFlow) -> None:
        if flow.sock is not None:
            self.ctx.poller.unregister(flow.sock)
            flow.sock.close()
        else:
            self._by_host_id.pop(flow.host_id, None)

    def forget_peer(self, peer: int) -> int:
        gone = self.table.remove_peer(peer)
        for flow in gone:
            self._close(flow)
        return len(gone)

    def close(self) -> None:
        for flow in self.table.values():
            self.table.remove(flow)
            self._close(flow)
        for raw in (self._raw, self._raw6):
            if raw is not None:
                self.ctx.poller.unregister(raw)
                raw.close()
