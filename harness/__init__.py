"""What tests and benchmarks share to drive real processes (not part of stream_engine).

* ``procs``: worker and proposition-service subprocesses (``start_worker`` waits for the
  "worker … ready" line), ``free_port``, ``wait_until``.
* ``kafka``: plain aiokafka publishing and collecting, as a user's service would.
* ``drills``: the reliability drills' publisher, background tail, accounting and chDB reads.
* ``clickhouse``: a private ``stream-engine clickhouse serve`` (the stack's ClickHouse endpoint) on
  its own directory and port, for tests and benchmarks that stop, kill or restart it.

Nothing here imports ``tests``; tests and ``benchmarks`` import from here.
"""
