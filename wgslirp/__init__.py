"""wgslirp: a user-space WireGuard router that forwards guest traffic through host sockets."""

__version__ = "0.1.0"
