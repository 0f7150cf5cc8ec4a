"""How many CPU threads a torch inference job uses: chosen by the size of the work unless the user says.

Why not torch's default (one thread per core): a GRU runs one small matrix product per time step, and
with several threads every step ends in a barrier. When the cores are busy (a training run beside it,
which is how these jobs are usually run) each barrier waits for a descheduled thread: measured on a
2-core machine beside a training run, `doodle calibrate` took 27.4 s with 2 threads and 3.6 s with 1
(25 of 28.6 s inside one torch.gru call), `doodle export` 13.7 s and 2.1 s. Small jobs therefore run
on one thread; big ones (where extra threads can pay off on an idle machine) keep torch's choice, and
`--num-threads` overrides both.
"""

from __future__ import annotations

from doodle_rnn.errors import DoodleError

SMALL_JOB_DRAWINGS = 50_000  # at most this many drawings: one thread


def use_threads(requested: int | None, drawings: int) -> int:
    """Set torch's intra-op threads for a job over `drawings` drawings; returns the number set."""
    import torch

    if requested is not None and requested < 1:
        raise DoodleError(f"--num-threads must be at least 1, not {requested}")
    n = requested or (1 if drawings <= SMALL_JOB_DRAWINGS else torch.get_num_threads())
    torch.set_num_threads(n)
    return n
