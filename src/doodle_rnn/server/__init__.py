"""The HTTP server (FastAPI app in `app.py`) and the drawing page (`static/`)."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy: importing the package must not pull FastAPI or the model in.
    if name == "create_app":
        from doodle_rnn.server.app import create_app

        return create_app
    raise AttributeError(name)
