"""File sinks: ``gs.to_parquet``, ``gs.to_csv``, ``gs.to_jsonl``.

A path that ends with the format's suffix is one file. Any other path is a folder of
part files. Rows are written to hidden in-progress files (``.part-….parquet.inprogress``,
which folder readers such as ``pyarrow.parquet.read_table`` and ``gs.read_parquet`` skip)
and become visible by an atomic rename once complete; a sink never writes through a
symlink planted at its paths (files are created exclusively, links replaced, not followed).

Without checkpoints, a folder's part file is committed after ``rows_per_file`` rows and
at the end of the run (``part-00000.parquet``, … never overwriting an earlier run's
parts). A single file appears when the run ends; ``mode`` says what to do when it exists:
``"error"`` (the default: refuse, before anything runs), ``"overwrite"`` or ``"append"``.

With checkpoints, output is exactly-once (a two-phase commit, as Flink's FileSink):
part files roll at ``rows_per_file`` rows and at each checkpoint; at a checkpoint they are
flushed to disk (fsync) and recorded in it, and renamed into place
(``part-<lineage>-<checkpoint>-<n>.parquet``) once the checkpoint is on disk. A restart
commits what its checkpoint recorded, discards in-progress files written after it, and sets
aside (``….superseded``, hidden) files committed under a newer checkpoint that was lost,
so every row is in exactly one visible file. A single file is then assembled, when the
run ends, from the committed segments kept in the hidden folder ``.<name>.segments``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gpustream.errors import PlanError
from gpustream.jsontext import json_lines
from gpustream.runtime.checkpoint import fsync_dir
from gpustream.sinks.base import Sink

__all__ = ["FileSink", "to_csv", "to_jsonl", "to_parquet"]

log = logging.getLogger("gpustream")
MODES = ("error", "overwrite", "append")
_INPROGRESS = ".inprogress"
_SUPERSEDED = ".superseded"


def _create(path: Path) -> IO[bytes]:
    """A new file at ``path``, never through a symlink: whatever is there is removed
    (the link itself, not its target) and the file created exclusively."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_BINARY", 0)
    return os.fdopen(os.open(path, flags, 0o644), "wb")


class FileSink(Sink):
    """Writes batches to one file or to part files in a folder (see the module docstring)."""

    suffix = ""
    kind = "file"

    def __init__(self, path: str | os.PathLike[str], rows_per_file: int = 1_000_000,
                 mode: str = "error") -> None:
        if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) \
                or rows_per_file < 1:
            raise ValueError(f"to_{self.kind}: rows_per_file must be >= 1, got {rows_per_file}")
        if mode not in MODES:
            raise ValueError(f"to_{self.kind}: mode={mode!r} is not one of "
                             f"{', '.join(MODES)}")
        self.path = Path(path)
        self.single = self.path.suffix == self.suffix
        self.rows_per_file = rows_per_file
        self.mode = mode
        self.part = 0
        self.rows_in_file = 0
        #: the files this sink made visible in this run
        self.files: list[Path] = []
        self.name = f"{self.kind} {self.path}{'' if self.single else '/'}"
        self._file: IO[bytes] | None = None
        self._open_path: Path | None = None
        #: checkpointed runs: files closed but not yet committed, and those of the
        #: checkpoint being taken (in-progress path, final path)
        self._closed: list[Path] = []
        self._pending: list[tuple[Path, Path]] = []
        self._lineage: str | None = None
        self._token = uuid.uuid4().hex[:8]

    # -- where rows go ---------------------------------------------------------------
    @property
    def _folder(self) -> Path:
        """The folder part files go to: the path, or a single file's segments folder."""
        if not self.single:
            return self.path
        return self.path.with_name(f".{self.path.name}.segments")

    @property
    def checkpointed(self) -> bool:
        """True once a checkpointed run restored this sink (two-phase commit on)."""
        return self._lineage is not None

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.single:
            self.path.mkdir(parents=True, exist_ok=True)
        elif self.mode == "error" and self.path.exists() and not (
                self.checkpointed_run and self._folder.is_dir()):
            raise PlanError(f"to_{self.kind}: {self.path} exists; give mode='overwrite' "
                            "or mode='append' (spec: mode:), or another path")

    def _new_inprogress(self) -> Path:
        if self.single and not self.checkpointed:
            return self.path.with_name(f".{self.path.name}.{self._token}{_INPROGRESS}")
        self.part += 1
        # checkpointed: named by lineage, so that a restart discards only its own
        return self._folder / (f".part-{self._lineage}-{self._token}-{self.part:05d}"
                               f"{self.suffix}{_INPROGRESS}")

    def write(self, batch: pa.RecordBatch) -> None:
        start = 0
        while start < batch.num_rows:
            if self._file is None:
                self._open_path = self._new_inprogress()
                self._file = _create(self._open_path)
                self._begin(self._file)
            take = batch.num_rows - start if self.single and not self.checkpointed else \
                min(batch.num_rows - start, self.rows_per_file - self.rows_in_file)
            self._write(batch.slice(start, take))
            start += take
            self.rows_in_file += take
            if self.rows_in_file >= self.rows_per_file and not (
                    self.single and not self.checkpointed):
                self._close_file()

    def _close_file(self) -> Path | None:
        """End the open file (durably); None when none was open."""
        if self._file is None:
            return None
        self._end()
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        done, self._file, self._open_path = self._open_path, None, None
        self.rows_in_file = 0
        assert done is not None
        if self.checkpointed:
            self._closed.append(done)
        else:
            self._publish(done)
        return done

    def _publish(self, done: Path) -> None:
        """Runs without checkpoints: make a finished file visible now."""
        if self.single:
            if self.mode == "append" and self.path.exists():
                self._concat([self.path, done], done.with_name(done.name + ".all"))
                done.unlink()
                done = done.with_name(done.name + ".all")
            os.replace(done, self.path)
            self.files.append(self.path)
        else:
            self.files.append(self._publish_part(done))
        fsync_dir(self.path.parent if self.single else self.path)

    def _publish_part(self, done: Path) -> Path:
        """Rename ``done`` to the first free ``part-NNNNN`` name, never over another
        file (a hard link fails where the name is taken, even by a concurrent run)."""
        n = 0
        while True:
            final = self.path / f"part-{n:05d}{self.suffix}"
            if not (final.exists() or final.is_symlink()):
                try:
                    os.link(done, final)
                except FileExistsError:
                    pass  # taken meanwhile: try the next name
                except OSError:  # pragma: no cover - a file system without hard links
                    os.replace(done, final)
                    return final
                else:
                    done.unlink()
                    return final
            n += 1  # never overwrite the parts of an earlier run

    def close(self) -> None:
        if not self.checkpointed:
            self._close_file()
            return
        # checkpointed: what was written after the last checkpoint is not committed; it
        # stays in progress and the next run (from that checkpoint) discards it
        if self._file is not None:
            self._end()
            if not self._file.closed:
                self._file.close()
            self._file = None
        if self.single:
            self._assemble()

    def for_partition(self, index: int) -> None:
        """Partition ``index``'s copy names its files in progress apart from the others'
        (the folder is shared; committed names are unique by lineage or by hard link)."""
        self._token = f"{uuid.uuid4().hex[:8]}"

    # -- two-phase commit (checkpointed runs) ---------------------------------------
    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        folder = self._folder
        folder.mkdir(parents=True, exist_ok=True)
        if state and state.get("lineage"):
            self._lineage = str(state["lineage"])
            for inprogress, final in state.get("pending", []):  # its commit may not
                src, dst = folder / inprogress, folder / final  # have happened
                if src.exists():
                    os.replace(src, dst)
                elif not dst.exists():
                    raise PlanError(
                        f"to_{self.kind}: checkpoint {seq} recorded {src} as written, but "
                        f"neither it nor {dst.name} is in {folder}; its rows are lost to this "
                        "folder (was it moved, or cleaned by another program?). Restore the "
                        "folder, or start over with another checkpoint dir and output path.")
            self._set_aside_newer(seq)
        else:
            self._lineage = uuid.uuid4().hex[:8]
            if self.single and self.path.exists():
                if self.mode == "error":
                    raise PlanError(f"to_{self.kind}: {self.path} exists and no checkpoint "
                                    "says this sink wrote it; give mode='overwrite' or "
                                    "mode='append' (spec: mode:), or another path")
                if self.mode == "append":  # the old content is the first segment
                    first = self._final(0, 0)
                    shutil.copyfile(self.path, first)
                    with open(first, "rb+") as copied:
                        os.fsync(copied.fileno())
        mine = f".part-{self._lineage}-"
        for f in folder.iterdir():  # what runs of this lineage that died left in progress
            if f.name.startswith(mine) and f.name.endswith(_INPROGRESS):
                f.unlink()
        fsync_dir(folder)

    def _final(self, seq: int, n: int) -> Path:
        return self._folder / f"part-{self._lineage}-{seq:09d}-{n:05d}{self.suffix}"

    def _committed(self) -> list[tuple[int, int, Path]]:
        """This lineage's committed files: (checkpoint, part number, path), in order."""
        pattern = re.compile(rf"part-{self._lineage}-(\d+)-(\d+){re.escape(self.suffix)}$")
        found = [(m, f) for f in self._folder.iterdir() if (m := pattern.match(f.name))]
        return sorted((int(m.group(1)), int(m.group(2)), f) for m, f in found)

    def _set_aside_newer(self, seq: int) -> None:
        for done, _, f in self._committed():
            if done > seq:
                aside = f.with_name(f".{f.name}{_SUPERSEDED}")
                log.warning("%s was committed under a checkpoint newer than %d, which was "
                            "lost; its rows are written again, so it is set aside as %s",
                            f, seq, aside.name)
                os.replace(f, aside)

    def prepare(self, seq: int) -> dict[str, Any]:
        self._close_file()
        self._pending = [(p, self._final(seq, n)) for n, p in enumerate(self._closed)]
        self._closed = []
        fsync_dir(self._folder)
        return {"lineage": self._lineage,
                "pending": [[a.name, b.name] for a, b in self._pending]}

    def commit(self, seq: int) -> None:
        for inprogress, final in self._pending:
            os.replace(inprogress, final)
            self.files.append(final)
        self._pending = []
        fsync_dir(self._folder)

    def _assemble(self) -> None:
        """A single file from its committed segments, replaced atomically."""
        parts = [f for _, _, f in self._committed()]
        tmp = self.path.with_name(f".{self.path.name}.{self._token}{_INPROGRESS}")
        self._concat(parts, tmp)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        if self.path not in self.files:
            self.files.append(self.path)

    def _concat(self, parts: list[Path], out: Path) -> None:
        """Write the rows of ``parts``, in order, as one file at ``out`` (text formats
        byte for byte, a CSV's header once)."""
        with _create(out) as f:
            if self.kind == "parquet":
                self._begin(f)
                for part in parts:
                    for batch in pq.read_table(part).to_batches():
                        self._write(batch)
                self._end()
            else:
                for i, part in enumerate(parts):
                    with open(part, "rb") as src:
                        if i and self.kind == "csv":
                            src.readline()  # the header, written once
                        shutil.copyfileobj(src, f)
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())

    # format hooks
    def _begin(self, file: IO[bytes]) -> None:
        raise NotImplementedError

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError


class ParquetSink(FileSink):
    """Parquet files (one row group per batch written)."""

    suffix = ".parquet"
    kind = "parquet"

    def _begin(self, file: IO[bytes]) -> None:
        self._writer = pq.ParquetWriter(file, self.schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _end(self) -> None:
        self._writer.close()


class CsvSink(FileSink):
    """CSV files with a header line."""

    suffix = ".csv"
    kind = "csv"

    def _begin(self, file: IO[bytes]) -> None:
        self._writer = pacsv.CSVWriter(file, self.schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _end(self) -> None:
        self._writer.close()


class JsonlSink(FileSink):
    """Newline-delimited JSON objects; timestamps as ISO 8601 text."""

    suffix = ".jsonl"
    kind = "jsonl"

    def _begin(self, file: IO[bytes]) -> None:
        self._out = file

    def _write(self, batch: pa.RecordBatch) -> None:
        self._out.write(json_lines(batch).encode("utf-8"))
        self._out.flush()

    def _end(self) -> None:
        self._out.flush()


def _partitioned(cls: type[FileSink], path: str | os.PathLike[str], rows_per_file: int,
                 partition_by: list[str]) -> Sink:
    """A folder of Hive-style partition folders (:mod:`gpustream.sinks.partitioned`)."""
    from gpustream.sinks.partitioned import PartitionedSink

    return PartitionedSink(lambda folder: cls(folder, rows_per_file), path,
                           tuple(partition_by), cls.suffix)


def to_parquet(path: str | os.PathLike[str], rows_per_file: int = 1_000_000,
               mode: str = "error", partition_by: list[str] | None = None) -> Sink:
    """Write a stream to Parquet: ``out.parquet`` (one file) or ``out/`` (part files);
    ``partition_by=["day"]``: ``out/day=.../`` folders (:mod:`gpustream.sinks.partitioned`).

    Examples
    --------
    >>> import gpustream as gs, tempfile, os, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": list(range(5))}, batch_rows=2)).sink(
    ...     to_parquet(d, rows_per_file=3))
    >>> _ = p.run()
    >>> sorted(os.listdir(d)), pq.read_table(d)["x"].to_pylist()
    (['part-00000.parquet', 'part-00001.parquet'], [0, 1, 2, 3, 4])
    """
    if partition_by:
        return _partitioned(ParquetSink, path, rows_per_file, partition_by)
    return ParquetSink(path, rows_per_file, mode)


def to_csv(path: str | os.PathLike[str], rows_per_file: int = 1_000_000,
           mode: str = "error", partition_by: list[str] | None = None) -> Sink:
    """Write a stream to CSV: ``out.csv`` (one file) or ``out/`` (part files);
    ``partition_by=`` as :func:`to_parquet`.

    Examples
    --------
    >>> import gpustream as gs, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.csv")
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", "b"]})).sink(to_csv(path))
    >>> _ = p.run()
    >>> from pathlib import Path
    >>> print(Path(path).read_text().strip())
    "x","s"
    1,"a"
    2,"b"
    """
    if partition_by:
        return _partitioned(CsvSink, path, rows_per_file, partition_by)
    return CsvSink(path, rows_per_file, mode)


def to_jsonl(path: str | os.PathLike[str], rows_per_file: int = 1_000_000,
             mode: str = "error", partition_by: list[str] | None = None) -> Sink:
    """Write a stream as JSON lines: ``out.jsonl`` (one file) or ``out/`` (part files);
    ``partition_by=`` as :func:`to_parquet`.

    Examples
    --------
    >>> import gpustream as gs, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "late.jsonl")
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", None]})).sink(to_jsonl(path))
    >>> _ = p.run()
    >>> from pathlib import Path
    >>> print(Path(path).read_text().strip())
    {"x": 1, "s": "a"}
    {"x": 2, "s": null}
    """
    if partition_by:
        return _partitioned(JsonlSink, path, rows_per_file, partition_by)
    return JsonlSink(path, rows_per_file, mode)
