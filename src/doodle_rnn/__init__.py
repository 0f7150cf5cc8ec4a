"""doodle-rnn: recognise Quick, Draw! doodles from their pen strokes with a recurrent network.

The heavy parts (torch) are imported lazily so that `doodle --help` and the data tools start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Classifier", "__version__"]


def __getattr__(name: str):
    # Lazy import: `from doodle_rnn import Classifier` pulls torch only when asked for.
    if name == "Classifier":
        from doodle_rnn.inference import Classifier

        return Classifier
    raise AttributeError(name)
