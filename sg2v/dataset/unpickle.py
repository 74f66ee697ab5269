"""A restricted unpickler for data sets that ship Python pickles (Action Genome): data in, never code.

A pickle can name any importable callable and call it while loading (`__reduce__`), so `pickle.load` on a
downloaded file runs whatever its author chose. This unpickler resolves only the globals that plain data needs
- NumPy's array and scalar reconstruction (`numpy.core.multiarray._reconstruct` / `scalar` and their NumPy 2
names under `numpy._core`, `numpy.ndarray`, `numpy.dtype`, the protocol-5 `_frombuffer`), the builtin `set` /
`frozenset`, and `_codecs.encode` restricted to latin-1 (protocol 2 writes byte strings, such as an array's
raw data, as that call) - and refuses every other global in one line. Containers, strings, numbers, None and
booleans need no global at all. Python 2 pickles' byte strings are read as latin-1 (NumPy's advice for arrays
pickled by Python 2).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from sg2v.errors import DatasetError
from sg2v.safety import open_input

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("_codecs", "encode"),
})
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")
MAX_PICKLE_BYTES = 8 << 30


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ALLOWED_GLOBALS."""


class DataUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only ALLOWED_GLOBALS (see the module note)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        import importlib

        if module.startswith("numpy.core."):  # NumPy 2 keeps these under numpy._core; the old name warns
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core."):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module("builtins" if module == "__builtin__" else module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not data")


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for byte strings, and for nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError("_codecs.encode is admitted only to rebuild byte strings (latin-1)")
    return text.encode("latin1")


def loads_data(data: bytes) -> Any:
    """Unpickle bytes with DataUnpickler (RefusedGlobal / UnpicklingError on anything but data)."""
    return DataUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_data_pickle(path: str | os.PathLike[str], what: str = "annotation pickle") -> Any:
    """Load a pickle file that should hold only data, or raise a one-line DatasetError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DatasetError(f"{path}: {what} not found ({e.strerror or e}); check the path") from None
    if size > MAX_PICKLE_BYTES:
        raise DatasetError(f"{path}: {size} bytes, more than the {MAX_PICKLE_BYTES} an {what} may have; is "
                           "it the right file?")
    try:
        with open_input(path) as f:
            return DataUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise DatasetError(f"{path}: refused to load: the pickle calls {e}, which is code, not data (only "
                           "builtin containers and NumPy arrays are admitted); replace the file with the "
                           "data set's original") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: not a readable {what} ({type(e).__name__}: {why}); the file is "
                           "truncated or damaged, download it again") from None
