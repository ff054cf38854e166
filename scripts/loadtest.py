#!/usr/bin/env python3
"""Load test: concurrent TCP and UDP flows through a real WireGuard tunnel, every byte verified.

``python scripts/loadtest.py --help`` says what it does and how; the code lives in the
wgslirp_testkit.loadtest package (importable after ``pip install -e .``).
"""

from __future__ import annotations

import sys

from wgslirp_testkit.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
