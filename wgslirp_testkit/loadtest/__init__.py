"""The load test behind ``scripts/loadtest.py``, one module per concern.

- ``protocol``: the byte pattern, request formats and verifiers both ends share;
- ``servers``: the host servers (one forked process);
- ``guest``: the guest program, run inside the client's namespace;
- ``run``: the controller's side (router, client, guest, what is read around a run);
- ``report``: verdict, summary table, plot;
- ``cli``: the options and ``main``.
"""
