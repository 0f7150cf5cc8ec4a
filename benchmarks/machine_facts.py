"""What a benchmark run had to work with, measured in the same run: printed beside every result.

Why: the same machine kind gave figures 1.6x apart between sessions (steal time, a busy neighbour,
oneDNN's choice of kernels). A result given also as a fraction of the matrix-product peak measured in the
same run, with the same threads, travels between machines better than drawings/s alone.

    from machine_facts import machine_facts   # benchmarks/ is on sys.path when a bench script runs
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from doodle_rnn.devices import cpu_bf16_speedup, cpu_has_fast_bf16


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, reps: int = 8) -> float:
    """Best GFLOP/s of a square matrix product on `device` in `dtype`, with this process's threads."""
    n = 8192 if device.type == "cuda" else 1536
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        sync_device(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync_device(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best / 1e9


def cpu_steal(since: tuple[int, int] | None = None):
    """Share of CPU time the hypervisor took (steal) since `since`; without it, the counters to pass later.

    A busy host takes cycles from the guest, and every thread of a GRU step waits for the slowest one."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    now = (sum(fields), fields[7] if len(fields) > 7 else 0)
    if since is None:
        return now
    total = now[0] - since[0]
    return round((now[1] - since[1]) / total, 4) if total else 0.0


def machine_facts(device: str = "cpu") -> dict:
    """CPUs, load, torch threads, CPU capability, and the fp32 and bf16 product peaks of this run."""
    dev = torch.device(device)
    facts = {
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16_cpu": cpu_has_fast_bf16() if dev.type == "cpu" else None,
        "bf16_speedup_at_gru_shapes": round(cpu_bf16_speedup(), 2) if dev.type == "cpu" else None,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    }
    facts["matmul_peak_gflops"] = {
        "fp32": round(matmul_peak(dev), 1),
        "bf16": round(matmul_peak(dev, torch.bfloat16), 1),
    }
    return facts
