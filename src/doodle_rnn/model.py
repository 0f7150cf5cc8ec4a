"""The recurrent classifier: strokes-as-steps in, class logits out.

`GRUClassifier` keeps the reference project's parameter names and shapes (`gru.weight_ih_l0`, ...,
`norm.weight`, `fc.weight`) so the reference's checkpoints load unchanged. Sequences are packed, so a
drawing's logits never depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass
class ModelConfig:
    num_classes: int
    input_size: int = 3
    hidden_size: int = 192
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.2
    rnn: str = "gru"  # "gru" or "lstm"

    def to_dict(self) -> dict:
        return asdict(self)


class GRUClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', not {cfg.rnn!r}")
        rnn_cls = nn.GRU if cfg.rnn == "gru" else nn.LSTM
        # The attribute is called `gru` for both kinds so parameter names match the reference's.
        self.gru = rnn_cls(
            input_size=cfg.input_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(width, cfg.num_classes)

    def final_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Last layer's final hidden state(s), both directions concatenated: [B, H * dirs]."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        if isinstance(h, tuple):  # LSTM returns (h, c)
            h = h[0]
        dirs = 2 if self.cfg.bidirectional else 1
        return torch.cat(list(h[-dirs:]), dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, T, 3] float features (padded), lengths: [B] true lengths -> logits [B, C]."""
        return self.fc(self.drop(self.norm(self.final_states(x, lengths))))
