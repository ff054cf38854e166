"""Command line: `wgslirp [run|genkey|pubkey|check-config|client-config]`.

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

from wgslirp import __version__
from wgslirp.config import (
    EXIT_CONFIG,
    Config,
    ConfigError,
    check_config,
    load_config,
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
    sub.add_parser(
        "healthcheck",
        help="exit 0 if the running router reports healthy "
        "(asks /healthz on METRICS_LISTEN; for Docker's HEALTHCHECK)",
    )
    return p


def _load(args: argparse.Namespace, *, embedded: bool) -> Config:
    cfg = load_config(os.environ, args.config)
    if embedded:
        from wgslirp.identity import ensure_default_identity

        cfg = ensure_default_identity(cfg)
    return cfg


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
        log.warning("no peers configured: nobody can connect")
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
        "listening on %s:%d, public key %s, %d peer(s)",
        address[0],
        address[1],
        encode_key(public_key(cfg.private_key)),
        len(cfg.peers),
    )
