"""Helpers shared by the benchmarks: machine facts, versions, percentiles, RSS of a process."""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata

import numpy as np

PACKAGES = ("numpy", "scipy", "numba", "scikit-learn", "marisa-trie", "grpcio", "protobuf")


def machine_info() -> dict:
    """Platform, CPU model and count, load average, Python and package versions."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    try:
        import numba

        numba_threads = {"threading_layer": numba.config.THREADING_LAYER, "num_threads": numba.config.NUMBA_NUM_THREADS}
    except ImportError:  # pragma: no cover - numba is a core dependency
        numba_threads = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(), "versions": versions,
            "numba_threads": numba_threads}


def write_json(path, obj: dict) -> None:
    """Write a benchmark result as indented JSON, creating the parent directory."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def percentiles_us(ns) -> dict:
    """Median and tail percentiles (microseconds) of a list of nanosecond durations."""
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "p99.9": float(np.percentile(a, 99.9)), "max": float(a.max())}


def format_row(name: str, p: dict) -> str:
    return (f"  {name:<34} p50 {p['p50']:8.1f} us  p90 {p['p90']:8.1f}  p99 {p['p99']:8.1f}  "
            f"p99.9 {p['p99.9']:8.1f}  max {p['max']:9.1f}  (n={p['n']})")


def rss_mb(pid: int) -> dict:
    """Current and peak resident set size (MB) of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(val.split()[0]) / 1024
    return out
