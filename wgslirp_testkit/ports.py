"""Loopback ports for tests: free a moment ago, or reliably closed for as long as needed.

Binding port 0 and reading the port back is always better where the program under test
allows it; these are for the places it does not (a router's listen port in its
environment, a destination that must refuse).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago.

    Inherently racy (another process may take it before you bind).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (same race as free_udp_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def closed_tcp_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP port on 127.0.0.1 that refuses connections and stays ours while the block runs.

    A socket bound without listen() answers every SYN with RST, and its binding keeps the
    kernel from handing the port to anyone else (a parallel test's listener, or an outgoing
    connect choosing it as its own source port, which would self-connect). A port that was
    merely free a moment ago gives a test that expects a refusal a rare false "connected".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def closed_udp_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A UDP port on 127.0.0.1 that answers port-unreachable and stays ours meanwhile.

    A UDP socket connected to another peer does not match datagrams from anyone else, so the
    kernel answers them with ICMP port unreachable exactly as for an unbound port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.connect((host, 9))
        yield int(s.getsockname()[1])
