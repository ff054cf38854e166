"""Per-peer state: static identity, handshake, the three keypair slots and timer deadlines."""

from __future__ import annotations

from collections import deque

from wgslirp.wireguard.cookie import CookieGenerator
from wgslirp.wireguard.keypair import Keypair
from wgslirp.wireguard.noise import Handshake

Addr = tuple[str, int]


class Peer:
    """Keypair slots follow WireGuard: `current` sends; `previous` still receives for a while
    after a rekey; `next` is a responder's fresh session that becomes current only once the
    initiator proves it holds it by sending with it (key confirmation)."""

    def __init__(
        self,
        public_key: bytes,
        handshake: Handshake,
        endpoint: Addr | None,
        keepalive: int,
        index: int = 0,
    ) -> None:
        self.index = index  # small integer naming the peer to the data plane (ring slots)
        self.public_key = public_key
        self.handshake = handshake
        self.cookie = CookieGenerator(public_key)
        self.endpoint = endpoint
        self.keepalive = keepalive  # persistent keepalive interval in seconds, 0 = off
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque()
        # Timer deadlines on the device's monotonic clock; None = not armed.
        self.t_retransmit: float | None = None
        self.t_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_keys: float | None = None
        self.t_persistent: float | None = None
        self.need_another_keepalive = False
        self.handshake_attempts = 0
        self.rekey_on_receive_sent = False  # one rekey attempt per session from receiving
        self.last_initiation_sent = float("-inf")
        self.last_handshake_wall = 0.0  # unix time of the last completed handshake, 0 = never
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self.handshakes = 0

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]

    def next_deadline(self) -> float | None:
        best: float | None = None
        for t in (
            self.t_retransmit,
            self.t_keepalive,
            self.t_new_handshake,
            self.t_zero_keys,
            self.t_persistent,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best
