"""A session's transport keys with their counters and replay window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgslirp.wireguard.replay import ReplayWindow

if TYPE_CHECKING:
    from wgslirp.wireguard.peer import Peer


class Keypair:
    """Keys are held only inside the AEAD objects; dropping the Keypair is how they are
    discarded (CPython cannot promise to scrub memory, so we keep no other copies)."""

    __slots__ = (
        "created",
        "initiator",
        "local_index",
        "peer",
        "recv",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        peer: Peer,
        send_key: bytes,
        recv_key: bytes,
        initiator: bool,
        local_index: int,
        remote_index: int,
        created: float,
    ) -> None:
        self.peer = peer
        self.send = ChaCha20Poly1305(send_key)
        self.recv = ChaCha20Poly1305(recv_key)
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.send_counter = 0
        self.replay = ReplayWindow()
