"""The hidden work folder of `doodle prepare` (`.NAME.tmp` beside the cache): resume, lock, disk space.

Why a fixed name: a prepare that was killed (SIGKILL, power loss, Ctrl-C) leaves its finished shards
there, and rerunning the same command finds and reuses them instead of leaving an orphan behind. The
folder records the job (settings and each input's size and mtime); if they changed, the rerun starts
over in the same folder. Leftovers of older versions (`.NAME.tmp-XXXXXXXX`, `.NAME.old-XXXXXXXX`) are
removed. A running prepare holds an exclusive lock on the folder, so a second one on the same `--out`
stops with an error instead of deleting the first one's work.

Disk space: checked before encoding (an estimate from the input sizes) and again before the merge
(exact); a write that fails for lack of space anyway becomes one CacheError naming the folder and the
space needed, and the work folder is removed, so no partial cache is left.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

from doodle_rnn.data.formats import detect_format
from doodle_rnn.data.shards import ShardInfo, file_identity
from doodle_rnn.errors import DoodleError

# Cache bytes per input byte of ndjson or CSV text, measured on the real wide1k + wide5k-rest drawings
# (~420 bytes a line: 0.64) and rounded up; official lines, which also carry a timestamp and a country,
# come out lower. Gzip files are counted by the uncompressed size their trailer records.
CACHE_PER_TEXT_BYTE = 0.75
CACHE_PER_NPZ_BYTE = 1.2
SPILL_OVERHEAD = 1.15
FREE_BYTES_ENV = "DOODLE_PREPARE_FREE_BYTES"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WorkFolderError(DoodleError):
    pass


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def free_bytes(folder: Path) -> int:
    """Free bytes on `folder`'s file system. DOODLE_PREPARE_FREE_BYTES overrides the figure (for
    operators who must keep room for other work, and for testing the error path without a full disk)."""
    if os.environ.get(FREE_BYTES_ENV):
        return int(os.environ[FREE_BYTES_ENV])
    return shutil.disk_usage(folder).free


def check_space(folder: Path, need: float, what: str) -> None:
    free = free_bytes(folder)
    if need > free:
        raise WorkFolderError(
            f"{folder}: not enough free disk for {what}: it needs about {human_bytes(need)}, "
            f"{human_bytes(free)} is free; free some space or write --out on another disk"
        )


def estimate_cache_bytes(files: list[Path]) -> float:
    """Disk a prepare of these inputs needs at its peak, from the measured cache/text size ratio."""
    total = 0.0
    for f in files:
        if detect_format(f) == "npz":
            total += f.stat().st_size * CACHE_PER_NPZ_BYTE
        else:
            total += _text_bytes(f) * CACHE_PER_TEXT_BYTE
    return total * SPILL_OVERHEAD


def _text_bytes(path: Path) -> int:
    """Bytes of text in `path`: for gzip, the trailer's size (mod 4 GiB, so raised past the packed size)."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz") or size < 18:
        return size
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        text = int.from_bytes(fh.read(4), "little")
    while text < size:
        text += 1 << 32
    return text


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


class WorkFolder:
    """`.NAME.tmp` beside the cache `NAME`: shards in `shards/`, the cache's arrays at the top level."""

    def __init__(self, out: Path, job: dict):
        self.out = out
        self.path = out.parent / f".{out.name}.tmp"
        self.shards = self.path / "shards"
        self.job = job
        self._lock_fd: int | None = None
        self.notes: list[str] = []

    def open(self) -> None:
        """Lock the folder (creating it), clear leftovers, and start over if the job changed."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for old in [
            *self.out.parent.glob(f".{self.out.name}.tmp-*"),
            *self.out.parent.glob(f".{self.out.name}.old-*"),
        ]:
            shutil.rmtree(old, ignore_errors=True)
            self.notes.append(f"removed {old} left by an interrupted prepare")
        self.path.mkdir(exist_ok=True)
        self._lock()
        job_file = self.path / "job.json"
        try:
            same = json.loads(job_file.read_text()) == self.job
        except (OSError, ValueError):
            same = False
        if not same:
            if any(self.path.iterdir()):
                self.notes.append(
                    f"{self.path}: settings or inputs changed since the interrupted run; starting over"
                )
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            job_file.write_text(json.dumps(self.job))
        self.shards.mkdir(exist_ok=True)

    def _lock(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkFolderError(
                f"{self.path}: another `doodle prepare` is writing {self.out} right now; wait for it to "
                "finish or choose another --out"
            ) from None
        self._lock_fd = fd

    def finished_shards(self, files: list[Path]) -> dict[int, ShardInfo]:
        """Shards of an interrupted run that are complete and whose input file has not changed."""
        done = {}
        for i, f in enumerate(files):
            info = ShardInfo.load(self.shards / f"{shard_stem(i)}.json")
            if info is not None and info.path == str(f) and (info.size, info.mtime_ns) == file_identity(f):
                done[i] = info
        return done

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def commit(self) -> None:
        """Move the finished cache into place (replacing an older one) and drop the bookkeeping."""
        shutil.rmtree(self.shards, ignore_errors=True)
        (self.path / "job.json").unlink(missing_ok=True)
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            self.out.rename(old)
            self.path.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.path.rename(self.out)
        self.release()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def shard_stem(i: int) -> str:
    return f"{i:06d}"
