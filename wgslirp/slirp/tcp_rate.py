"""Delivery-rate samples for a model-based congestion controller.

BBR steers by two numbers it measures: the bottleneck bandwidth (the highest rate at which the
guest recently acknowledged data) and the minimum round-trip time. The rate has to be measured
the way draft-cheng-iccrg-delivery-rate-estimation describes (and Linux's tcp_rate.c does):
the bytes delivered between sending a segment and its acknowledgement, divided by the longer of
the send interval and the ACK interval of that span, so that neither a burst of sends nor a
burst of stretch ACKs reads as more bandwidth than the path has.

The draft keeps this state per packet. Here it is kept per *send batch*: the endpoint sends in
bursts of at most one pacing quantum (1 ms), all at the same `now`, so a record per batch
holds the same send times a record per segment would, for a list append per millisecond
instead of per segment. A batch counts as delivered when the cumulative ACK or a SACK block
reaches its end, which is when its last segment (the one a per-packet sampler would use) is
acknowledged.

"Delivered" counts bytes the guest holds: SND.UNA's advance plus newly SACKed bytes, so loss
recovery keeps producing samples while the cumulative ACK is stuck at a hole.

A sample is app-limited when the sender ran out of data (not window) while the bytes it
covers were sent: such a sample can show the path slower than it is, so a controller uses it
only when it shows more bandwidth than it already believes in.
"""

from __future__ import annotations

from typing import Final

MAX_RECORDS: Final = 512  # batches tracked in flight; older ones merge into the next


class DeliveryRate:
    """Rate samples over unwrapped sequence numbers; see the module docstring."""

    __slots__ = (
        "_app_limited_until",
        "_first_sent_at",
        "_recs",
        "delivered",
        "delivered_at",
        "sample_app_limited",
        "sample_delivered",
        "sample_interval",
        "sample_prior_delivered",
        "sample_rtt",
    )

    def __init__(self, now: float) -> None:
        self.delivered = 0  # bytes delivered so far (cumulatively ACKed or SACKed)
        self.delivered_at = now  # when `delivered` last grew
        self._first_sent_at = now  # send time of the latest batch known delivered
        self._app_limited_until = 0  # samples before this delivered count are app-limited
        # One record per batch: [end seq, sent at, delivered, delivered_at, first_sent_at,
        # app-limited]. Plain lists in send order; the endpoint's ACK pops from the front.
        self._recs: list[tuple[int, float, int, float, float, bool]] = []
        # The latest sample (valid after on_delivery returned True).
        self.sample_delivered = 0
        self.sample_interval = 0.0
        self.sample_rtt = -1.0
        self.sample_prior_delivered = 0
        self.sample_app_limited = False

    def on_send(self, end: int, now: float, idle: bool) -> None:
        """New data up to `end` left in one batch at `now`. `idle`: nothing was in flight
        before it, so the ACK clock restarts here (an interval spanning the idle time
        would read as a slow path)."""
        if idle:
            self._first_sent_at = now
            self.delivered_at = now
        recs = self._recs
        rec = (
            end,
            now,
            self.delivered,
            self.delivered_at,
            self._first_sent_at,
            self.delivered < self._app_limited_until,
        )
        if len(recs) >= MAX_RECORDS:
            # Keep the list bounded: the newest batch replaces the one before it, whose
            # bytes then count as part of this later batch (a coarser sample, not a wrong one).
            recs[-1] = rec
        else:
            recs.append(rec)

    def app_limited(self, in_flight: int) -> None:
        """The sender had window to spare and nothing to send: the samples of what is in
        flight now would understate the path."""
        self._app_limited_until = max(self.delivered + in_flight, 1)

    def on_delivery(self, newly: int, highest: int, now: float) -> bool:
        """`newly` more bytes were delivered, the highest of them below `highest`. Returns
        True with the sample_* attributes set when a batch completed."""
        if newly <= 0:
            return False
        self.delivered += newly
        self.delivered_at = now
        recs = self._recs
        if not recs or recs[0][0] > highest:
            return False
        i = 1
        n = len(recs)
        while i < n and recs[i][0] <= highest:
            i += 1
        _, sent_at, prior, prior_at, first_sent_at, limited = recs[i - 1]
        del recs[:i]
        self._first_sent_at = sent_at
        interval = sent_at - first_sent_at  # the send span the sample covers ...
        ack_span = now - prior_at  # ... and the ACK span; the longer one is the rate's
        if ack_span > interval:
            interval = ack_span
        self.sample_delivered = self.delivered - prior
        self.sample_prior_delivered = prior
        self.sample_interval = interval
        self.sample_rtt = now - sent_at
        self.sample_app_limited = limited
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        return interval > 0.0

    def forget(self) -> None:
        """A timeout made every outstanding send time meaningless (all of it is resent)."""
        self._recs.clear()

    @property
    def sample_bw(self) -> float:
        """Bytes per second of the latest sample."""
        return self.sample_delivered / self.sample_interval if self.sample_interval else 0.0
