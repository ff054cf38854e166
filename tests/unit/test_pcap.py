"""pcap writer: the file format (checked by our own reader and by tshark), buffering,
rotation, failures, and the real router capturing a tunnel's plaintext both ways."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgslirp.net import ipv4
from wgslirp.net.udp import build_udp_into
from wgslirp.obs.pcap import (
    GLOBAL_HEADER,
    LINKTYPE_RAW,
    MAGIC,
    RECORD_HEADER,
    PcapWriter,
    global_header,
    open_capture,
)
from wgslirp_testkit.ports import free_udp_port
from wgslirp_testkit.router import RouterProcess

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark not installed (apt-get install -y tshark)"
)

GUEST, HOST = "10.77.0.2", "10.77.0.1"


def read_pcap(path: Path) -> tuple[tuple[int, ...], list[tuple[float, int, bytes]]]:
    """A minimal independent reader: (global header fields, [(ts, orig_len, data)])."""
    data = path.read_bytes()
    hdr = GLOBAL_HEADER.unpack_from(data, 0)
    out = []
    off = GLOBAL_HEADER.size
    while off < len(data):
        sec, usec, incl, orig = RECORD_HEADER.unpack_from(data, off)
        off += RECORD_HEADER.size
        assert off + incl <= len(data), "truncated record"
        out.append((sec + usec / 1e6, orig, data[off : off + incl]))
        off += incl
    return hdr, out


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytearray:
    buf = bytearray(28 + len(payload) + 16)  # spare bytes, like a ring slot
    n = build_udp_into(buf, ipv4.addr_to_int(src), ipv4.addr_to_int(dst), sport, dport, payload)
    return buf[:n]


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    assert TSHARK is not None
    cmd = [TSHARK, "-r", str(path), "-T", "fields", "-E", "separator=,"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return [line.split(",") for line in r.stdout.splitlines() if line]


def test_global_header_is_classic_pcap_raw_ipv4() -> None:
    h = global_header()
    assert len(h) == 24
    assert struct.unpack("<I", h[:4])[0] == MAGIC == 0xA1B2C3D4
    _, major, minor, zone, sigfigs, snaplen, linktype = GLOBAL_HEADER.unpack(h)
    assert (major, minor, zone, sigfigs, snaplen, linktype) == (2, 4, 0, 0, 65535, 101)
    assert LINKTYPE_RAW == 101


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcap"
    w = PcapWriter(str(path), wall_clock=lambda: 1_700_000_000.25, clock=lambda: 100.0)
    a = udp_packet(GUEST, HOST, 40000, 53, b"query")
    b = udp_packet(HOST, GUEST, 53, 40000, b"answer!")
    slot = bytearray(2048)  # a packet at the start of a bigger slot: only n bytes count
    slot[: len(a)] = a
    w.write(memoryview(slot), len(a), 100.0)
    w.write(b, len(b), 100.5)
    w.close()
    w.close()  # idempotent
    hdr, recs = read_pcap(path)
    assert hdr[0] == MAGIC and hdr[6] == LINKTYPE_RAW
    assert [r[2] for r in recs] == [bytes(a), bytes(b)]
    assert [r[1] for r in recs] == [len(a), len(b)]
    assert recs[0][0] == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert recs[1][0] == pytest.approx(1_700_000_000.75, abs=1e-6)
    assert w.stats() == {
        "pcap_packets": 2,
        "pcap_dropped": 0,
        "pcap_write_errors": 0,
        "pcap_rotations": 0,
    }


@needs_tshark
def test_tshark_reads_udp_flows_both_directions(tmp_path: Path) -> None:
    path = tmp_path / "flows.pcap"
    w = PcapWriter(str(path))
    now = time.monotonic()
    for i in range(5):
        q = udp_packet(GUEST, HOST, 40000 + i, 5353, f"ping {i}".encode())
        w.write(q, len(q), now + i * 0.01)
        r = udp_packet(HOST, GUEST, 5353, 40000 + i, f"pong {i}".encode())
        w.write(r, len(r), now + i * 0.01 + 0.001)
    w.close()
    rows = tshark_fields(
        path, "ip.src", "ip.dst", "udp.srcport", "udp.dstport", "udp.checksum.status"
    )
    assert len(rows) == 10
    for i in range(5):
        assert rows[2 * i][:4] == [GUEST, HOST, str(40000 + i), "5353"]
        assert rows[2 * i + 1][:4] == [HOST, GUEST, "5353", str(40000 + i)]
    # The plain summary (what `tshark -r file` prints) names the flows too.
    assert TSHARK is not None
    summary = subprocess.run(
        [TSHARK, "-r", str(path)], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    assert f"{GUEST} → {HOST}" in summary or f"{GUEST} -> {HOST}" in summary, summary


def test_empty_capture_is_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    w = PcapWriter(str(path))
    assert path.read_bytes() == global_header()  # header written at open, not at close
    w.close()
    assert read_pcap(path)[1] == []


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "p.pcap"
    PcapWriter(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_file_is_made_private_and_a_symlink_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.pcap"
    path.write_bytes(b"")
    path.chmod(0o666)
    PcapWriter(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    link = tmp_path / "link.pcap"
    link.symlink_to(target)
    with pytest.raises(OSError):
        PcapWriter(str(link), keep=0)  # keep=0: no rotation, the name is opened in place
    assert target.read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a file another user owns")
def test_a_file_owned_by_another_user_is_refused_and_left_intact(tmp_path: Path) -> None:
    path = tmp_path / "theirs.pcap"
    path.write_bytes(b"their data")
    os.chown(path, 65534, 65534)
    with pytest.raises(OSError, match="belongs to uid 65534"):
        PcapWriter(str(path), keep=0)
    assert path.read_bytes() == b"their data" and path.stat().st_uid == 65534


def test_buffered_until_timer_or_threshold(tmp_path: Path) -> None:
    path = tmp_path / "b.pcap"
    w = PcapWriter(str(path), flush_interval=1.0, flush_bytes=4096)
    pkt = udp_packet(GUEST, HOST, 1, 2, b"x" * 100)
    assert w.get_timer() is None  # nothing buffered: an idle router is not woken
    w.write(pkt, len(pkt), 50.0)
    assert path.stat().st_size == 24  # not on disk yet
    assert w.get_timer() == 51.0
    w.handle_timer(51.0)
    assert path.stat().st_size == 24 + 16 + len(pkt)
    assert w.get_timer() is None
    for _ in range(40):  # past flush_bytes: written without waiting for the timer
        w.write(pkt, len(pkt), 52.0)
    assert path.stat().st_size > 4096
    w.close()
    assert len(read_pcap(path)[1]) == 41


def test_buffer_cap_drops_and_counts(tmp_path: Path) -> None:
    w = PcapWriter(str(tmp_path / "d.pcap"), flush_bytes=1 << 30, max_buffer=1000)
    pkt = udp_packet(GUEST, HOST, 1, 2, b"x" * 400)
    for _ in range(5):
        w.write(pkt, len(pkt), 1.0)
    assert w.packets == 2 and w.dropped == 3
    w.close()


def test_snaplen_truncates_but_keeps_original_length(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    w = PcapWriter(str(path), snaplen=64)
    pkt = udp_packet(GUEST, HOST, 1, 2, b"y" * 200)
    w.write(pkt, len(pkt), 1.0)
    w.close()
    hdr, recs = read_pcap(path)
    assert hdr[5] == 64
    assert recs[0][1] == len(pkt) and recs[0][2] == bytes(pkt[:64])


def test_rotation_bounds_every_file_and_keeps_two(tmp_path: Path) -> None:
    path = tmp_path / "r.pcap"
    max_bytes = 2000
    w = PcapWriter(str(path), max_bytes=max_bytes, keep=2)
    sent = []
    for i in range(60):
        pkt = udp_packet(GUEST, HOST, 1000 + i, 9, b"z" * 100)
        sent.append(bytes(pkt))
        w.write(pkt, len(pkt), float(i))
    w.close()
    files = [path, Path(f"{path}.1"), Path(f"{path}.2")]
    assert all(f.exists() for f in files)
    assert not Path(f"{path}.3").exists()
    assert w.rotations > 2
    got: list[bytes] = []
    for f in reversed(files):  # oldest first
        assert f.stat().st_size <= max_bytes
        hdr, recs = read_pcap(f)
        assert hdr[0] == MAGIC
        got += [r[2] for r in recs]
    assert got == sent[-len(got) :]  # the newest packets, in order, none torn


def test_keep_zero_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "k.pcap"
    w = PcapWriter(str(path), max_bytes=1000, keep=0)
    for i in range(30):
        pkt = udp_packet(GUEST, HOST, 1, 2, bytes([i]) * 100)
        w.write(pkt, len(pkt), float(i))
    w.close()
    assert not Path(f"{path}.1").exists()
    assert path.stat().st_size <= 1000
    assert read_pcap(path)[1][-1][2][-1] == 29


def test_start_rotates_a_previous_capture_away(tmp_path: Path) -> None:
    path = tmp_path / "again.pcap"
    w = PcapWriter(str(path))
    pkt = udp_packet(GUEST, HOST, 1, 2, b"first run")
    w.write(pkt, len(pkt), 1.0)
    w.close()
    PcapWriter(str(path)).close()  # a restart: the old capture is kept as .1
    assert read_pcap(path)[1] == []
    assert read_pcap(Path(f"{path}.1"))[1][0][2] == bytes(pkt)


def test_write_errors_cost_the_capture_not_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    w = PcapWriter(str(tmp_path / "full.pcap"), flush_bytes=1)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, w._fd)  # the disk fills up under the writer
    os.close(full)
    pkt = udp_packet(GUEST, HOST, 1, 2, b"x")
    for _ in range(3):
        w.write(pkt, len(pkt), 1.0)
    w.close()
    assert w.write_errors == 3
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1


def test_open_capture(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert open_capture(None) is None
    assert open_capture("") is None
    assert open_capture(str(tmp_path / "missing-dir" / "x.pcap")) is None
    assert "running without a capture" in caplog.text
    w = open_capture(str(tmp_path / "ok.pcap"))
    assert w is not None
    w.close()


def test_tap_records_then_calls_through(tmp_path: Path) -> None:
    path = tmp_path / "tap.pcap"
    w = PcapWriter(str(path))
    calls: list[tuple[str, int, float, int]] = []

    def encrypt(peer: str, buf: bytearray, n: int, now: float, out: int) -> int:
        calls.append((peer, n, now, out))
        return n + 32

    tapped = w.tap(encrypt)
    pkt = udp_packet(HOST, GUEST, 7, 8, b"reply")
    assert tapped("peer0", pkt, len(pkt), 3.0, 99) == len(pkt) + 32
    assert calls == [("peer0", len(pkt), 3.0, 99)]
    w.close()
    assert read_pcap(path)[1][0][2] == bytes(pkt)


# ------------------------------------------------------------------ the real router


class PyClient:
    """A WireGuard peer made of wgslirp's own sans-I/O Device and a loopback UDP socket:
    enough to put plaintext through the real router without wireguard-go or root."""

    def __init__(self, private_key: bytes, router_public: bytes, port: int) -> None:
        from wgslirp.wireguard.device import Device

        self.dev = Device(private_key)
        self.t0 = time.monotonic()
        self.peer = self.dev.add_peer(
            router_public, allowed_ips=["0.0.0.0/0"], endpoint=("127.0.0.1", port), now=self.now()
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.plain = bytearray(70000)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _flush(self) -> None:
        box, self.dev.outbox = self.dev.outbox, []
        for data, addr in box:
            self.sock.sendto(bytes(data), addr)

    def pump(self, deadline: float) -> list[bytes]:
        """Receive until the deadline or the first decrypted packets; returns those."""
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            self._flush()
            try:
                data, addr = self.sock.recvfrom(70000)
            except TimeoutError:
                self.dev.handle_timer(self.now())
                continue
            if data[0] == 4:
                res = self.dev.decrypt(data, addr, self.now(), self.plain)
                if res is not None and res[1]:
                    got.append(bytes(self.plain[: res[1]]))
            else:
                self.dev.receive_handshake(data, addr, self.now())
        self._flush()
        return got

    def send(self, pkt: bytes | bytearray) -> None:
        buf = bytearray(pkt) + bytes(16)
        out = bytearray(len(buf) + 64)
        k = self.dev.encrypt(self.peer, buf, len(pkt), self.now(), out)
        if k:
            self.sock.sendto(out[:k], self.peer.endpoint)  # type: ignore[arg-type]
        self._flush()  # a first packet is staged and starts a handshake instead

    def close(self) -> None:
        self.sock.close()


def _echo_request(ident: int, seq: int) -> bytes:
    from wgslirp.net.checksum import checksum

    icmp = bytearray(struct.pack(">BBHHH", 8, 0, 0, ident, seq) + b"wgslirp-pcap")
    struct.pack_into(">H", icmp, 2, checksum(icmp))
    total = 20 + len(icmp)
    buf = bytearray(total)
    buf[20:] = icmp
    ipv4.write_header(
        buf,
        total_length=total,
        proto=ipv4.PROTO_ICMP,
        src=ipv4.addr_to_int(GUEST),
        dst=ipv4.addr_to_int(HOST),
    )
    return bytes(buf)


@pytest.mark.parametrize("workers", [1, 0], ids=["supervisor", "inline"])
def test_router_captures_plaintext_both_directions(tmp_path: Path, workers: int) -> None:
    from wgslirp.keys import decode_key, public_key

    pcap = tmp_path / "tunnel.pcap"
    port = free_udp_port()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the host service
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.1)
    echo_port = echo.getsockname()[1]
    env = {
        "WGSLIRP_STATE_DIR": str(tmp_path / "state"),
        "WG_LISTEN_ADDR": "127.0.0.1",
        "WG_LISTEN_PORT": str(port),
        "PROCESSOR_WORKERS": str(workers),
        "WG_PCAP": str(pcap),
        "WG_INTERFACE_NAME": f"wgp{os.getpid():x}{workers}",
    }
    with RouterProcess([sys.executable, "-m", "wgslirp"], env) as r:
        r.wait_for_line(r"listening on 127\.0\.0\.1:\d+", timeout=20)
        state = tmp_path / "state"
        client_key = decode_key((state / "client.key").read_text(), "client.key")
        router_pub = public_key(decode_key((state / "server.key").read_text(), "server.key"))
        c = PyClient(client_key, router_pub, port)
        try:
            c.send(_echo_request(0x77, 1))  # staged; the handshake goes out
            deadline = time.monotonic() + 10
            replies = c.pump(deadline)
            assert replies and replies[0][9] == ipv4.PROTO_ICMP and replies[0][20] == 0
            c.send(udp_packet(GUEST, HOST, 45000, echo_port, b"hello host"))
            data, peer_addr = b"", None
            while time.monotonic() < deadline:
                try:
                    data, peer_addr = echo.recvfrom(2048)
                    break
                except TimeoutError:
                    c.pump(time.monotonic() + 0.01)
            assert data == b"hello host"
            echo.sendto(b"hello guest", peer_addr)
            back = c.pump(deadline)
            assert back and back[0].endswith(b"hello guest")
        finally:
            c.close()
            echo.close()
        assert r.terminate(timeout=10) == 0, r.output()
    _, recs = read_pcap(pcap)
    pkts = [rec[2] for rec in recs]
    summary = [
        (p[9], ipv4.int_to_addr(ipv4.src_dst(p)[0]), ipv4.int_to_addr(ipv4.src_dst(p)[1]))
        for p in pkts
    ]
    assert summary == [
        (ipv4.PROTO_ICMP, GUEST, HOST),  # echo request, decrypted by ingress
        (ipv4.PROTO_ICMP, HOST, GUEST),  # echo reply from the gateway address
        (ipv4.PROTO_UDP, GUEST, HOST),  # to the host alias...
        (ipv4.PROTO_UDP, HOST, GUEST),  # ...and the host's answer, from a worker's ring
    ], summary
    assert pkts[2].endswith(b"hello host") and pkts[3].endswith(b"hello guest")
    if TSHARK is not None:
        rows = tshark_fields(pcap, "ip.src", "ip.dst", "_ws.col.Protocol")
        assert [row[:2] for row in rows] == [[s, d] for _, s, d in summary]
        assert [row[2] for row in rows] == ["ICMP", "ICMP", "UDP", "UDP"]


def test_a_hard_linked_file_is_refused(tmp_path: Path) -> None:
    precious = tmp_path / "server.key"
    precious.write_bytes(b"secret")
    link = tmp_path / "cap.pcap"
    os.link(precious, link)
    with pytest.raises(OSError, match="hard links"):
        PcapWriter(str(link), keep=0)
    assert precious.read_bytes() == b"secret"


@needs_tshark
def test_tshark_reads_ipv6_and_ipv4_in_one_capture(tmp_path: Path) -> None:
    """LINKTYPE_RAW carries both families: readers tell them apart by the version nibble."""
    from wgslirp.net import ipv6
    from wgslirp.net.udp import build_udp_into6

    path = tmp_path / "both.pcap"
    w = PcapWriter(str(path))
    buf = bytearray(256)
    n = build_udp_into6(
        buf, ipv6.addr_to_int("fd77::2"), ipv6.addr_to_int("fd77::1"), 40000, 53, b"six"
    )
    w.write(buf, n, time.monotonic())
    q = udp_packet(GUEST, HOST, 40001, 53, b"four")
    w.write(q, len(q), time.monotonic())
    w.close()
    rows = tshark_fields(path, "ipv6.src", "ipv6.dst", "ip.src", "udp.srcport", "udp.checksum")
    assert [r[:4] for r in rows] == [["fd77::2", "fd77::1", "", "40000"], ["", "", GUEST, "40001"]]
