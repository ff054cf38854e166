"""The UAPI socket wg(8) connects to: /var/run/wireguard/NAME.sock, served on ingress's loop,
and the same protocol at $WGSLIRP_STATE_DIR/wg.sock (wgslirp/uapi_paths.py says why both).

It lives in ingress because ingress alone owns the Device (keys, peers, counters); a `set`
then changes the very tables the next datagram is checked against, with no cross-process
state to keep in sync. The protocol itself is wgslirp/wireguard/uapi.py; this file is only
the socket: non-blocking accept, receive, send, so a slow or stuck client can never stall
packet forwarding.

Bounds: at most MAX_CLIENTS connections (more are closed on accept), at most MAX_REQUEST
bytes per request (a larger one is answered EMSGSIZE and the connection closed), and a client
that has not finished a request, or not read its answer, within CLIENT_TIMEOUT seconds is
disconnected. wg(8) sends one request per connection and is done in milliseconds.

Lifecycle: the socket is created when ingress starts and unlinked when its loop stops. A file
left by a router that died without cleaning up is replaced; a path another live process
answers on is left alone (with a warning) and the router runs without a UAPI socket rather
than not at all. The socket is mode 0600 in a 0755 directory, as wireguard-go makes it: the
protocol hands out the private key. In the state directory (created 0700 if missing, and
refused if group or others may write in it, where the socket could be swapped) the socket is
0600 too, owned by the router's user: root and that user can use it.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from wgslirp import uapi_paths
from wgslirp.runtime.loop import Handler, Loop
from wgslirp.wireguard import uapi
from wgslirp.wireguard.device import Device

log = logging.getLogger("wgslirp.uapi")

SOCKET_DIR = uapi_paths.STANDARD_DIR
MAX_CLIENTS = 16
MAX_REQUEST = 1 << 20  # a full `wg setconf` of thousands of peers still fits
CLIENT_TIMEOUT = 5.0
RECV_SIZE = 65536
ACCEPT_BATCH = 32
_PROBE_TIMEOUT = 1.0


class UapiUnavailable(Exception):
    """The socket cannot be served; the message says why, for one log line."""


class _Client:
    __slots__ = (
        "closing",
        "deadline",
        "eof",
        "events",
        "handler",
        "inbuf",
        "outbuf",
        "scanned",
        "sock",
    )

    def __init__(self, sock: socket.socket, deadline: float, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.events = selectors.EVENT_READ
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.scanned = 0  # bytes of inbuf already searched for the end of a request
        self.deadline = deadline
        self.eof = False  # the client sent everything it will send
        self.closing = False  # close once outbuf is sent


class UapiServer:
    """Listener plus client connections, all registered on one `Loop`.

    It is a loop timer (client deadlines) and adds a per-turn hook that closes it once the
    loop is stopping, so the socket file goes away on a clean exit without the process
    around it having to know.
    """

    def __init__(self, path: Path, device: Device, loop: Loop, *, listen_port: int) -> None:
        self.path = path
        self.device = device
        self.loop = loop
        self.listen_port = listen_port
        self.clients: dict[int, _Client] = {}
        self.requests = 0
        self.on_change: list[Callable[[], None]] = []  # after a set that changed something
        self.closed = False
        self._listener = _bind(path)
        st = os.stat(path)
        self._ident = (st.st_dev, st.st_ino)  # unlink only our own file at close
        loop.register(self._listener, self._on_accept)
        loop.timers.append(self)
        loop.hooks.append(self._close_if_stopping)

    @classmethod
    def start(
        cls,
        name: str,
        device: Device,
        loop: Loop,
        *,
        listen_port: int,
        directory: Path = SOCKET_DIR,
    ) -> UapiServer | None:
        """Serve NAME's socket in `directory`, or log why not and return None: wg(8) support
        is a convenience, never a reason for the router to stop forwarding."""
        if not name or "/" in name or name in (".", ".."):
            log.warning("wg(8) interface unavailable: interface name %r cannot name a socket", name)
            return None
        path = uapi_paths.standard_path(name, directory)
        return cls._start_at(path, name, device, loop, listen_port=listen_port, quiet=True)

    @classmethod
    def start_all(
        cls,
        name: str,
        state_dir: str,
        device: Device,
        loop: Loop,
        *,
        listen_port: int,
        directory: Path = SOCKET_DIR,
    ) -> list[UapiServer]:
        """The standard socket where permitted, and the state directory's always: what
        `wgslirp peer` looks for (uapi_paths.candidates)."""
        servers = [cls.start(name, device, loop, listen_port=listen_port, directory=directory)]
        if state_dir:  # "" only in tests that want no socket at all
            servers.append(
                cls._start_at(
                    uapi_paths.state_path(state_dir),
                    name,
                    device,
                    loop,
                    listen_port=listen_port,
                    private_dir=True,
                )
            )
        return [s for s in servers if s is not None]

    @classmethod
    def _start_at(
        cls,
        path: Path,
        name: str,
        device: Device,
        loop: Loop,
        *,
        listen_port: int,
        private_dir: bool = False,
        quiet: bool = False,
    ) -> UapiServer | None:
        try:
            if private_dir:
                _private_dir(path.parent)
            server = cls(path, device, loop, listen_port=listen_port)
        except UapiUnavailable as exc:
            log.warning("wg(8) interface unavailable: %s", exc)
            return None
        except PermissionError as exc:
            # an unprivileged router and /var/run/wireguard: not worth a warning every start
            level = logging.INFO if quiet else logging.WARNING
            log.log(level, "wg(8) interface unavailable: %s: %s", path, exc.strerror)
            return None
        except OSError as exc:  # e.g. a path longer than AF_UNIX allows (107 bytes)
            log.warning("wg(8) interface unavailable: %s: %s", path, exc.strerror or exc)
            return None
        log.info("wg(8) interface %s at %s", name, path)
        return server

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop serving: drop clients, close the listener, remove the file if still ours."""
        if self.closed:
            return
        self.closed = True
        for fd in list(self.clients):
            self._drop(fd)
        self.loop.unregister(self._listener)
        self._listener.close()
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass

    def _close_if_stopping(self, _now: float) -> None:
        if self.loop.stopping and not self.closed:
            self.close()

    # ------------------------------------------------------------------ timer

    def get_timer(self) -> float | None:
        if not self.clients:
            return None
        return min(c.deadline for c in self.clients.values())

    def handle_timer(self, now: float) -> None:
        for fd, c in list(self.clients.items()):
            if c.deadline <= now:
                log.debug("uapi client timed out")
                self._drop(fd)

    # ----------------------------------------------------------------- events

    def _on_accept(self, now: float, _mask: int = 0) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next event
                log.warning("uapi accept failed: %s", exc.strerror or exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            fd = sock.fileno()
            c = _Client(sock, now + CLIENT_TIMEOUT, self._handler(fd))
            self.clients[fd] = c
            self.loop.register(sock, c.handler, c.events)

    def _handler(self, fd: int) -> Handler:
        def on_event(now: float, mask: int) -> None:
            c = self.clients.get(fd)
            if c is None:
                return
            if mask & selectors.EVENT_READ and not self._read(fd, c):
                return
            self._pump(fd, c, now)

        return on_event

    def _read(self, fd: int, c: _Client) -> bool:
        """Take what the client sent; False if the connection is gone."""
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._drop(fd)
            return False
        if data:
            c.inbuf += data
        else:
            c.eof = True  # answer what is complete, then close
        return True

    def _pump(self, fd: int, c: _Client, now: float) -> None:
        """Answer complete requests one at a time, send without blocking, and choose what
        to wait for next. While an answer is unsent the client is not read, which bounds
        its buffered input to one request."""
        while True:
            if not c.outbuf and not c.closing:
                self._next_request(c, now)
            if c.outbuf:
                try:
                    n = c.sock.send(c.outbuf)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    self._drop(fd)
                    return
                del c.outbuf[:n]
                if c.outbuf:
                    self._want(c, selectors.EVENT_WRITE)
                    return
                c.deadline = now + CLIENT_TIMEOUT  # a fresh budget for the next request
                continue
            if c.closing or c.eof:
                self._drop(fd)
                return
            self._want(c, selectors.EVENT_READ)
            return

    def _next_request(self, c: _Client, now: float) -> None:
        req = uapi.split_request(c.inbuf, c.scanned)
        if req is None:
            c.scanned = len(c.inbuf)
            if len(c.inbuf) > MAX_REQUEST:
                c.outbuf += uapi.errno_line(errno.EMSGSIZE)
                c.closing = True
            elif c.eof:
                c.closing = True  # an unterminated tail can never become a request
            return
        c.scanned = 0
        if len(req) > MAX_REQUEST:
            c.outbuf += uapi.errno_line(errno.EMSGSIZE)
            c.closing = True
            return
        self.requests += 1
        try:
            resp = uapi.handle(req, self.device, listen_port=self.listen_port, now=now)
        except Exception:  # a bug here must not take the data plane down
            log.exception("uapi request failed")
            resp = uapi.Response(uapi.errno_line(errno.EIO), close=True)
        for line in resp.changes:
            log.info("wg(8): %s", line)
        if resp.changes:
            for hook in self.on_change:
                hook()
        if resp.refused:
            log.warning("wg(8): set refused: %s", resp.refused)
        c.outbuf += resp.data
        c.closing = resp.close

    def _want(self, c: _Client, events: int) -> None:
        if c.events != events:
            c.events = events
            self.loop.modify(c.sock, c.handler, events)

    def _drop(self, fd: int) -> None:
        c = self.clients.pop(fd, None)
        if c is not None:
            self.loop.unregister(c.sock)
            c.sock.close()


def _private_dir(directory: Path) -> None:
    """The state directory as the router's other files need it: 0700 when created here,
    never one where others could replace the socket with their own."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(directory)
    if st.st_mode & 0o022:
        raise UapiUnavailable(
            f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            "no socket there"
        )


def _bind(path: Path) -> socket.socket:
    """Listen at `path`, first removing a socket file nobody answers on any more."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)  # the socket hands out the private key: owner only from birth
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _clear_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UapiUnavailable(f"{path} exists and is not a socket; leaving it alone")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale wg(8) socket %s", path)
        path.unlink(missing_ok=True)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UapiUnavailable(f"{path}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise UapiUnavailable(f"another process already serves {path}")
