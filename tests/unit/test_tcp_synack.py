"""tcp_endpoint.synack_into: the SYN-ACK the bridge sends before the endpoint exists is the
one the endpoint would have sent, and the endpoint built afterwards (with its writer,
`accept(now, sent=True)`) carries on exactly as one that sent it itself."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wgslirp.net import tcp
from wgslirp.slirp.tcp_endpoint import TcpEndpoint, TcpParams, synack_into
from wgslirp_testkit.tcpconn import (
    GUEST_IP,
    GUEST_IP6,
    GUEST_PORT,
    HOST_IP,
    HOST_IP6,
    HOST_PORT,
    Egress,
    guest_pkt,
)

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


@st.composite
def syn_options(draw: st.DrawFn) -> bytes:
    return tcp.options_bytes(
        mss=draw(st.none() | st.integers(536, 9000)),
        wscale=draw(st.none() | st.integers(0, 14)),
        sack_perm=draw(st.booleans()),
        ts=draw(st.none() | st.tuples(U32, st.just(0))),
    )


@st.composite
def params(draw: st.DrawFn) -> TcpParams:
    return TcpParams(
        mss=draw(st.integers(536, 1380)),
        sack=draw(st.booleans()),
        ecn=draw(st.booleans()),
        wscale=draw(st.integers(0, 14)),
        rcv_buffer=draw(st.sampled_from([0, 1, 4096, 65535, 65536, 1 << 20])),
        cc=draw(st.sampled_from(["newreno", "cubic", "bbr"])),
    )


def endpoint(p: TcpParams, iss: int, now: float, v6: bool, **kw: object) -> TcpEndpoint:
    return TcpEndpoint(
        p,
        local=(HOST_IP6 if v6 else HOST_IP, HOST_PORT),
        remote=(GUEST_IP6 if v6 else GUEST_IP, GUEST_PORT),
        iss=iss,
        now=now,
        peer=1,
        v6=v6,
        **kw,  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(
    params(),
    syn_options(),
    U32,
    U32,
    st.sampled_from([0, tcp.ECE, tcp.ECE | tcp.CWR]),
    st.floats(0.0, 1e6),
    st.booleans(),
)
def test_the_synack_written_first_is_the_endpoints_and_the_connection_carries_on_alike(
    p: TcpParams, opts: bytes, iss: int, guest_isn: int, ecn: int, now: float, v6: bool
) -> None:
    syn = guest_pkt(guest_isn, 0, tcp.SYN | ecn, window=29200, opts=opts, v6=v6)
    mv = memoryview(syn)

    own = Egress()  # the endpoint sends its own SYN-ACK (accept)
    a = endpoint(p, iss, now, v6, egress=own)
    a.on_syn(mv, len(syn), now)
    a.accept(now)

    slot = bytearray(2048)
    k, writer = synack_into(
        memoryview(slot),
        p,
        local=(HOST_IP6 if v6 else HOST_IP, HOST_PORT),
        remote=(GUEST_IP6 if v6 else GUEST_IP, GUEST_PORT),
        iss=iss,
        syn=mv,
        n=len(syn),
        now=now,
        v6=v6,
    )
    first = Egress()  # the bridge sent it; the endpoint is built afterwards
    b = endpoint(p, iss, now, v6, egress=first, writer=writer)
    b.on_syn(mv, len(syn), now)
    b.accept(now, sent=True)
    assert [bytes(slot[:k])] == own.packets
    assert first.packets == []
    own.packets.clear()
    assert a.get_timer() == b.get_timer()

    # The same life afterwards: the SYN-ACK resent at its timeout, the guest's ACK, data
    # from the host (IPv4 identification, timestamps, windows, options alike).
    t = a.get_timer()
    assert t is not None
    a.handle_timer(t)
    b.handle_timer(t)
    a.flush(t)
    b.flush(t)
    ack = guest_pkt(guest_isn + 1, iss + 1, tcp.ACK, window=29200, v6=v6)
    for ep in (a, b):
        ep.receive(memoryview(ack), len(ack), t + 0.01)
        ep.write(bytes(range(256)) * 12, t + 0.01)
        ep.flush(t + 0.01)
    assert own.packets == first.packets and len(own.packets) >= 3
    assert a.get_timer() == b.get_timer()


def test_anything_but_a_plain_syn_is_left_to_the_endpoint() -> None:
    slot = bytearray(2048)
    for flags in (tcp.ACK, tcp.SYN | tcp.ACK, tcp.SYN | tcp.RST):
        pkt = guest_pkt(1000, 0, flags)
        k, _ = synack_into(
            memoryview(slot),
            TcpParams(),
            local=(HOST_IP, HOST_PORT),
            remote=(GUEST_IP, GUEST_PORT),
            iss=5000,
            syn=memoryview(pkt),
            n=len(pkt),
            now=1.0,
        )
        assert k == 0
