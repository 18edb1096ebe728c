"""The drill record (benchmarks.drills) and the before/after comparison (benchmarks.before_after)
render what their result files hold. Pure: parses and renders, starts nothing."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report
from benchmarks.common import BenchResult
from benchmarks.drills import durations_of, outcomes

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.reliability.test_worker_crash" name="test_kill[aiokafka]" time="41.25"/>
<testcase classname="tests.reliability.test_worker_crash" name="test_kill[faust]" time="50.0"><failure message="x"/></testcase>
<testcase classname="tests.reliability.test_redis_outage" name="test_down[faust]" time="0.01"><skipped message="y"/></testcase>
</testsuite></testsuites>"""


def test_outcomes_come_from_the_junit_report(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    assert outcomes(path) == [
        {"test": "test_worker_crash::test_kill[aiokafka]", "outcome": "passed", "seconds": 41.2},
        {"test": "test_worker_crash::test_kill[faust]", "outcome": "failed", "seconds": 50.0},
        {"test": "test_redis_outage::test_down[faust]", "outcome": "skipped", "seconds": 0.0},
    ]


def _drills() -> BenchResult:
    rows = [{"drill": "13 one of two workers kill -9", "engine": "faust", "published": 900, "decisions": 950, "missing": 0,
             "duplicates": 50, "clickhouse_rows": 900, "recover_s": 7.5},
            {"drill": "1 worker kill -9", "engine": "aiokafka", "published": 800, "decisions": 800, "missing": 2,
             "duplicates": 0, "clickhouse_rows": None, "recover_s": None}]  # fmt: skip
    return BenchResult("drills", "python -m benchmarks.drills", {"scale": 1, "pytest_args": [], "pytest_exit_code": 1},
                       {"passed": 1, "failed": 1, "error": 0, "skipped": 0, "missing_total": 2, "test_seconds_total": 91.2},
                       rows, ["tests: test_worker_crash::test_kill[faust] failed 50.0 s"])  # fmt: skip


def test_the_drill_block_shows_every_row_in_drill_order_with_what_went_wrong() -> None:
    drills = _drills()
    block = report.block_drills({"drills": drills})
    assert block.index("| 1 worker kill -9 | aiokafka | 800 | 800 | **2** |") < block.index("| 13 one of two workers")
    assert "1 tests passed, 1 failed" in block and "| – | – |" in block
    assert durations_of(drills) == [("test_worker_crash::test_kill[faust]", "failed", 50.0)]
    assert "test_worker_crash::test_kill[faust] | failed | 50.0" in "\n".join(report.noloss_section({"drills": drills}))


def test_the_before_after_block_gives_both_sides_per_engine() -> None:
    runs = [{"engine": "aiokafka", "side": side, "msgs_per_s": rate, "loadavg_at_start": [2.0, 1, 1]}
            for side, rate in (("before", 1000.0), ("after", 900.0))]
    ba = BenchResult("noloss_throughput", "", {"backlog": 20000, "profile": "ci_failures", "rounds": 1, "engines": ["aiokafka"],
                                               "commits": {"before": ["a" * 40], "after": ["b" * 40]}},
                     {"aiokafka_before_msgs_per_s_median": 1000.0, "aiokafka_after_msgs_per_s_median": 900.0}, runs)  # fmt: skip
    assert "aiokafka 1,000 → 900 alerts/s (-10 %)" in report.block_noloss_throughput({"noloss_throughput": ba})
    section = "\n".join(report.noloss_section({"noloss_throughput": ba}))
    assert "| aiokafka | 1,000 | 900 | -10 % | 1,000 (load 2.0) | 900 (load 2.0) |" in section
