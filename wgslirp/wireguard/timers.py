"""WireGuard's timer and limit constants, and only those: the whitepaper's (section 6), the
values derived from them, and the per-peer limits wireguard-go also applies (initiation
rate, packets staged while a handshake is pending).

There is no timer code here. The timers themselves are deadlines stored on each Peer (None
when not armed) and run by Device.handle_timer; keeping them as plain numbers makes the
per-packet cost one attribute write and lets tests drive them with a fake clock.
"""

from __future__ import annotations

from typing import Final

REKEY_AFTER_MESSAGES: Final = 1 << 60
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
REKEY_TIMEOUT_JITTER_MAX: Final = 0.334
MAX_HANDSHAKE_ATTEMPTS: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 retries, ~90 s
# An initiator whose session is this old rekeys on receive, so it renews before the
# responder (which never initiates a rekey for age) would have to drop the session.
REKEY_ON_RECEIVE_AGE: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
ZERO_KEYS_AFTER: Final = REJECT_AFTER_TIME * 3
INITIATION_MIN_INTERVAL: Final = 0.02  # per-peer flood guard on consumed initiations
MAX_STAGED_PACKETS: Final = 128  # per peer, while waiting for a handshake
