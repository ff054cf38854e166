"""Command line: `wgslirp [run|genkey|pubkey|check-config|client-config|peer ...]`.

Configuration errors exit with status 2 and one line naming the setting; they are user
errors, so no traceback is shown.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from wgslirp import __version__
from wgslirp.config import (
    EXIT_CONFIG,
    Config,
    ConfigError,
    check_config,
    load_config_sourced,
    parse_setting,
    unknown_variables,
)
from wgslirp.config.cpus import usable_cpus
from wgslirp.keys import decode_key, encode_key, generate_private_key, public_key
from wgslirp.obs.logs import setup_logging

log = logging.getLogger("wgslirp")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wgslirp",
        description="User-space WireGuard router: forwards peers' traffic through host sockets.",
    )
    p.add_argument("--version", action="version", version=f"wgslirp {__version__}")
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="wg-quick style config file; environment variables override it",
    )
    sub = p.add_subparsers(dest="command")
    # --config is accepted after the subcommand too (`wgslirp run --config f`)
    cfg_opt = argparse.ArgumentParser(add_help=False)
    cfg_opt.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        dest="sub_config",
        help="wg-quick style config file; environment variables override it",
    )
    sub.add_parser("run", parents=[cfg_opt], help="run the router in the foreground (default)")
    sub.add_parser("genkey", help="print a new private key (like `wg genkey`)")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    sub.add_parser(
        "check-config", parents=[cfg_opt], help="print the effective configuration, keys redacted"
    )
    sub.add_parser(
        "client-config", parents=[cfg_opt], help="print a wg-quick config for the default client"
    )
    _peer_parser(sub, cfg_opt)
    sub.add_parser(
        "healthcheck",
        help="exit 0 if the running router reports healthy "
        "(asks /healthz on METRICS_LISTEN; for Docker's HEALTHCHECK)",
    )
    return p


def _peer_parser(sub: Any, cfg_opt: argparse.ArgumentParser) -> None:
    peer = sub.add_parser(
        "peer",
        help="add, list, remove or show clients (kept in the state directory's peers.json)",
        description="Clients added here are stored in $WGSLIRP_STATE_DIR/peers.json, join "
        "the configured peers at every start and reload, and are applied to a running "
        "router at once through its wg(8) socket.",
    )
    psub = peer.add_subparsers(dest="peer_command", required=True, metavar="COMMAND")
    add = psub.add_parser(
        "add", parents=[cfg_opt], help="new client: keys, next free address, its wg-quick file"
    )
    add.add_argument("name", help="1-32 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    add.add_argument("--qr", action="store_true", help="print the file as a QR code")
    add.add_argument("--output", "-o", metavar="FILE", help="write the file here (mode 0600)")
    add.add_argument(
        "--keep-key",
        action="store_true",
        help="store the client's private key, so `peer show` can print the file again",
    )
    add.add_argument("--no-psk", action="store_true", help="no preshared key")
    lst = psub.add_parser(
        "list", parents=[cfg_opt], help="every peer, with live handshake and transfer"
    )
    lst.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    rm = psub.add_parser(
        "remove", parents=[cfg_opt], help="forget a client; a running router drops it at once"
    )
    rm.add_argument("name")
    show = psub.add_parser("show", parents=[cfg_opt], help="print a stored client's file again")
    show.add_argument("name")
    show.add_argument("--qr", action="store_true", help="print the file as a QR code")


def _load_sourced(args: argparse.Namespace, *, embedded: bool) -> tuple[Config, tuple[str, ...]]:
    """The configuration from the environment and --config (and, `embedded`, the stored
    identity), with where each peer was configured."""
    cfg, labels = load_config_sourced(os.environ, args.config)
    if embedded:
        from wgslirp.identity import ensure_default_identity

        cfg = ensure_default_identity(cfg)
    return cfg, labels


def _load(args: argparse.Namespace, *, embedded: bool) -> Config:
    """What the router runs with: with `embedded`, the stored identity and the clients of
    the peers file too (at every start and every reload)."""
    cfg, labels = _load_sourced(args, embedded=embedded)
    if embedded:
        from wgslirp.onboard.merge import with_stored_peers

        cfg = with_stored_peers(cfg, labels)
        from wgslirp.config.forwards import check_config_forwards

        check_config_forwards(cfg)  # needs the final peer set: at start and every reload
    return cfg


def _peer_command(args: argparse.Namespace) -> int:
    from wgslirp.onboard import commands
    from wgslirp.onboard.errors import PeerError

    cmd = args.peer_command
    try:
        # add and show print files naming the router's key, so they load (and on a first
        # run create) the identity as the router does; list and remove change nothing else
        cfg, labels = _load_sourced(args, embedded=cmd in ("add", "show"))
        ctx = commands.Context(cfg, labels)
        if cmd == "add":
            return commands.add(
                ctx,
                args.name,
                psk=not args.no_psk,
                keep_key=args.keep_key,
                output=args.output,
                qr=args.qr,
            )
        if cmd == "remove":
            return commands.remove(ctx, args.name)
        if cmd == "show":
            return commands.show(ctx, args.name, qr=args.qr)
        return commands.list_peers(ctx, as_json=args.json)
    except PeerError as err:
        print(f"wgslirp: peer {cmd}: {err}", file=sys.stderr)
        return err.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    # Until the router installs its handlers: a SIGHUP (reload) must not kill a starting
    # router, and Ctrl-C during start-up ends it quietly (see the KeyboardInterrupt below).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = _parser().parse_args(argv)
    if getattr(args, "sub_config", None):
        args.config = args.sub_config
    cmd = args.command or "run"
    try:
        if cmd == "genkey":
            print(encode_key(generate_private_key()))
            return 0
        if cmd == "pubkey":
            print(encode_key(public_key(decode_key(sys.stdin.read(), "stdin"))))
            return 0
        if cmd == "check-config":
            return check_config(os.environ, args.config)
        if cmd == "client-config":
            from wgslirp.identity import client_config_text, read_client_private_key

            cfg = _load(args, embedded=True)
            print(client_config_text(cfg, read_client_private_key(cfg)), end="")
            return 0
        if cmd == "peer":
            return _peer_command(args)
        if cmd == "healthcheck":
            return _healthcheck(parse_setting(os.environ, "METRICS_LISTEN"))
        return _run(args)
    except ConfigError as err:
        print(f"wgslirp: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C before the router's own handlers are installed
        return 130


def _healthcheck(listen: tuple[str, int] | None) -> int:
    from wgslirp.obs.http import http_get

    if listen is None:
        print(
            "wgslirp: healthcheck needs METRICS_LISTEN (the router serves /healthz there)",
            file=sys.stderr,
        )
        return 1
    host, port = listen
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    try:
        status, body = http_get(host, port, "/healthz")
    except OSError as exc:
        print(f"wgslirp: unhealthy: cannot reach {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(body.strip() or status)
    return 0 if status == 200 else 1


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args, embedded=True)
    setup_logging(
        debug=bool(cfg.debug), json_lines=cfg.log_format == "json", wg_debug=bool(cfg.wg_debug)
    )
    from wgslirp.runtime import supervisor
    from wgslirp.runtime.control import ListenError

    if cfg.private_key is not None and not cfg.peers:
        log.warning("no peers configured: nobody can connect (`wgslirp peer add NAME` adds one)")
    if not os.environ.get("PROCESSOR_WORKERS", "").strip():
        log.info(
            "PROCESSOR_WORKERS unset: %d worker(s) for %d usable CPU(s) (affinity, cgroup quota)",
            cfg.processor_workers,
            usable_cpus(),
        )
    unknown = unknown_variables(os.environ)
    if unknown:
        log.warning(
            "ignoring unknown setting(s) %s: a typo? (see `wgslirp check-config` "
            "and docs/configuration.md)",
            ", ".join(unknown),
        )
    from wgslirp.config.forwards import expand
    from wgslirp.net.ipv4 import PROTO_TCP, PROTO_UDP
    from wgslirp.slirp.forward_bridge import probe_forwards

    probe_forwards(
        (
            ("WG_FORWARD_TCP", PROTO_TCP, expand(cfg.forward_tcp)),
            ("WG_FORWARD_UDP", PROTO_UDP, expand(cfg.forward_udp)),
        )
    )
    try:
        return supervisor.run(
            cfg,
            lambda address: _announce(cfg, address),
            reload=lambda: _load(args, embedded=True),
            watch=args.config,
        )
    except ListenError as exc:
        print(f"wgslirp: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. /dev/shm too small for the rings
        print(f"wgslirp: cannot start: {exc}", file=sys.stderr)
        return 1


def _announce(cfg: Config, address: tuple[str, int]) -> None:
    from wgslirp.identity import client_config_text, read_client_private_key
    from wgslirp.wireguard.endpoint import format_endpoint

    assert cfg.private_key is not None
    client_key = read_client_private_key(cfg)
    if client_key is not None:
        try:
            sys.stdout.write("# wgslirp client configuration (also: `wgslirp client-config`)\n")
            sys.stdout.write(client_config_text(cfg, client_key))
            sys.stdout.flush()
        except (OSError, AttributeError, ValueError) as exc:
            # stdout closed or a broken pipe (`wgslirp | true`): the router still serves
            log.warning(
                "could not print the client configuration (%s); `wgslirp client-config` prints it",
                exc,
            )
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    log.info(
        "listening on %s, public key %s, %d peer(s)",
        format_endpoint(address),
        encode_key(public_key(cfg.private_key)),
        len(cfg.peers),
    )
