"""Test and benchmark support for wgslirp: shared by tests/, scripts/ and the load test.

It is a package of its own, beside ``wgslirp``, so that tests, benchmarks and programs run
inside a guest namespace all import the same helpers the ordinary way (``pip install -e .``
installs both; a checkout on ``PYTHONPATH`` works too) instead of editing ``sys.path``.
Nothing in ``wgslirp`` imports it.

Modules, one concern each (see each docstring for why it is built the way it is):

- ``proc``: child processes that cannot outlive us (PDEATHSIG, process groups, kill by PID).
- ``netns``: network namespaces, resource names, the stale-resource sweep, e2e requirements.
- ``diagnostics``: logs of harness objects kept for the report of a failing test.
- ``keys``, ``ports``: WireGuard keys; loopback ports free or reliably closed.
- ``wgclient``: a stock WireGuard client (wireguard-go + wg) whose TUN sits in a namespace.
- ``router``: the router as a child process, its client configuration and exit counters.
- ``nft``: an nft rule that drops and counts what the router must never send.
- ``hostservers``: servers on host loopback (threads for tests, forked for benchmarks).
- ``relay``: a lossy, reordering UDP relay between client and router.
- ``impair``: the impaired path (delay, jitter, loss, reordering, a bottleneck) as a
  sans-I/O link model and a relay process that reports its own limits.
- ``iperf``, ``pinger``: iperf3 runs and fine-grained RTT sampling for the benchmarks.
- ``flood``: a handshake flood and a legitimate peer's view of it.
- ``sampling``: CPU, memory and socket-drop sampling of process trees and the machine.
- ``clock``, ``tcpconn``, ``wgpair``: fakes and drivers for the sans-I/O cores.
- ``guestprog``: the guest side of the e2e tests, run inside a namespace.
- ``bench``, ``pyspy``: benchmark controller plumbing and profiles.
- ``loadtest``: the load test behind ``scripts/loadtest.py``.

This package imports no module at start: ``python -m wgslirp_testkit.guestprog`` in a
namespace pays only for what the guest uses.
"""
