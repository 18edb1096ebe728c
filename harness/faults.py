"""Test-only faults inside a real worker process: a ``sitecustomize`` module on its PYTHONPATH,
configured by ``SE_FAULT_*`` variables (never ``STREAM_ENGINE_*``: Settings forbids unknown ones).

* ``poison_prefix``: deciding an alert whose id starts with it raises, with the whole alert in the
  message (a bug that formats the alert), so the real isolate-and-dead-letter path runs
  (``processing_error``): no input reaches it otherwise, the decoder rejects everything else first.
* ``sink_delay_s``: every decision-log write waits this long first, so a batch's decisions are
  acknowledged well before its offsets can be committed: a kill then lands in that window.
* ``commit_delay_s`` (exactly_once): every transaction waits this long before it commits, its
  records acknowledged and its rows journaled (held): a kill then leaves both behind, uncommitted.

    env = fault_env(tmp_path, poison_prefix="poison-")
    worker = start_worker(settings, tmp_path, env=env)
"""

from __future__ import annotations

from pathlib import Path

SITECUSTOMIZE = '''
import asyncio
import os

_poison = os.environ.get("SE_FAULT_POISON_PREFIX")
_sink_delay = float(os.environ.get("SE_FAULT_SINK_DELAY_S") or 0)
_commit_delay = float(os.environ.get("SE_FAULT_COMMIT_DELAY_S") or 0)

if _poison:
    from stream_engine import policy
    from stream_engine.models import Alert

    _decide = policy.DecisionPolicy.decide

    def decide(self, *args, **kwargs):
        for value in (*args, *kwargs.values()):
            alert = value if isinstance(value, Alert) else getattr(value, "alert", None)
            if isinstance(alert, Alert) and alert.id.startswith(_poison):
                raise ValueError(f"a bug that formats the alert: {alert!r}")
        return _decide(self, *args, **kwargs)

    policy.DecisionPolicy.decide = decide

if _sink_delay:
    from stream_engine import pipeline

    _write = pipeline.DecisionLog.write

    async def write(self, *args, **kwargs):
        await asyncio.sleep(_sink_delay)
        return await _write(self, *args, **kwargs)

    pipeline.DecisionLog.write = write

if _commit_delay:
    from stream_engine.engines import transactions

    _commit = transactions.Turn.commit

    async def commit(self, *args, **kwargs):
        await asyncio.sleep(_commit_delay)
        return await _commit(self, *args, **kwargs)

    transactions.Turn.commit = commit
'''


def fault_env(
    directory: Path, *, poison_prefix: str | None = None, sink_delay_s: float | None = None, commit_delay_s: float | None = None
) -> dict[str, str]:
    """Environment for a worker with these faults (``Proc(..., env=…)``); the hook lives in
    ``directory/faults``."""
    import os

    hook = directory / "faults"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    if poison_prefix:
        env["SE_FAULT_POISON_PREFIX"] = poison_prefix
    if sink_delay_s:
        env["SE_FAULT_SINK_DELAY_S"] = str(sink_delay_s)
    if commit_delay_s:
        env["SE_FAULT_COMMIT_DELAY_S"] = str(commit_delay_s)
    return env
