"""What tests and benchmarks share to drive real processes (not part of stream_engine).

* ``procs``: worker and proposition-service subprocesses (``start_worker`` waits for the
  "worker … ready" line), ``free_port``, ``wait_until``.
* ``kafka``: plain aiokafka publishing and collecting, as a user's service would.
* ``drills``: the reliability drills' publisher, background tail, accounting and chDB reads.
* ``chdb_http_double``: a TEST DOUBLE of ClickHouse's HTTP interface over chDB.

Nothing here imports ``tests``; tests and ``benchmarks`` import from here.
"""
