"""The host's own addresses, followed as they change (rtnetlink), for the egress policy.

A guest flow to one of the host's own addresses reaches the host's services through
loopback, past the host firewall, so the policy refuses it (slirp/policy.py). An address
added while the router runs (DHCP, a new interface, a container bridge) must be refused
from the moment it exists. Polling left a window of up to the poll interval (10 s, issue
#10); this module subscribes to the kernel's address notifications instead, and the policy
asks `sync` before it decides each new flow. The kernel queues RTM_NEWADDR on our socket
before the `ip addr add` that caused it returns, so draining that socket before a decision
sees every address that exists at that moment: one poll(0) per new flow, never per packet
(0.6 us in a loop, 15 in a worker's turn on a cold CPU; a recv finding nothing raised
BlockingIOError, 1.65 and 45), and a recv only when a notification is pending. A change
re-reads the full list (getifaddrs) rather than applying the messages, so a lost message
(ENOBUFS on overflow, which poll reports as an error event) cannot leave the set wrong.

Where netlink cannot be opened (a sandbox that forbids it) the set is re-read on a timer
instead, with a warning that names the gap.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Callable

log = logging.getLogger("wgslirp.worker")

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
FALLBACK_INTERVAL = 10.0
"""Seconds between re-reads when netlink is unavailable."""
BACKSTOP_INTERVAL = 300.0
"""Seconds between re-reads with netlink too: a cheap guard against a kernel that never
told us (none known)."""


def host_addresses() -> frozenset[str]:
    """Every IPv4 and IPv6 address of every interface of this host (link-local ones
    without their %scope suffix)."""
    import psutil

    out: set[str] = set()
    try:
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    out.add(a.address.split("%", 1)[0])
    except OSError:
        pass
    return frozenset(out)


def open_address_events() -> socket.socket | None:
    """A non-blocking rtnetlink socket subscribed to address changes, or None."""
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
        )
    except (OSError, AttributeError) as exc:
        log.warning(
            "cannot follow host address changes (netlink: %s); re-reading them every %.0f s, "
            "so a new host address is reachable from guests for up to that long",
            exc,
            FALLBACK_INTERVAL,
        )
        return None
    try:
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    except OSError as exc:
        sock.close()
        log.warning("cannot subscribe to host address changes (%s); polling instead", exc)
        return None
    return sock


class HostAddressWatch:
    """Keeps `apply`'s target (the policy) told of the host's addresses, exactly.

    `sync()` is cheap enough to call before every new-flow decision. `source` and `events`
    are injectable so the logic is testable without touching the host.
    """

    def __init__(
        self,
        apply: Callable[[frozenset[str]], None],
        now: float,
        *,
        source: Callable[[], frozenset[str]] = host_addresses,
        events: socket.socket | None = None,
    ) -> None:
        self._apply = apply
        self._source = source
        self.events = events
        # Whether a notification is pending, asked without a recv (see the module's doc).
        self._poll = select.poll()
        if events is not None:
            self._poll.register(events, select.POLLIN)
        self.interval = FALLBACK_INTERVAL if events is None else BACKSTOP_INTERVAL
        self.due = now + self.interval
        self.current = frozenset[str]()
        self.rereads = 0
        self._reread()

    def sync(self) -> None:
        """Drain pending notifications; on any change, re-read the addresses."""
        sock = self.events
        if sock is None or not self._poll.poll(0):
            return
        changed = False
        for _ in range(1024):  # bounded: an address storm is re-read once per sync
            try:
                if not sock.recv(65536):
                    break
                changed = True
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overflowed: changes were lost, re-read
                    break
                changed = True
        if changed:
            self._reread()

    def on_readable(self, _now: float, _mask: int = 0) -> None:
        self.sync()

    def get_timer(self) -> float | None:
        return self.due

    def handle_timer(self, now: float) -> None:
        self.due = now + self.interval
        self.sync()
        self._reread()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None

    def _reread(self) -> None:
        addrs = self._source()
        self.rereads += 1
        # An empty answer is a failed read (EMFILE, ENOMEM), never a host without
        # addresses: keep the last good set rather than open the guard.
        if addrs and addrs != self.current:
            self.current = addrs
            self._apply(addrs)
