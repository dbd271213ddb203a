"""CPU and memory of processes from /proc (Linux), without extra dependencies."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    at: float  # monotonic seconds
    cpu: float  # user+system CPU seconds
    rss: int  # bytes


def sample(pid: int) -> Sample:
    """One reading of a process's CPU time and resident memory."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return Sample(time.monotonic(), (utime + stime) / CLK_TCK, rss)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        pass
    return out


def cpu_share(a: Sample, b: Sample) -> float:
    """CPU used between two samples, in cores (1.0 = one core busy)."""
    dt = b.at - a.at
    return (b.cpu - a.cpu) / dt if dt > 0 else 0.0


def machine() -> str:
    """`N cores, X GiB` of this machine."""
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem_kb / 1048576:.1f} GiB RAM"
