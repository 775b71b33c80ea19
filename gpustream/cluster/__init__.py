"""Partitioned runs on Dask: one plan as N partitions (``Pipeline.run(cluster=...,
parallelism=N)``).

``partitioning``: how a plan splits (its source's shares, the key rows are repartitioned
by); ``exchange``: which partition a row goes to; ``partition``: one partition in a
worker's process; ``dask_run``: the coordinator that drives them in rounds, checkpoints
them together and rebuilds them after a lost worker.

Examples
--------
>>> from gpustream.cluster.exchange import partition_of
>>> import pyarrow as pa
>>> partition_of(pa.record_batch({"k": [7, 7]}), ["k"], 3).tolist()[0] in (0, 1, 2)
True
"""
