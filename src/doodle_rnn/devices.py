"""`pick_device`: the one rule for where torch runs, used by training, lr-find, eval and calibrate."""

from __future__ import annotations

from doodle_rnn.errors import DoodleError


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
