"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

Layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type byte (0x08 = unsigned byte, the only type read here), a byte ``ndim``, then
``ndim`` uint32 sizes, then ``prod(sizes)`` uint8 values in C order.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from baselines.errors import DataError

UBYTE = 0x08


def parse_idx(raw: bytes, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array of the header's shape (read-only view of ``raw``).

    Raises DataError naming ``name`` when the magic, type, rank or data length is wrong.
    """
    def bad(why: str) -> DataError:
        return DataError(f"{name}: not a valid IDX uint8 file ({why}). The file is corrupt or "
                         "truncated: delete it and get it again.")

    if len(raw) < 4:
        raise bad(f"only {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise bad(f"magic number starts with {raw[0]:#04x} {raw[1]:#04x}, expected 0x00 0x00")
    if raw[2] != UBYTE:
        raise bad(f"type byte {raw[2]:#04x}, expected {UBYTE:#04x} (unsigned byte)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise bad(f"{nd} dimensions, expected {ndim}")
    head = 4 + 4 * nd
    if len(raw) < head:
        raise bad(f"header needs {head} bytes, file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    n = int(np.prod(shape, dtype=np.int64))
    if len(raw) - head != n:
        raise bad(f"header says shape {shape} = {n} values, file holds {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` decompressed on the fly); DataError names the file if corrupt."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}). The file is corrupt or "
                        "truncated: delete it and get it again.") from exc
    return parse_idx(raw, str(path), ndim)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip-compressed if ``path`` ends in .gz); for tests and tools."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, UBYTE, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + a.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
