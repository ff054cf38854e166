"""Wire formats of the four WireGuard message types.

Messages are parsed by offset rather than into objects: the handshake path is rare and the
transport path must not allocate more than it has to. All integers are little-endian.
"""

from __future__ import annotations

import struct
from typing import Final

MSG_INITIATION: Final = 1
MSG_RESPONSE: Final = 2
MSG_COOKIE_REPLY: Final = 3
MSG_TRANSPORT: Final = 4

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = TRANSPORT_HEADER_SIZE + 16  # header + Poly1305 tag (keepalive)

# Offsets inside an initiation.
INIT_SENDER: Final = 4
INIT_EPHEMERAL: Final = 8
INIT_STATIC: Final = 40  # 32 + 16 tag
INIT_TIMESTAMP: Final = 88  # 12 + 16 tag
INIT_MAC1: Final = 116
INIT_MAC2: Final = 132

# Offsets inside a response.
RESP_SENDER: Final = 4
RESP_RECEIVER: Final = 8
RESP_EPHEMERAL: Final = 12
RESP_EMPTY: Final = 44  # 0 + 16 tag
RESP_MAC1: Final = 60
RESP_MAC2: Final = 76

# Offsets inside a cookie reply.
COOKIE_RECEIVER: Final = 4
COOKIE_NONCE: Final = 8  # 24 bytes
COOKIE_ENCRYPTED: Final = 32  # 16 + 16 tag

# Offsets inside a transport message.
TRANSPORT_RECEIVER: Final = 4
TRANSPORT_COUNTER: Final = 8
TRANSPORT_PAYLOAD: Final = 16

HEADER = struct.Struct("<I")  # type byte + 3 reserved zero bytes, read as one word
U32 = struct.Struct("<I")
TRANSPORT_HDR = struct.Struct("<IIQ")  # type word, receiver index, counter

EXPECTED_SIZE: Final = {
    MSG_INITIATION: INITIATION_SIZE,
    MSG_RESPONSE: RESPONSE_SIZE,
    MSG_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


def message_type(data: bytes | bytearray | memoryview) -> int:
    """Return the message type, or 0 when the header is malformed (reserved bytes set)."""
    if len(data) < 4:
        return 0
    word: int = HEADER.unpack_from(data, 0)[0]
    if word > 0xFF:
        return 0
    return word
