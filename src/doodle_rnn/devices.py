"""Where torch runs and in what precision: `pick_device` (training, lr-find, eval, calibrate) and
`cpu_bf16_speedup`, the measured reason to use bf16 matrix products on a CPU."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from doodle_rnn.errors import DoodleError

# bf16 products cost a cast of every operand; below this measured gain they are not worth the rounding.
BF16_MIN_SPEEDUP = 1.25


class DeviceError(DoodleError):
    """A device that does not exist here, or a name that is not a device."""


def pick_device(name: str = "auto"):
    """auto: CUDA, then Apple MPS, then CPU. cpu, cuda, cuda:N and mps by name; one that is absent is an error."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name}: not a device (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA device is available (try --device auto or cpu)")
    if dev.type == "mps" and not mps:
        raise DeviceError(f"--device {name}: Apple MPS is not available (try --device auto or cpu)")
    return dev


def cpu_has_bf16_isa() -> bool:
    """True on x86 CPUs that advertise AVX512-BF16 or AMX; without either, bf16 products are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _product_seconds(shapes: list[tuple[int, int, int, int]], dtype) -> float:
    """Best of three timings of the given products (m, k, n, repeats) in `dtype`, with this process's threads."""
    import torch

    gen = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the seeded global one
    mats = [
        (torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype), r)
        for m, k, n, r in shapes
    ]
    for a, b, _ in mats:
        a @ b  # first call: oneDNN picks and builds its kernel
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for a, b, reps in mats:
            for _ in range(reps):
                a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster bf16 than fp32 matrix products run here, at the GRU's shapes (0.0: no bf16 ISA).

    The CPU flags alone do not tell: on machines of the same kind, with the same flags, bf16 products
    measured 2x the fp32 rate in one session and 0.5x in another (the hypervisor decides what the guest
    really gets), and training in bf16 there ran at 0.67x of fp32. So the trainer measures, once per process
    (about 0.1 s): a recurrent step's product (batch 192 x hidden 192 -> 3 gates) and a batched input
    projection (4,096 rows x 384 -> 576)."""
    if not cpu_has_bf16_isa():
        return 0.0
    import torch

    shapes = [(192, 192, 576, 20), (4096, 384, 576, 2)]
    return _product_seconds(shapes, torch.float32) / _product_seconds(shapes, torch.bfloat16)


def cpu_has_fast_bf16() -> bool:
    """Use bf16 GRU products on this CPU: it has the instructions and they measure >= 1.25x fp32."""
    return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
