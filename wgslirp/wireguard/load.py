"""Handshake load shedding: how much work each handshake message may cost under a flood.

A handshake initiation with a valid MAC1 costs an attacker one datagram and us a
Diffie-Hellman (~0.2 ms) or, under load, a cookie reply (an XChaCha20-Poly1305 seal, ~15 µs
with the send). At full rate from one core (~250k/s here) either saturates the ingress core,
its socket overflows, and a legitimate peer's initiation is lost among the flood's (issue
#10: a fresh peer got no handshake while the flood lasted). The WireGuard paper's answer,
cookies, only helps once the sender got one, and wireguard-go's client retries 5 s later.

So the order per message under load is: the cheapest check first (a dict lookup on the
source address: a source that already used its budgets is dropped before any hashing), then
MAC1, then MAC2 (a cookie holder goes to the per-source DH limit), and for a message without
a valid cookie: a source that is not flooding is admitted directly (a small per-source and
global budget of "fresh" handshakes, so a new peer completes in one round trip), else it gets
a cookie reply within a per-source and a global budget, else nothing. Every bucket is a
token bucket; the per-source table is bounded.

Budgets, measured against the ~0.2 ms responder handshake: fresh admissions 100/s in total
(2 % of a core), cookie replies 2000/s in total (~3 %), DH for cookie holders 20/s per source
(wireguard-go's limit).

A "source" is an IPv4 address or an IPv6 /64 (`source_key`). One IPv6 host is normally given
a whole /64 (SLAAC, RFC 7421), so budgets per IPv6 address would hand a flooder 2^64 of
them, each bucket full, and let it churn the bounded source table out of the entries of the
peers it competes with. Linux's WireGuard (ratelimiter.c) and wireguard-nt key their
ratelimiter by the /64 for the same reason; wireguard-go keys by the full address. The
cost is that hosts sharing one /64 share one budget, as hosts behind one IPv4 NAT already
do; the global budgets and cookies (which stay bound to the full address and port) are
unchanged. An IPv4 peer on a dual-stack socket is keyed by its IPv4 address: the socket
shell hands the device canonical endpoints (wireguard/endpoint.py).
"""

from __future__ import annotations

import socket
from typing import Final

DEFAULT_UNDER_LOAD_RATE: Final = 500
"""Handshake messages per second before the guard applies. A responder handshake costs about
0.2 ms of CPU here, so 500/s is a tenth of a core."""
SOURCE_TABLE_MAX: Final = 8192

# Per source address: (rate per second, burst).
FRESH: Final = (1.0, 3.0)  # handshakes admitted without a cookie
COOKIE: Final = (1.0, 2.0)  # cookie replies
DH: Final = (20.0, 5.0)  # handshakes of cookie holders
# For all sources together:
FRESH_TOTAL: Final = (100.0, 100.0)
COOKIE_TOTAL: Final = (2000.0, 500.0)

_FRESH, _COOKIE, _DH, _TIME = 0, 1, 2, 3

Source = str | bytes


def source_key(ip: str) -> Source:
    """The unit budgets are kept per: an IPv4 address as it is, an IPv6 address as the
    8 bytes of its /64 (a zone does not make another source)."""
    if ":" not in ip:
        return ip
    try:
        return socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])[:8]
    except OSError:  # not an address (never from a socket): its own source
        return ip


class Bucket:
    """One token bucket."""

    __slots__ = ("burst", "rate", "tokens", "when")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.when = burst, float("-inf")

    def available(self, now: float) -> float:
        t = self.tokens + (now - self.when) * self.rate
        return t if t < self.burst else self.burst

    def take(self, now: float) -> bool:
        t = self.available(now)
        self.when = now
        if t < 1.0:
            self.tokens = t
            return False
        self.tokens = t - 1.0
        return True


class HandshakeGuard:
    """Sans-I/O: fed a source (`source_key` of the sender's address) and time, answers
    what a message may cost."""

    def __init__(
        self,
        under_load_rate: int = DEFAULT_UNDER_LOAD_RATE,
        *,
        fresh: tuple[float, float] = FRESH,
        cookie: tuple[float, float] = COOKIE,
        dh: tuple[float, float] = DH,
        fresh_total: tuple[float, float] = FRESH_TOTAL,
        cookie_total: tuple[float, float] = COOKIE_TOTAL,
    ) -> None:
        self.under_load_rate = under_load_rate
        self.fresh, self.cookie, self.dh = fresh, cookie, dh
        self.fresh_total = Bucket(*fresh_total)
        self.cookie_total = Bucket(*cookie_total)
        self._sources: dict[Source, list[float]] = {}
        self._window = float("-inf")
        self._count = 0
        self._until = float("-inf")

    def under_load(self, now: float) -> bool:
        """More than `under_load_rate` handshake messages in the current second, or in
        the second before: the guard applies."""
        if now - self._window >= 1.0:
            self._window = now
            self._count = 0
        self._count += 1
        if self._count > self.under_load_rate:
            self._until = now + 1.0
        return now < self._until

    def spent(self, ip: Source, now: float) -> bool:
        """The cheap first check: `ip` can be neither admitted fresh nor sent a cookie, so
        a message of its without a cookie is dropped before any hashing."""
        s = self._sources.get(ip)
        if s is None:  # a new source has full buckets of its own
            fresh = cookie = 1.0
        else:
            dt = now - s[_TIME]
            fresh = s[_FRESH] + dt * self.fresh[0]
            cookie = s[_COOKIE] + dt * self.cookie[0]
        if fresh >= 1.0 and self.fresh[1] >= 1.0 and self.fresh_total.available(now) >= 1.0:
            return False
        return not (
            cookie >= 1.0 and self.cookie[1] >= 1.0 and self.cookie_total.available(now) >= 1.0
        )

    def admit_fresh(self, ip: Source, now: float) -> bool:
        """A message without a cookie from a source that is not flooding: handled at once."""
        if self.fresh_total.available(now) < 1.0:
            return False
        if not self._take(ip, _FRESH, self.fresh, now):
            return False
        return self.fresh_total.take(now)

    def allow_cookie(self, ip: Source, now: float) -> bool:
        if self.cookie_total.available(now) < 1.0:
            return False
        if not self._take(ip, _COOKIE, self.cookie, now):
            return False
        return self.cookie_total.take(now)

    def allow_dh(self, ip: Source, now: float) -> bool:
        """A cookie holder may still not make us do DH at line rate (wireguard-go's limit)."""
        return self._take(ip, _DH, self.dh, now)

    def _take(self, ip: Source, which: int, rb: tuple[float, float], now: float) -> bool:
        s = self._sources.get(ip)
        if s is None:
            if len(self._sources) >= SOURCE_TABLE_MAX:
                self._prune(now)
            s = self._sources[ip] = [self.fresh[1], self.cookie[1], self.dh[1], now]
        else:
            dt = now - s[_TIME]
            s[_TIME] = now
            for k, (rate, burst) in ((_FRESH, self.fresh), (_COOKIE, self.cookie), (_DH, self.dh)):
                s[k] = min(burst, s[k] + dt * rate)
        if s[which] < 1.0:
            return False
        s[which] -= 1.0
        return True

    def _prune(self, now: float) -> None:
        """Sources idle for 5 s have full buckets again anyway: forgetting them is exact."""
        stale = [ip for ip, s in self._sources.items() if now - s[_TIME] >= 5.0]
        for ip in stale:
            del self._sources[ip]
        if len(self._sources) >= SOURCE_TABLE_MAX:
            self._sources.clear()
