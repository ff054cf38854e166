# wgslirp container image: a user-space WireGuard router, no TUN device, no privileges.
#
#   docker build -t wgslirp .
#   docker run -d --name wgslirp -p 51820:51820/udp -v wgslirp-state:/var/lib/wgslirp wgslirp
#   docker logs wgslirp          # the client configuration (printed at every start)
#
# Guest pings use unprivileged ICMP sockets (net.ipv4.ping_group_range, which Docker opens
# to all groups since 20.10); on older engines add `--cap-add NET_RAW` for raw ICMP
# sockets. No other capability is needed: `--cap-drop ALL` works.
# See docs/operations.md.

# --- build: wheels for wgslirp and its dependencies ----------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wgslirp ./wgslirp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

# tini is PID 1: it forwards SIGTERM to wgslirp and reaps orphans, and wgslirp's own
# processes never have PID 1 as their parent (a worker takes that as "supervisor gone").
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 wgslirp \
 && useradd --system --uid 10001 --gid wgslirp --home-dir /var/lib/wgslirp \
      --no-create-home --shell /usr/sbin/nologin wgslirp \
 && install -d -m 0700 -o wgslirp -g wgslirp /var/lib/wgslirp

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/wgslirp-*.whl \
 && rm -rf /wheels

# Defaults from the Go original's docker-compose example; override any with -e.
# Keys: unset here on purpose. Without WG_PRIVATE_KEY the router creates its key (and one
# client's) in the state volume on first start and reuses them afterwards.
# PROCESSOR_WORKERS is unset, not the example's 8: the router fits it to the CPUs the
# container may use (--cpus, a Kubernetes CPU limit, the cpuset): inline on 2 or fewer,
# at most 4 workers. With these queue caps each worker's rings take ~8.5 MiB of /dev/shm,
# and 8 workers would overflow Docker's default 64 MiB --shm-size. More workers need
# `-e PROCESSOR_WORKERS=N` and a larger --shm-size.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WGSLIRP_STATE_DIR=/var/lib/wgslirp \
    WG_LISTEN_PORT=51820 \
    WG_MTU=1200 \
    POOLING=1 \
    PROCESSOR_QUEUE_CAP=4096 \
    WG_TUN_QUEUE_CAP=2048 \
    TCP_ACK_DELAY_MS=5 \
    TCP_ENABLE_SACK=1 \
    TCP_GATE_LOG=off \
    METRICS_LISTEN=127.0.0.1:9586

VOLUME ["/var/lib/wgslirp"]
EXPOSE 51820/udp
USER 10001:10001

# /healthz on METRICS_LISTEN (loopback inside the container): processes alive, loops
# turning, rings draining. Publish 9586 and set METRICS_LISTEN=0.0.0.0:9586 to scrape it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["wgslirp", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "wgslirp"]
CMD ["run"]
