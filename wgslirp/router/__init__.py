"""Forwarding decisions: what becomes of each packet a peer sends (sans-I/O)."""
