"""A client's wg-quick file as a QR code in the terminal, for the WireGuard mobile apps.

segno encodes (no hand-written encoder: the Reed-Solomon and masking rules are easy to get
subtly wrong and a bad code only shows on a phone). Its compact terminal form draws two
module rows per text line with half blocks, so a ~300-byte config (version 10-11,
~65 columns with the quiet zone) fits an 80x24 terminal scrolled once. segno draws the
light modules with the glyphs, assuming light text on a dark background; on a light
theme that inverts the code, which some scanners refuse. So on a terminal each line is
also given explicit colours (bright white on black), as `qrencode -t ansiutf8` does, and
the code reads the same whatever the theme; into a file or pipe it stays plain text.
"""

from __future__ import annotations

import io

import segno

__all__ = ["qr_terminal"]

_ON = "\x1b[97;40m"
_OFF = "\x1b[0m"


def qr_terminal(text: str, *, color: bool) -> str:
    """`text` (byte mode, UTF-8) as lines of half blocks, light modules drawn, with the
    standard 4-module quiet zone; `color` adds the ANSI colours described above."""
    code = segno.make(text, error="l", micro=False, encoding="utf-8")
    out = io.StringIO()
    code.terminal(out, compact=True)
    lines = out.getvalue().splitlines()
    if color:
        lines = [f"{_ON}{line}{_OFF}" for line in lines]
    return "\n".join(lines) + "\n"
