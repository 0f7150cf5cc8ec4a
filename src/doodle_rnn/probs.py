"""Probabilities from logits, numpy only (so that inference without torch shares it with evaluation)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature) of [N, C] logits, in their dtype, stable for large logits."""
    z = np.asarray(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
