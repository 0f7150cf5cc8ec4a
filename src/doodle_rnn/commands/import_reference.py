"""`doodle import-reference`: convert a checkpoint of the reference trainer into a doodle-rnn one."""

from __future__ import annotations

import argparse

HELP = (
    "convert a reference-project checkpoint (model_state, class_to_idx, config) into a doodle-rnn checkpoint"
)
DESCRIPTION = (
    "Read a checkpoint saved by the reference trainer (a torch.save'd dict with model_state, class_to_idx, "
    "config and metrics; loaded with weights_only=True, so no code in it runs) and write a self-describing "
    "doodle-rnn checkpoint with the `reference` encoding and the length rules from its config."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="REF.pt", help="the reference project's checkpoint")
    p.add_argument("--out", required=True, metavar="CKPT.pt", help="doodle-rnn checkpoint to write")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from doodle_rnn.checkpoint import from_reference, save_checkpoint
    from doodle_rnn.cli import UserError

    src = Path(args.ref)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    try:
        ref = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged or unsafe file
        raise UserError(f"{src}: cannot read it safely ({type(exc).__name__}: {exc})") from exc
    ckpt = from_reference(ref, str(src))
    save_checkpoint(ckpt, args.out)
    m = ckpt["model_config"]
    print(
        f"wrote {args.out}: {len(ckpt['classes'])} classes, {m['num_layers']}x"
        f"{'bi-' if m['bidirectional'] else ''}{m['rnn'].upper()} {m['hidden_size']}, encoding reference, "
        f"length rules {ckpt['length_rules']}"
    )
    return 0
