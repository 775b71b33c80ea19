"""Checkpoints: operator state, source offsets, string dictionaries and the sinks'
pending output, taken at batch boundaries and written atomically (DESIGN.md sections 5
and 11).

A checkpoint is a folder ``ckpt-<seq>`` holding ``meta.json`` (the pipeline, the plan's
fingerprint, each source's offset after the last batch the pipeline finished, each
sink's pending output, the checksum of the state) and ``state.arrow`` (one Arrow IPC
file: a one-row table whose columns are the state arrays, as lists, with their shapes in
the schema's metadata). It is written under a temporary name, flushed to disk (fsync)
and renamed into place, so a crash never leaves half a checkpoint; the two newest are
kept. On start the newest checkpoint that loads and matches its checksum is restored (a
damaged one is skipped, with a warning naming it, for the one before); one taken by a
different plan is refused, naming the steps that changed. The sources resume after the
checkpoint's offsets: the operators' state is exactly-once, and so is the output of the
sinks that commit with checkpoints (file sinks: see :mod:`gpustream.sinks.files`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from gpustream.errors import PlanError

__all__ = ["Checkpoint", "CheckpointStore", "Checkpointing", "Fingerprint",
           "RemoteCheckpointStore", "fsync_dir", "is_url"]

#: 2: plan fingerprint, sinks' pending output and the state's checksum in meta.json
FORMAT = 2
log = logging.getLogger("gpustream")


@dataclass(frozen=True)
class Fingerprint:
    """What a checkpoint's state depends on: one line per operator (its step, what it
    does, its output schema) and per sink (its kind). Two plans with equal lines read
    each other's checkpoints; ``changes`` names what differs.

    Examples
    --------
    >>> a = Fingerprint(("step 0 (source) 'e' [ts: int64]", "step 1 (window 'w') tumbling(10s)"))
    >>> b = Fingerprint(("step 0 (source) 'e' [ts: int64]", "step 1 (window 'w') tumbling(5s)"))
    >>> a.digest == b.digest, len(a.digest)
    (False, 64)
    >>> print(a.changes(b))
    - step 1 (window 'w') tumbling(10s)
    + step 1 (window 'w') tumbling(5s)
    """

    lines: tuple[str, ...]

    @property
    def digest(self) -> str:
        """SHA-256 of the lines, as hex."""
        return hashlib.sha256("\n".join(self.lines).encode()).hexdigest()

    def changes(self, now: Fingerprint) -> str:
        """The lines of this (the checkpoint's) plan and of ``now`` that differ."""
        old, new = set(self.lines), set(now.lines)
        return "\n".join([f"- {line}" for line in self.lines if line not in new]
                         + [f"+ {line}" for line in now.lines if line not in old])


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a folder's entries (files created, renamed or removed in it) durable.

    Examples
    --------
    >>> import tempfile
    >>> fsync_dir(tempfile.mkdtemp())
    """
    if os.name == "nt":  # pragma: no cover - Windows cannot open a folder for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _digest(meta: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's metadata, canonically encoded."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=_plain).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DamagedCheckpoint(Exception):
    """A checkpoint folder that cannot be read back (truncated, empty, bad JSON, checksum)."""


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
    #: the plan that took it (None: not recorded, a format-1 checkpoint)
    fingerprint: Fingerprint | None = None
    #: sink key -> what the sink's ``prepare`` returned (its pending output)
    sinks: dict[str, Any] = field(default_factory=dict)

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

    def __new__(cls, folder: str | os.PathLike[str], pipeline: str, keep: int = 2
                ) -> CheckpointStore:
        if cls is CheckpointStore and is_url(folder):  # an object store, through fsspec
            return super().__new__(RemoteCheckpointStore)
        return super().__new__(cls)

    def __init__(self, folder: str | os.PathLike[str], pipeline: str, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.pipeline = pipeline
        self.keep = keep

    def _complete(self) -> list[Path]:
        """Every checkpoint folder renamed into place (complete when written; one whose
        files were lost since then counts, and fails to load as damaged)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir()
                      if p.is_dir() and p.name.startswith("ckpt-") and not p.name.endswith(".tmp"))

    def latest(self, fingerprint: Fingerprint | None = None,
               upto: int | None = None) -> Checkpoint | None:
        """The newest checkpoint that loads intact (of those numbered ``upto`` or less,
        when given: a partitioned run restores the newest that every partition took), or
        None when there is none.

        A damaged checkpoint (truncated or empty state, unreadable ``meta.json``, a
        checksum that does not match) is skipped with a warning for the one before it;
        when checkpoints exist but none loads, that is an error (starting over would
        write the output again). A checkpoint of another pipeline, or of a different
        plan (``fingerprint``), is refused."""
        done = [p for p in self._complete()
                if upto is None or int(p.name[len("ckpt-"):]) <= upto]
        damaged: list[str] = []
        for path in reversed(done):
            try:
                ck = self._load(path)
            except DamagedCheckpoint as err:
                log.warning("checkpoint %s is damaged (%s); trying the one before it", path, err)
                damaged.append(f"{path.name}: {err}")
                continue
            if fingerprint is not None and ck.fingerprint is not None \
                    and ck.fingerprint.digest != fingerprint.digest:
                raise PlanError(
                    f"checkpoint {path} was taken by a different plan of pipeline "
                    f"{self.pipeline!r}; its state does not fit this one. What changed:\n"
                    f"{ck.fingerprint.changes(fingerprint)}\nTo start fresh, give another "
                    "checkpoint dir (or remove this one); to resume, run the plan that took "
                    "it.")
            if fingerprint is not None and ck.fingerprint is None:
                log.warning("checkpoint %s records no plan fingerprint (an older gpustream "
                            "wrote it): it is restored unchecked", path)
            return ck
        if damaged:
            raise PlanError(f"every checkpoint in {self.folder} is damaged ("
                            + "; ".join(damaged) + "); nothing can be restored. Move the "
                            "folder away to start over (the sinks' output would be written "
                            "again).")
        return None

    def _load(self, path: Path) -> Checkpoint:
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise DamagedCheckpoint(f"meta.json: {err}") from err
        meta = self._checked_meta(path, meta)
        state = path / "state.arrow"
        want = meta.get("checksums", {}).get("state.arrow")
        try:
            if want is not None and _sha256(state) != want:
                raise DamagedCheckpoint("state.arrow does not match its checksum")
            with pa.memory_map(str(state)) as m:
                table = pa.ipc.open_file(m).read_all()
        except (OSError, pa.ArrowException) as err:
            raise DamagedCheckpoint(f"state.arrow: {err}") from err
        return _decode(meta, table)

    def _checked_meta(self, path: Any, meta: Any) -> dict[str, Any]:
        """``meta.json``'s content, checked: a checkpoint's, intact, this pipeline's."""
        if not isinstance(meta, dict) or "seq" not in meta:
            raise DamagedCheckpoint("meta.json: meta.json holds no checkpoint")
        want_meta = meta.pop("meta_sha256", None)
        if want_meta is not None and _digest(meta) != want_meta:
            raise DamagedCheckpoint("meta.json does not match its checksum")
        if meta.get("pipeline") != self.pipeline:
            raise PlanError(f"checkpoint {path} belongs to pipeline {meta.get('pipeline')!r}, "
                            f"not {self.pipeline!r}; give this pipeline its own checkpoint dir")
        return meta

    def write(self, ck: Checkpoint) -> None:
        """Write ``ck`` atomically (temporary folder, then rename); keep the newest few."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"ckpt-{ck.seq:09d}"
        tmp = self.folder / f"ckpt-{ck.seq:09d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        table = _state_table(ck)
        with pa.OSFile(str(tmp / "state.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        _fsync_file(tmp / "state.arrow")
        (tmp / "meta.json").write_text(json.dumps(_meta(ck, _sha256(tmp / "state.arrow")),
                                                  default=_plain))
        _fsync_file(tmp / "meta.json")
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.folder)

    def seqs(self) -> list[int]:
        """The numbers of the checkpoints in the folder, oldest first.

        Examples
        --------
        >>> import tempfile
        >>> store = CheckpointStore(tempfile.mkdtemp(), "demo")
        >>> store.write(Checkpoint(3, "demo"))
        >>> store.seqs()
        [3]
        """
        return [int(p.name[len("ckpt-"):]) for p in self._complete()]

    def discard_after(self, seq: int) -> None:
        """Remove the checkpoints numbered above ``seq`` (a partition's that the other
        partitions did not take before a failure: the run resumes from ``seq``).

        Examples
        --------
        >>> import tempfile
        >>> store = CheckpointStore(tempfile.mkdtemp(), "demo")
        >>> for seq in (1, 2):
        ...     store.write(Checkpoint(seq, "demo"))
        >>> store.discard_after(1)
        >>> store.seqs()
        [1]
        """
        for path in self._complete():
            if int(path.name[len("ckpt-"):]) > seq:
                shutil.rmtree(path)
        if self.folder.is_dir():
            fsync_dir(self.folder)

    def prune(self) -> None:
        """Remove all but the newest ``keep`` checkpoints, and the temporary folders of
        checkpoints a run died writing."""
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.folder.glob("ckpt-*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)

    def lock(self) -> None:
        """Hold the folder for this process until :meth:`unlock` (or its end): a second
        run of the pipeline on the same folder would resume from the same checkpoint and
        write the same output. POSIX only (elsewhere a no-op)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        held = open(self.folder / ".lock", "a")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.close()
            raise PlanError(f"checkpoint dir {self.folder} is in use by another run of "
                            f"pipeline {self.pipeline!r}; stop that one first, or give this "
                            "run its own checkpoint dir") from None
        self._lock: IO[str] | None = held

    def unlock(self) -> None:
        """Let another run take the folder."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None


def _state_table(ck: Checkpoint) -> pa.Table:
    """The state arrays and dictionaries of ``ck`` as ``state.arrow``'s one-row table."""
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
    return table.replace_schema_metadata({"shapes": json.dumps(shapes)})


def _meta(ck: Checkpoint, state_sha256: str) -> dict[str, Any]:
    """``meta.json``'s content for ``ck``, its own checksum included."""
    meta = {"format": FORMAT, "seq": ck.seq, "pipeline": ck.pipeline, "offsets": ck.offsets,
            "dictionaries": sorted(ck.dictionaries),
            "fingerprint": None if ck.fingerprint is None else list(ck.fingerprint.lines),
            "sinks": ck.sinks, "checksums": {"state.arrow": state_sha256}}
    meta["meta_sha256"] = _digest(meta)
    return meta


def _decode(meta: dict[str, Any], table: pa.Table) -> Checkpoint:
    """A checkpoint from its checked ``meta.json`` and ``state.arrow``'s table."""
    arrays: dict[str, np.ndarray] = {}
    dicts: dict[str, pa.Array] = {}
    shapes = json.loads((table.schema.metadata or {}).get(b"shapes", b"{}"))
    for name in table.column_names:
        if not (pa.types.is_list(table[name].type)
                or pa.types.is_large_list(table[name].type)):
            continue  # the placeholder column of a checkpoint without state arrays
        values = table[name].combine_chunks()[0].values
        if name in meta["dictionaries"]:
            dicts[name] = values
        else:
            arr = values.to_numpy(zero_copy_only=False).copy()
            arrays[name] = arr.reshape(shapes[name]) if name in shapes else arr
    fp = meta.get("fingerprint")
    return Checkpoint(int(meta["seq"]), meta["pipeline"], meta["offsets"], arrays, dicts,
                      None if fp is None else Fingerprint(tuple(fp)), meta.get("sinks", {}))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"offset value {value!r} is not plain data")


def is_url(folder: str | os.PathLike[str]) -> bool:
    """True for a checkpoint dir given as a URL (``s3://bucket/ck``, ``gs://``,
    ``memory://``): an fsspec file system, not a local folder.

    Examples
    --------
    >>> is_url("s3://bucket/ck"), is_url("ck/"), is_url(Path("/tmp/ck"))
    (True, False, False)
    """
    return isinstance(folder, str) and "://" in folder


class RemoteCheckpointStore(CheckpointStore):
    """Checkpoints in an object store, through fsspec (``s3://``, ``gs://``, ``abfs://``
    with s3fs, gcsfs or adlfs installed; ``file://``, ``memory://``).

    An object store renames nothing atomically, so a checkpoint is complete once its
    ``meta.json`` exists: ``state.arrow`` is written first, then ``meta.json`` (which holds
    the state's checksum); a checkpoint folder without ``meta.json`` is one a run died
    writing, never restored, and removed by :meth:`prune`. Object stores lock nothing
    either: a second run on the same URL is not refused (one run per URL).

    Examples
    --------
    >>> import uuid
    >>> store = CheckpointStore(f"memory://gs-doc-{uuid.uuid4().hex}", "demo")
    >>> type(store).__name__
    'RemoteCheckpointStore'
    >>> store.write(Checkpoint(1, "demo", {"src": [0, 10]}, {"w/x": np.arange(3)}))
    >>> ck = store.latest()
    >>> ck.seq, ck.offsets, ck.state_of("w")["x"].tolist(), store.seqs()
    (1, {'src': [0, 10]}, [0, 1, 2], [1])
    """

    def __init__(self, folder: str | os.PathLike[str], pipeline: str, keep: int = 2) -> None:
        self.url = str(folder).rstrip("/")
        try:
            from fsspec.core import url_to_fs

            self.fs, self.root = url_to_fs(self.url)
        except (ImportError, ValueError) as err:  # fsspec, the store's package (s3fs,
            # gcsfs), or a protocol fsspec does not know
            raise PlanError(f"checkpoint dir {self.url} is a URL, read through fsspec: "
                            f"{err}; install it (pip install fsspec s3fs, or gcsfs, adlfs "
                            "for the store), or give a folder") from err
        self.folder = Path(self.root)  # (for messages)
        self.pipeline = pipeline
        self.keep = keep

    def _dirs(self) -> list[str]:
        """Every checkpoint folder, complete or not, oldest first."""
        try:
            found = self.fs.glob(f"{self.root}/ckpt-*")
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/") for p in found)

    def _complete(self) -> list[Path]:
        done = {str(p).rsplit("/", 2)[-2] for p in self.fs.glob(f"{self.root}/ckpt-*/meta.json")}
        return [Path(d) for d in self._dirs() if d.rsplit("/", 1)[-1] in done]

    def _load(self, path: Path) -> Checkpoint:
        where = path.as_posix()
        try:
            meta = json.loads(self.fs.cat_file(f"{where}/meta.json"))
        except (OSError, ValueError) as err:
            raise DamagedCheckpoint(f"meta.json: {err}") from err
        meta = self._checked_meta(f"{self.url}/{path.name}", meta)
        want = meta.get("checksums", {}).get("state.arrow")
        try:
            data = self.fs.cat_file(f"{where}/state.arrow")
            if want is not None and hashlib.sha256(data).hexdigest() != want:
                raise DamagedCheckpoint("state.arrow does not match its checksum")
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        except (OSError, pa.ArrowException) as err:
            raise DamagedCheckpoint(f"state.arrow: {err}") from err
        return _decode(meta, table)

    def write(self, ck: Checkpoint) -> None:
        """Write ``ck``: ``state.arrow``, then ``meta.json`` (which completes it)."""
        final = f"{self.root}/ckpt-{ck.seq:09d}"
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(final, exist_ok=True)  # (a local or mounted file system)
        table = _state_table(ck)
        out = pa.BufferOutputStream()
        with pa.ipc.new_file(out, table.schema) as w:
            w.write_table(table)
        state = out.getvalue().to_pybytes()
        self.fs.pipe_file(f"{final}/state.arrow", state)
        meta = _meta(ck, hashlib.sha256(state).hexdigest())
        self.fs.pipe_file(f"{final}/meta.json", json.dumps(meta, default=_plain).encode())

    def seqs(self) -> list[int]:
        return [int(p.name[len("ckpt-"):]) for p in self._complete()]

    def discard_after(self, seq: int) -> None:
        for d in self._dirs():
            if int(d.rsplit("/", 1)[-1][len("ckpt-"):]) > seq:
                self.fs.rm(d, recursive=True)

    def prune(self) -> None:
        complete = [p.as_posix() for p in self._complete()]
        keep = set(complete[-self.keep:])
        for d in self._dirs():  # older ones, and those a run died writing
            if d not in keep:
                self.fs.rm(d, recursive=True)

    def lock(self) -> None:
        """Nothing: an object store has no locks (one run per URL)."""

    def unlock(self) -> None:
        """Nothing to let go."""
