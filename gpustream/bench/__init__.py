"""Benchmarks that ship with the package: the Nexmark queries q0-q22 as gpustream
pipelines beside their DuckDB SQL (:mod:`gpustream.bench.nexmark`), and the runner that
``gpustream bench nexmark`` uses (:mod:`gpustream.bench.runner`).

Importing this package loads neither numba nor DuckDB.
"""
