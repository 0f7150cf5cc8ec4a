"""Read sketch-rnn `.npz` files without running anything in them.

A sketch-rnn `.npz` is a zip of `.npy` members (`train`, `valid`, `test`), each a 1-D object array whose
items are int16 stroke-3 arrays. numpy stores object arrays as a pickle, and `np.load(allow_pickle=True)`
would let that pickle call any function it names: a shared drawing set could run code on `doodle
prepare`. So this module never hands the pickle to numpy. Its unpickler knows exactly the globals a
pickled ndarray names (`_reconstruct`, `ndarray`, `dtype`; `_frombuffer` from protocol 5;
`_codecs.encode` for latin-1 bytes from protocol-2 writers), and each is a stand-in of ours that only
records its arguments: numpy's own `__setstate__` never sees the file's bytes. The arrays are then
rebuilt by hand from what was recorded, with `np.frombuffer` over an allow-listed numeric dtype, after
checking shapes and sizes. Every other global, and every other shape of data, is refused with a
`DataFormatError` that names the file, the member and what was refused. Members that are not object
arrays are read with `allow_pickle=False`. A file that is not a zip is refused too (`np.load` would
unpickle a bare pickle).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from doodle_rnn.data.formats import DataFormatError

# the only dtypes a stroke array may have: plain integers and floats of any byte order
_NUMERIC = {
    f"{k}{n}" for k, sizes in (("i", (1, 2, 4, 8)), ("u", (1, 2, 4, 8)), ("f", (2, 4, 8))) for n in sizes
}
_OBJECT = {"O", "O4", "O8"}
_BYTEORDERS = {"<", ">", "|", "="}
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}  # protocol 5


class _Refused(Exception):
    """The pickle asked for something a sketch-rnn file never holds (turned into a DataFormatError)."""


class _NdarrayMarker:
    """What `numpy.ndarray` unpickles to: a token `_reconstruct` checks for, not the class itself."""

    __slots__ = ()


_NDARRAY = _NdarrayMarker()


class _Recorded:
    """What `_reconstruct(...)` or `dtype(...)` unpickles to: the arguments and the state, nothing run."""

    __slots__ = ("kind", "args", "state")

    def __init__(self, kind: str, args: tuple) -> None:
        self.kind, self.args, self.state = kind, args, None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _reconstruct(cls: object, shape: object, typecode: object) -> _Recorded:
    if cls is not _NDARRAY:
        raise _Refused("_reconstruct of something other than numpy.ndarray")
    return _Recorded("array", ())


def _frombuffer(buf: object, dtype: object, shape: object, order: object) -> _Recorded:
    rec = _Recorded("array", ())
    rec.state = (shape, dtype, order == "F", bytes(buf) if isinstance(buf, bytearray) else buf)
    return rec


def _dtype(spec: object, align: object = False, copy: object = True) -> _Recorded:
    if not isinstance(spec, str):
        raise _Refused(f"a dtype spelled {type(spec).__name__}")
    return _Recorded("dtype", (spec,))


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles spell bytes; only latin-1, so no codec is looked up."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _StrokeUnpickler(pickle.Unpickler):
    """Knows only the globals a pickled numpy array names, and maps each to a harmless stand-in."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _RECONSTRUCT:
            return _reconstruct
        if (module, name) in _FROMBUFFER:
            return _frombuffer
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise _Refused(f"the global {module}.{name}")

    def persistent_load(self, pid: object) -> object:
        raise _Refused("a persistent id")


def _as_dtype(rec: object) -> np.dtype:
    """A fresh dtype from an allow-listed spelling; of the pickled state only the byte order is used."""
    if not isinstance(rec, _Recorded) or rec.kind != "dtype":
        raise _Refused("an array whose dtype is not a numpy dtype")
    (spec,) = rec.args
    state = rec.state if isinstance(rec.state, tuple) else ()
    order = state[1] if len(state) > 1 else "|"
    if order not in _BYTEORDERS:
        raise _Refused(f"the byte order {order!r}")
    if spec in _OBJECT:
        return np.dtype(object)
    if spec not in _NUMERIC:
        raise _Refused(f"the dtype {spec!r} (strokes are integers or floats)")
    return np.dtype(spec).newbyteorder(order if order in "<>" else "=")


def _array_state(rec: object) -> tuple[tuple[int, ...], np.dtype, bool, object]:
    """(shape, dtype, fortran_order, data) of a recorded ndarray, checked for type and size."""
    if not isinstance(rec, _Recorded) or rec.kind != "array":
        raise _Refused(f"a {type(rec).__name__} where a numpy array belongs")
    state = rec.state
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Refused("an array without the usual numpy state")
    shape, dtype_rec, fortran, data = state[-4:]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _Refused(f"an array shape {shape!r}")
    return shape, _as_dtype(dtype_rec), bool(fortran), data


def _numeric_array(rec: object) -> np.ndarray:
    shape, dtype, fortran, data = _array_state(rec)
    if dtype.hasobject:
        raise _Refused("an object array inside an object array")
    if isinstance(data, str):  # a Python 2 str read with encoding="latin1"
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
        raise _Refused(f"array data that does not fill its shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _object_array(rec: object, header_shape: tuple[int, ...]) -> list:
    """The items of a pickled 1-D object array: numeric arrays rebuilt, anything else left to the caller."""
    shape, dtype, _, data = _array_state(rec)
    if not dtype.hasobject or shape != header_shape or len(shape) != 1:
        raise _Refused(f"a pickle of shape {shape} and dtype {dtype} under a header of {header_shape}")
    if not isinstance(data, list) or len(data) != shape[0]:
        raise _Refused("object array data that is not a list of its length")
    return [_numeric_array(x) if isinstance(x, _Recorded) else x for x in data]


def _read_member(zf: zipfile.ZipFile, member: str) -> np.ndarray | list:
    with zf.open(member) as fp:
        version = npy_format.read_magic(fp)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version} in {member}")
        read_header = (
            npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        )
        shape, _, dtype = read_header(fp)
        if dtype.hasobject:
            if dtype != np.dtype(object):
                raise _Refused(f"a structured dtype with objects ({dtype})")
            return _object_array(_StrokeUnpickler(fp, encoding="latin1").load(), shape)
    with zf.open(member) as fp:
        return npy_format.read_array(fp, allow_pickle=False)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray | list]:
    """The members of `path` named in `keys` (those present), read without unpickling anything.

    Object members come back as lists (numeric arrays where the file held arrays); the rest as arrays.
    Raises DataFormatError naming the file for a file that is not a zip of .npy members, a damaged one,
    or one whose pickles ask for anything beyond numpy arrays.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[: -len(".npy")]: n for n in zf.namelist() if n.endswith(".npy")}
            present = [k for k in keys if k in names]
            if not present:
                raise DataFormatError(
                    f"{path}: a sketch-rnn .npz needs one of the arrays {', '.join(map(repr, keys))}; "
                    f"has {sorted(names)}"
                )
            out = {}
            for key in present:
                try:
                    out[key] = _read_member(zf, names[key])
                except _Refused as exc:
                    raise DataFormatError(
                        f"{path}: refused to read {names[key]}: its pickle asks for {exc}, and a sketch-rnn "
                        ".npz holds only numpy arrays of stroke-3 rows (nothing in the file was run)"
                    ) from None
            return out
    except DataFormatError:
        raise
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: not a sketch-rnn .npz: not a readable zip archive ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any damage (EOFError, zlib.error, ...) is one clear error
        raise DataFormatError(
            f"{path}: cannot read as a sketch-rnn .npz, it looks truncated or damaged "
            f"({type(exc).__name__}: {exc})"
        ) from None
