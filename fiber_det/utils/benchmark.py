"""Measurement helpers for tools/benchmark.py: latency (median after warm-up) and peak memory.

Latency comparisons are made in the same run as ratios, since the machine may be shared.
Peak memory: CUDA ``max_memory_allocated``; on CPU the peak resident set size above the level
before the measurement, sampled every few milliseconds from ``/proc/self/statm``.
"""

import os
import platform
import resource
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import torch

__all__ = [
    "machine_description",
    "matmul_probe",
    "max_rss_mb",
    "measure",
    "measure_interleaved",
    "op_table",
    "peak_memory_mb",
    "rss_mb",
]

#: Side of the square fp32 matmul whose speed gives the matmul bound (large enough to run at the
#: BLAS library's peak, small enough to take a fraction of a second on 2 cores).
MATMUL_PROBE_SIZE = 2048

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident set size of this process in MB (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@contextmanager
def peak_memory_mb(device: torch.device) -> Iterator[Dict[str, float]]:
    """Context manager filling ``result["peak_mb"]`` with the peak memory used inside it."""
    result: Dict[str, float] = {"peak_mb": 0.0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    base = rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_mb"] = max(peak[0], rss_mb()) - base


def measure_interleaved(
    fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1
) -> Dict[str, Dict[str, object]]:
    """Median latency (s) and peak memory (MB, the largest of the timed calls) of each function,
    timed in turns (a, b, c, a, b, c, ...) after ``warmup`` rounds, so that a slow spell of a
    shared machine falls on all of them alike rather than on whichever ran last."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    peaks: Dict[str, float] = {k: 0.0 for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with peak_memory_mb(device) as mem:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], mem["peak_mb"])
    return {
        k: {"median_s": statistics.median(t), "times_s": t, "peak_mb": peaks[k]}
        for k, t in times.items()
    }


def measure(
    fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1
) -> Dict[str, object]:
    """Median latency (s) of ``fn`` over ``repeats`` runs after ``warmup`` runs, and the peak
    memory (MB) of the timed runs."""
    return measure_interleaved({"fn": fn}, device, repeats, warmup)["fn"]


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (MB), from ``getrusage``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_probe(device: torch.device, size: int = MATMUL_PROBE_SIZE):
    """A function that runs one fp32 ``size``^3 matmul, and its multiply-adds.

    Timed beside the model (:func:`measure_interleaved`), it gives the machine's matmul speed under
    the same conditions: the model cannot run faster than its multiply-adds at that speed.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    return (lambda: torch.mm(a, b)), float(size) ** 3


def op_table(profile, limit: int = 25) -> List[Dict[str, object]]:
    """The ops of a ``torch.profiler`` run by self time: name, self ms, share, calls."""
    events = list(profile.key_averages())
    key = (
        "self_device_time_total"
        if any(getattr(e, "self_device_time_total", 0) for e in events)
        else "self_cpu_time_total"
    )
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, key))
    return [
        {
            "op": e.key,
            "self_ms": getattr(e, key) / 1e3,
            "share": getattr(e, key) / total,
            "calls": e.count,
        }
        for e in events[:limit]
    ]


def machine_description(device: torch.device) -> str:
    """CPU model, cores, torch threads and version, and the GPU if one is used."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    text = (
        f"{cpu or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text
