"""Checkpoints: operator state, source offsets and string dictionaries, taken at batch
boundaries and written atomically (DESIGN.md section 5).

A checkpoint is a folder ``ckpt-<seq>`` holding ``meta.json`` (the pipeline, each
source's offset after the last batch the pipeline finished, which operators have state)
and ``state.arrow`` (one Arrow IPC file: a one-row table whose columns are the state
arrays, as lists, with their shapes in the schema's metadata). It is written under a
temporary name and renamed into place, so a crash never leaves half a checkpoint; the
two newest are kept. On start, the newest complete checkpoint is restored and the
sources resume after their offsets: the operators' state is exactly-once. Sinks are
at-least-once for now: rows a sink took after the last checkpoint are written again
after a restart.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.errors import PlanError

__all__ = ["Checkpoint", "CheckpointStore", "Checkpointing"]

FORMAT = 1


@dataclass(frozen=True)
class Checkpointing:
    """When to checkpoint: every ``every_batches`` input batches and/or ``every_s``
    seconds, into ``dir``.

    Examples
    --------
    >>> Checkpointing("ck", every_batches=50).every_batches
    50
    >>> Checkpointing("ck")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: checkpoint: give every_batches= or every= (how often to take one)
    """

    dir: str | os.PathLike[str]
    every_batches: int | None = None
    every_s: float | None = None

    def __post_init__(self) -> None:
        if self.every_batches is None and self.every_s is None:
            raise PlanError("checkpoint: give every_batches= or every= (how often to take one)")
        if self.every_batches is not None and self.every_batches < 1:
            raise PlanError(f"checkpoint: every_batches must be >= 1, got {self.every_batches}")
        if self.every_s is not None and self.every_s <= 0:
            raise PlanError(f"checkpoint: every must be > 0, got {self.every_s} s")


@dataclass
class Checkpoint:
    """What a checkpoint holds: per-source offsets and state, per-operator state."""

    seq: int
    pipeline: str
    offsets: dict[str, Any] = field(default_factory=dict)
    #: "<owner>/<key>" -> host array
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: "<owner>/<key>" -> Arrow array (string dictionaries)
    dictionaries: dict[str, pa.Array] = field(default_factory=dict)

    def state_of(self, owner: str) -> dict[str, np.ndarray]:
        """The arrays that ``owner`` (an operator's id) saved."""
        prefix = owner + "/"
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}


class CheckpointStore:
    """Reads and writes the checkpoints of one pipeline in a folder.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), "demo")
    >>> store.latest() is None
    True
    >>> store.write(Checkpoint(1, "demo", {"src": [0, 10]}, {"w/x": np.arange(3)},
    ...                        {"src/s": pa.array(["a", "b"], pa.large_string())}))
    >>> ck = store.latest()
    >>> ck.seq, ck.offsets, ck.state_of("w")["x"].tolist(), ck.dictionaries["src/s"].to_pylist()
    (1, {'src': [0, 10]}, [0, 1, 2], ['a', 'b'])
    """

    def __init__(self, folder: str | os.PathLike[str], pipeline: str, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.pipeline = pipeline
        self.keep = keep

    def _complete(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir()
                      if p.is_dir() and p.name.startswith("ckpt-") and (p / "meta.json").exists()
                      and not p.name.endswith(".tmp"))

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None."""
        done = self._complete()
        if not done:
            return None
        path = done[-1]
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("pipeline") != self.pipeline:
            raise PlanError(f"checkpoint {path} belongs to pipeline {meta.get('pipeline')!r}, "
                            f"not {self.pipeline!r}; give this pipeline its own checkpoint dir")
        with pa.memory_map(str(path / "state.arrow")) as m:
            table = pa.ipc.open_file(m).read_all()
        arrays: dict[str, np.ndarray] = {}
        dicts: dict[str, pa.Array] = {}
        shapes = json.loads((table.schema.metadata or {}).get(b"shapes", b"{}"))
        for name in table.column_names:
            values = table[name].combine_chunks()[0].values
            if name in meta["dictionaries"]:
                dicts[name] = values
            else:
                arr = values.to_numpy(zero_copy_only=False).copy()
                arrays[name] = arr.reshape(shapes[name]) if name in shapes else arr
        return Checkpoint(int(meta["seq"]), meta["pipeline"], meta["offsets"], arrays, dicts)

    def write(self, ck: Checkpoint) -> None:
        """Write ``ck`` atomically (temporary folder, then rename); keep the newest few."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"ckpt-{ck.seq:09d}"
        tmp = self.folder / f"ckpt-{ck.seq:09d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        columns: dict[str, pa.Array] = {}
        shapes: dict[str, list[int]] = {}
        for name, arr in ck.arrays.items():
            arr = np.asarray(arr)
            if arr.ndim != 1:
                shapes[name] = list(arr.shape)
            flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
            columns[name] = pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat)
        for name, values in ck.dictionaries.items():
            columns[name] = pa.LargeListArray.from_arrays(pa.array([0, len(values)], pa.int64()),
                                                          values)
        table = pa.table(columns) if columns else pa.table({"_": pa.array([0])})
        table = table.replace_schema_metadata({"shapes": json.dumps(shapes)})
        with pa.OSFile(str(tmp / "state.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        meta = {"format": FORMAT, "seq": ck.seq, "pipeline": ck.pipeline, "offsets": ck.offsets,
                "dictionaries": sorted(ck.dictionaries)}
        (tmp / "meta.json").write_text(json.dumps(meta, default=_plain))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"offset value {value!r} is not plain data")
