"""sketch-rnn `.npz` files are read without unpickling: real layouts read, hostile or broken ones are refused."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from doodle_rnn.data.formats import DataFormatError, SkipReport, _stroke3_to_strokes, iter_drawings

A = np.array([[5, 5, 0], [10, 0, 0], [0, 10, 1], [-20, 0, 0], [5, 5, 1]], dtype=np.int16)
B = np.array([[1, 1, 0], [2, 2, 1]], dtype=np.int16)


def _objects(*items: object) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = x
    return out


def _sketchrnn(path: Path, compressed: bool = False) -> Path:
    """The layout of the published sketch-rnn files: int16 stroke-3 arrays in object arrays per split."""
    arrays = {"train": _objects(A, B, A[:3]), "valid": _objects(B), "test": _objects(A)}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _strokes(items: Iterable[np.ndarray]) -> list:
    return [_stroke3_to_strokes(a) for a in items]


def _trusted(path: Path, keys: tuple[str, ...] = ("train", "valid", "test")) -> list:
    """The strokes numpy's own unpickling reads (only ever for files this test wrote itself)."""
    with np.load(path, allow_pickle=True, encoding="latin1") as z:
        return [s for k in keys for s in _strokes(z[k])]


def _npy_with_pickle(payload: bytes, shape: tuple[int, ...]) -> bytes:
    """A .npy member whose header says object array and whose body is `payload` (any pickle)."""
    fp = io.BytesIO()
    npy_format.write_array_header_1_0(fp, {"descr": "|O", "fortran_order": False, "shape": shape})
    return fp.getvalue() + payload


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_sketchrnn_layout_reads_as_numpy_would(tmp_path: Path, compressed: bool) -> None:
    path = _sketchrnn(tmp_path / "cat.npz", compressed)
    got = list(iter_drawings(path))
    assert [d.strokes for d in got] == _trusted(path)
    assert [d.key_id for d in got] == [
        "cat/train/0",
        "cat/train/1",
        "cat/train/2",
        "cat/valid/0",
        "cat/test/0",
    ]
    assert got[0].strokes == [[[5.0, 15.0, 15.0], [5.0, 5.0, 15.0]], [[-5.0, 0.0], [15.0, 20.0]]]


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_every_pickle_protocol_and_byte_order_reads(tmp_path: Path, protocol: int) -> None:
    items = _objects(A.astype(">i2"), np.asfortranarray(B.astype(np.float32)), A.astype(np.uint8) % 2)
    path = _npz(
        tmp_path / "dog.npz", {"train": _npy_with_pickle(pickle.dumps(items, protocol=protocol), (3,))}
    )
    assert [d.strokes for d in iter_drawings(path)] == _strokes(items) == _trusted(path, ("train",))


def _py2_pickle(arrays: list[np.ndarray]) -> bytes:
    """An object array pickled as Python 2's numpy wrote it: GLOBAL opcodes, byte strings as `str`."""

    def s(text: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING: a Python 2 str
        return (b"U" + bytes([len(text)]) if len(text) < 256 else b"T" + struct.pack("<i", len(text))) + text

    def dtype(spec: bytes, order: bytes, flags: int) -> bytes:
        head = b"cnumpy\ndtype\n" + s(spec) + b"K\x00K\x01\x87R"
        return (
            head + b"(K\x03" + s(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"tb"
        )

    def reconstruct() -> bytes:
        return b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"

    out = b"\x80\x02" + reconstruct() + b"(K\x01J" + struct.pack("<i", len(arrays)) + b"\x85"
    out += dtype(b"O8", b"|", 63) + b"\x89]("
    for a in arrays:
        out += (
            reconstruct()
            + b"(K\x01J"
            + struct.pack("<i", len(a))
            + b"K\x03\x86"
            + dtype(b"i2", b"<", 0)
            + b"\x89"
        )
        out += s(a.astype("<i2").tobytes()) + b"tb"
    return out + b"etb."


def test_python2_era_pickles_read(tmp_path: Path) -> None:
    payload = _py2_pickle([A, B])
    path = _npz(tmp_path / "owl.npz", {"train": _npy_with_pickle(payload, (2,))})
    # numpy itself reads this hand-made pickle the same way
    assert [d.strokes for d in iter_drawings(path)] == _strokes([A, B]) == _trusted(path, ("train",))


class _Touch:
    """Unpickling this creates a file: the simplest proof that a pickle ran code."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _System:
    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("evil", [_Touch, _System])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path: Path, evil: type) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "cat.npz"
    np.savez(path, train=_objects(A, evil(target)))
    with pytest.raises(DataFormatError) as info:
        list(iter_drawings(path))
    msg = str(info.value)
    assert str(path) in msg and "train.npy" in msg and "refused" in msg
    func = open if evil is _Touch else os.system
    assert f"the global {func.__module__}.{func.__name__}" in msg
    assert not target.exists()
    if evil is _Touch:  # the file is truly hostile: numpy's own unpickling runs it
        with np.load(path, allow_pickle=True) as z:
            z["train"]
        assert target.exists()


def test_hostile_pickles_in_every_place_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    cases = {
        "whole member": pickle.dumps(_Touch(target)),
        "array subclass": pickle.dumps(_objects(np.ma.masked_array(A))),
        "nested object array": pickle.dumps(_objects(_objects(A))),
        "dtype global": pickle.dumps(_objects(np.array([[1, 2, 3]], dtype="datetime64[s]"))),
    }
    for what, payload in cases.items():
        path = _npz(tmp_path / "cat.npz", {"train": _npy_with_pickle(payload, (1,))})
        with pytest.raises(DataFormatError, match=r"cat\.npz: refused to read train\.npy"):
            list(iter_drawings(path))
        assert not target.exists(), what


def test_a_bare_pickle_named_npz_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    # np.load(allow_pickle=True) unpickles a file that is neither zip nor .npy: this reader never does
    target = tmp_path / "pwned"
    path = tmp_path / "cat.npz"
    path.write_bytes(pickle.dumps(_Touch(target)))
    with pytest.raises(DataFormatError, match=r"cat\.npz: not a sketch-rnn \.npz: not a readable zip"):
        list(iter_drawings(path))
    assert not target.exists()


def test_truncated_or_not_zip_is_one_clear_error(tmp_path: Path) -> None:
    whole = _sketchrnn(tmp_path / "whole.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.npz: not a sketch-rnn \.npz"):
        list(iter_drawings(cut))
    text = tmp_path / "text.npz"
    text.write_text("train,valid\n1,2\n")
    with pytest.raises(DataFormatError, match=r"text\.npz: not a sketch-rnn \.npz"):
        list(iter_drawings(text))
    # a zip whose member pickle stops half way
    payload = pickle.dumps(_objects(A, B))
    short = _npz(tmp_path / "short.npz", {"train": _npy_with_pickle(payload[: len(payload) // 2], (2,))})
    with pytest.raises(DataFormatError, match=r"short\.npz: cannot read .* truncated or damaged"):
        list(iter_drawings(short))
    empty = _npz(tmp_path / "empty.npz", {"other": b""})
    with pytest.raises(DataFormatError, match=r"empty\.npz: .* needs one of the arrays 'train'"):
        list(iter_drawings(empty))


def test_bad_items_are_skipped_and_counted(tmp_path: Path) -> None:
    items = _objects(A, A[:, :2], np.array([[1.0, np.nan, 0]]), [[1, 2, 0]], "abc", A.astype(np.float64))
    path = tmp_path / "cow.npz"
    np.savez(path, train=items)
    rep = SkipReport()
    got = list(iter_drawings(path, report=rep))
    assert [d.key_id for d in got] == ["cow/train/0", "cow/train/3", "cow/train/5"]
    assert rep.total == 3 and rep.examples[str(path)][0].endswith(
        "train[1]: not a finite (n, 3) stroke-3 array of numbers"
    )


def test_cli_prints_one_line_error_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "cat.npz"
    np.savez(evil, train=_objects(A, _Touch(target)))
    cut = tmp_path / "dog.npz"
    cut.write_bytes(_sketchrnn(tmp_path / "whole.npz").read_bytes()[:100])
    for bad in (evil, cut):
        r = subprocess.run(
            [sys.executable, "-m", "doodle_rnn", "prepare", "--data", str(bad), "--out", str(tmp_path / "c")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), r.stderr
    assert not target.exists()
    assert not (tmp_path / "c").exists()
