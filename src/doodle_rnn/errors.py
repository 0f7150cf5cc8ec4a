"""`DoodleError`: the one base of every error a user can fix (bad flag, missing file, bad data).

Each part of the library raises its own subclass (CacheError, TrainError, EvalError, ...), with a
message that says what was wrong, where, and what to do. `doodle` maps the base once (cli.py): the
message is printed as `error: ...` without a traceback and the exit status is 2. It is a ValueError,
so callers that caught ValueError before keep working.
"""

from __future__ import annotations


class DoodleError(ValueError):
    """A problem the user can fix; its message is meant to be shown as it is."""
