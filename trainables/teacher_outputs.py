"""A teacher's cached outputs: the frozen teacher's named arrays on the training split, stored
once per view under ``<teacher>/outputs/<key>.npz`` and shared by every student trial (see
``TrialContext.teacher_arrays``)."""

from __future__ import annotations

import io
import uuid

import numpy as np

from cxrkd.trainables import storage


def outputs_uri(teacher_uri: str, view_key: str) -> str:
    return storage.join(teacher_uri, "outputs", f"{view_key}.npz")


def load_outputs(teacher_uri: str, view_key: str) -> dict[str, np.ndarray] | None:
    """The named arrays stored under ``view_key``, or None when they were never computed."""
    uri = outputs_uri(teacher_uri, view_key)
    if not storage.exists(uri):
        return None
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        raw = io.BytesIO(f.read())
    with np.load(raw, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def save_outputs(teacher_uri: str, view_key: str, outputs: dict[str, np.ndarray]) -> None:
    """Store named arrays (any dtype: float16 features stay float16) as one ``.npz``; written
    to a temporary name and moved, so a reader never sees half a file."""
    if not outputs:
        raise ValueError(f"no arrays to store under {view_key!r}")
    buf = io.BytesIO()
    np.savez(buf, **outputs)
    fs, path = storage.filesystem(outputs_uri(teacher_uri, view_key))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # unique: two writers never share a temporary
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getbuffer())  # no second copy of a large cache
    fs.move(tmp, path)
