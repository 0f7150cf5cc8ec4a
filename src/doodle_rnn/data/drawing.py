"""The one in-memory type every data format is read into.

Strokes are kept exactly as the JSON gives them (a list of strokes, each `[xs, ys]` or
`[xs, ys, ts]`), because most drawings go straight to the vectorised encoder and converting
each to numpy arrays first would cost more than the encoding itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Stroke = list[list[float]]  # [xs, ys] (simplified) or [xs, ys, ts] (raw, milliseconds)
Strokes = list[Stroke]


@dataclass(slots=True)
class Drawing:
    word: str
    key_id: str
    strokes: Strokes
    countrycode: str = ""
    recognized: bool = True
    timestamp: str = ""
    extra: dict = field(default_factory=dict)

    def to_ndjson_dict(self) -> dict:
        """The official ndjson field layout (used when writing normalised files)."""
        d = {
            "word": self.word,
            "countrycode": self.countrycode,
            "timestamp": self.timestamp,
            "recognized": self.recognized,
            "key_id": self.key_id,
            "drawing": self.strokes,
        }
        d.update(self.extra)
        return d
