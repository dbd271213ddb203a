"""Summaries of py-spy "raw" (collapsed stack) profiles: where the time goes."""

from __future__ import annotations

import collections
import re
import sys

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^)]*)\)$")
#: Leaf frames that mean "waiting": the gevent hub in libev, idle worker threads, pollers.
IDLE_LEAVES = ("Hub.run (gevent/hub.py)", "_worker (concurrent/futures/thread.py)",
               "Condition.wait (threading.py)", "Event.wait (threading.py)")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    path = re.sub(r":\d+$", "", path)
    return f"{m.group('func')} ({path})"


def summarize(path: str, top: int = 15) -> tuple[int, int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(all samples, busy samples, top self-time functions, top inclusive functions) of a
    collapsed profile; samples whose leaf is an idle wait (IDLE_LEAVES) are left out."""
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = idle = 0
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                count = int(n)
            except ValueError:
                continue
            frames = [_short(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            if frames[-1] in IDLE_LEAVES:
                idle += count
                continue
            self_t[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    return total, total - idle, self_t.most_common(top), incl.most_common(top)


def report(path: str, top: int = 15) -> str:
    """Markdown tables; percentages are of the busy (non-idle) samples."""
    everything, total, self_t, incl = summarize(path, top)
    lines = [f"samples: {everything}, busy: {total} ({100 * total / max(1, everything):.0f} %); "
             "percentages of busy samples", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * n / max(1, total):.1f} | `{f}` |" for f, n in self_t]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / max(1, total):.1f} | `{f}` |" for f, n in incl]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
