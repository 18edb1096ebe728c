"""Benchmarks of stream_engine against its targets, a naive path and the bare-aiokafka ceiling.

Every module is runnable (``python -m benchmarks.<module> --help``) and writes a
:class:`benchmarks.common.BenchResult` JSON into ``benchmarks/results/``; ``benchmarks.run_all``
runs them all and renders ``RESULTS.md`` plus plots. See ``benchmarks/README.md``.
"""
