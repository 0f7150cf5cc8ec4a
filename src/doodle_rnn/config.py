"""Training settings and their defaults, in one place and without torch.

`TrainConfig` holds the reference recipe's defaults; `doodle train`, `doodle lr-find` and
`doodle quickstart` take their flags' defaults from it (the CLI parser must not import torch, which
is why this is not in train.py), and `LRFindConfig` shares the recipe's fields with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from doodle_rnn.errors import DoodleError

SCHEDULERS = ("plateau", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Training batches. `random`: drawn at random (each sorted by length inside, for the GRU kernel).
# `bucket`: drawings of similar within-class length quantile together; it learned much slower on the
# 10-animal workload (val acc 0.46 vs 0.74 after 4 epochs; see data/batches.py) and, since the CPU
# kernel skips padding, is only ~5% faster per epoch, so it is opt-in.
BATCHINGS = ("random", "bucket")


class TrainError(DoodleError):
    """A problem the user can fix (bad flag, missing cache, nothing to resume)."""


@dataclass
class TrainConfig:
    data: str
    out: str
    epochs: int = 15
    batch_size: int = 192
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    dropout: float = 0.2
    grad_clip: float = 1.0
    patience: int = 4
    scheduler: str = "plateau"
    batching: str = "random"
    augment: bool = True
    device: str = "auto"
    seed: int = 42
    resume: bool = False
    overwrite: bool = False
    max_steps: int | None = None
    grad_accum: int = 1
    hidden_size: int = 192
    num_layers: int = 2
    bidirectional: bool = True
    rnn: str = "gru"
    num_threads: int | None = None
    eval_batch_size: int = 512
    # validation drawings per epoch (for the plateau schedule, early stopping and best.pt): a fixed random
    # subset of the val split, the same every epoch and on --resume; 0 or None: the whole split
    val_max: int | None = 20_000
    # after training, measure best.pt once on the whole val split (when the epochs used a subset)
    final_val: bool = True
    # also write RUN_DIR/last.pt every N optimizer steps, so that --resume continues mid-epoch
    save_every_steps: int | None = None
    log_every: int = 50
    amp: bool = True
    # share of training drawings replaced by a random prefix (re-normalised like a capture), so the model
    # also learns half-finished drawings (early guessing, as in the game); needs a stroke3 cache
    prefix_prob: float = 0.0
    # 1-D convolutions (kernel `conv_kernel`, these output channels) in front of the GRU; empty: none
    conv_channels: tuple[int, ...] = ()
    conv_kernel: int = 5
    # start from this checkpoint's weights (and its model shape) with a fresh optimiser and schedule:
    # a second leg of training with a new learning-rate cycle, where --resume can only finish the old one
    # (ignored on --resume, which takes everything from RUN_DIR/last.pt)
    init_from: str | None = None

    def check(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise TrainError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}")
        if self.batching not in BATCHINGS:
            raise TrainError(f"--batching must be one of {', '.join(BATCHINGS)}, not {self.batching!r}")
        if self.device not in DEVICES:
            raise TrainError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        for name in ("epochs", "batch_size", "grad_accum", "hidden_size", "num_layers", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise TrainError("--dropout must be in [0, 1)")
        if not 0 <= self.prefix_prob <= 1:
            raise TrainError("--prefix-prob must be in [0, 1]")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise TrainError("--conv-kernel must be an odd number >= 1 (the convolution keeps the length)")
        if self.val_max is not None and self.val_max < 0:
            raise TrainError("--val-max must be 0 (the whole val split) or more")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise TrainError("--save-every-steps must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainError("--max-steps must be at least 1")
        if self.resume and self.overwrite:
            raise TrainError("--resume continues the run in --out and --overwrite replaces it: give one")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("conv_channels") is not None:
            kw["conv_channels"] = tuple(int(c) for c in kw["conv_channels"])
        return cls(**kw)


@dataclass
class LRFindConfig:
    data: str
    out: str
    start_lr: float = 1e-6
    end_lr: float = 1.0
    num_iter: int = 200
    batch_size: int = TrainConfig.batch_size
    weight_decay: float = TrainConfig.weight_decay
    label_smoothing: float = TrainConfig.label_smoothing
    dropout: float = TrainConfig.dropout
    hidden_size: int = TrainConfig.hidden_size
    num_layers: int = TrainConfig.num_layers
    rnn: str = TrainConfig.rnn
    augment: bool = TrainConfig.augment
    smoothing: float = 0.98
    diverge: float = 4.0
    device: str = TrainConfig.device
    seed: int = TrainConfig.seed
    num_threads: int | None = None
