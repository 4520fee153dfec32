"""Checkpoints: one ``.npz`` file holding every array and a JSON description of the rest.

A training state is a nested structure of dicts, lists, numbers, strings, ``None``
and arrays, for example::

    {"iteration": 2000,
     "theta": {"fc1.W": array, ...},
     "alpha": 0.0113,                       # or {"fc1.W": 0.011, ...} per tensor
     "optimizer": {"beta": 0.0009, "m": {...}, "v": {...}, "t": 2000,
                   "prev_direction": {...} or None, "beta_clamps": 0},
     "sampler_state": {...}}

``save_checkpoint`` replaces each array by a reference ``{"__array__": "theta/fc1.W"}``
and stores it under that flattened key with ``np.savez``; the remaining structure
goes, as JSON, into the same file under the key ``__json__``. Python floats survive
JSON exactly (``repr`` round-trips), so a loaded state continues bit for bit.

The file is written atomically (numpy_amaml.files): a crash, a full disk or ``kill -9``
while saving leaves the previous checkpoint intact.
"""
import json
import os
import zipfile

import numpy as np

from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.files import atomic_write

JSON_KEY = "__json__"
ARRAY_TAG = "__array__"


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _split(value, key, arrays):
    """The JSON-able skeleton of ``value``; its arrays go into ``arrays`` by key."""
    if _is_array(value):
        arrays[key] = to_numpy(value)
        return {ARRAY_TAG: key}
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str) or "/" in name:
                raise ValueError(f"checkpoint keys must be strings without '/', got {name!r} in {key!r}")
        return {name: _split(item, f"{key}/{name}" if key else name, arrays) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(item, f"{key}/{i}", arrays) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {key!r} in a checkpoint")


def _join(skeleton, arrays):
    """Inverse of ``_split``: put the arrays back, on the active backend, dtype kept."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {ARRAY_TAG}:
            host = arrays[skeleton[ARRAY_TAG]]
            return asarray(host, dtype=host.dtype)
        return {name: _join(item, arrays) for name, item in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join(item, arrays) for item in skeleton]
    return skeleton


def save_checkpoint(path, state):
    """Write ``state`` (nested dicts/lists of arrays and JSON values) to ``path`` atomically."""
    arrays = {}
    skeleton = _split(state, "", arrays)
    with atomic_write(path) as f:
        np.savez(f, **arrays, **{JSON_KEY: np.array(json.dumps(skeleton))})


def load_checkpoint(path):
    """Read a state written by ``save_checkpoint``; arrays come back on the active backend."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable checkpoint (not an .npz archive: damaged or another file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({err})") from err
    if JSON_KEY not in arrays:
        raise ValueError(f"{path} is not a numpy_amaml checkpoint (no {JSON_KEY!r} entry)")
    return _join(json.loads(str(arrays.pop(JSON_KEY))), arrays)
