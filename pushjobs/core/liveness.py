"""Server-side client liveness: the decaying average of PROTOCOL.md §6.3.

One `Liveness` per node FSM, created at the first heartbeat processed for it.
It is called for every heartbeat of every node (10,000 nodes at a 1 s
interval is 10,000 calls a second), so it is plain attributes in `__slots__`,
floats only, and allocates nothing per call.

The record is `{avg, interval_start, heartbeats}`; time is cut into whole
heartbeat intervals starting at the first heartbeat. Closing an interval
folds its beat count into the average with weight `1/W`; every further
silent interval multiplies the average by `1 - 1/W`. A steady node sits at
1.0; `avg < down_threshold` means dead.
"""

from __future__ import annotations

import math

__all__ = ["Liveness"]


class Liveness:
    """Decaying heartbeat average of one node.

    `interval` is the heartbeat interval in **seconds** (the setting
    `heartbeat_interval` is in ms: divide by 1000); `decay_window` W and
    `down_threshold` D as in §6.3. Constructing the tracker counts as the
    first heartbeat (`avg = 2 × D`, `heartbeats = 1`).
    """

    __slots__ = ("interval", "down_threshold", "w_now", "w_hist", "avg", "interval_start", "heartbeats")

    def __init__(self, now: float, interval: float, decay_window: float = 4, down_threshold: float = 0.6):
        if interval <= 0:
            raise ValueError(f"liveness interval must be > 0 s, got {interval!r}")
        if decay_window < 1:
            raise ValueError(f"decay_window must be >= 1, got {decay_window!r}")
        self.interval = float(interval)
        self.down_threshold = float(down_threshold)
        self.w_now = 1.0 / decay_window
        self.w_hist = 1.0 - self.w_now
        self.avg = 2.0 * self.down_threshold
        self.interval_start = float(now)
        self.heartbeats = 1

    def _advance(self, now: float) -> None:
        """Close the whole intervals elapsed since `interval_start`."""
        k = math.floor((now - self.interval_start) / self.interval)
        if k > 0:
            w_hist = self.w_hist
            self.avg = (self.avg * w_hist + self.heartbeats * self.w_now) * (w_hist ** (k - 1))
            self.interval_start += k * self.interval
            self.heartbeats = 0

    def heartbeat(self, now: float) -> bool:
        """Count one valid heartbeat at `now`; False means the node is dead
        (its average had decayed below the threshold before this beat)."""
        self._advance(now)
        self.heartbeats += 1
        return self.avg >= self.down_threshold

    def check(self, now: float) -> bool:
        """The periodic scan (every `detect_offline_nodes_interval` intervals):
        False means the node is dead."""
        self._advance(now)
        return self.avg >= self.down_threshold

    def __repr__(self) -> str:
        return f"Liveness(avg={self.avg:.4f}, interval_start={self.interval_start}, heartbeats={self.heartbeats})"
