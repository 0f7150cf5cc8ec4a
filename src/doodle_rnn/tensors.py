"""Batches as torch tensors: padding, augmentation, and iteration over a cache.

Training, evaluation and export all go through `pad_features` (and so through `encode.pad_steps` and
`encode.steps_to_features`): there is no second conversion that could drift. Inference without torch
uses `encode.pad_steps` directly.

Augmentation (`augment_features`) works on those float features in delta space and is applied to
training batches only. Which drawings form a batch is decided in `data/batches.py`, without torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from doodle_rnn.data.batches import bucket_batches
from doodle_rnn.data.cache import DoodleCache
from doodle_rnn.data.encode import pad_steps


def pad_features(steps: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated int16 steps + lengths -> zero-padded float32 [B, T, 3] and int64 lengths [B] tensors."""
    out, lengths = pad_steps(steps, lengths)
    return torch.from_numpy(out), torch.from_numpy(lengths)


def augment_features(
    x: torch.Tensor,
    lengths: torch.Tensor,
    rng: np.random.Generator,
    rotation: float = 0.15,
    scale: float = 0.15,
    jitter: float = 0.5 / 255,
) -> torch.Tensor:
    """A randomly rotated, stretched and jittered copy of padded features [B, T, 3] (training only).

    Per drawing: a rotation by U(-rotation, rotation) radians and a scale of U(1 - scale, 1 + scale) per
    axis, applied to every (dx, dy) step (in delta space a linear map of the drawing is a linear map of
    its steps); plus Gaussian jitter of `jitter` (in feature units, 1/255 = one pixel) on each step.
    Pen lifts and padding (zeros past each length) are left alone; steps stay clipped to [-1, 1].
    """
    b, t, _ = x.shape
    theta = rng.uniform(-rotation, rotation, b)
    sx = rng.uniform(1 - scale, 1 + scale, b)
    sy = rng.uniform(1 - scale, 1 + scale, b)
    c, s = np.cos(theta), np.sin(theta)
    # rows: new (dx, dy) = M @ (dx, dy), M = R(theta) @ diag(sx, sy)
    m = np.stack([np.stack([c * sx, -s * sy], -1), np.stack([s * sx, c * sy], -1)], -2).astype(np.float32)
    out = x.clone()
    out[..., :2] = torch.einsum("bij,btj->bti", torch.from_numpy(m).to(x.device), x[..., :2])
    if jitter > 0:
        noise = rng.normal(0.0, jitter, (b, t, 2)).astype(np.float32)
        out[..., :2] += torch.from_numpy(noise).to(x.device)
    mask = (torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]).unsqueeze(-1)
    out[..., :2] = torch.where(mask, out[..., :2].clamp(-1.0, 1.0), torch.zeros((), device=x.device))
    return out


def iterate_cache(
    cache: DoodleCache, indices: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (cache indices, x [B, T, 3], lengths [B], labels [B]) over `indices`."""
    indices = np.asarray(indices)
    batches = bucket_batches(cache.lengths[indices], batch_size, shuffle, np.random.default_rng(seed))
    for b in batches:
        idx = indices[b]
        steps, lens = cache.batch_steps(idx)
        x, lengths = pad_features(steps, lens)
        yield idx, x, lengths, torch.from_numpy(cache.labels[idx].astype(np.int64))
