"""Every published figure has a result file behind it: RESULTS.md and the README's bench blocks are
exactly what the JSON in benchmarks/results renders, the README states no measured figure outside
those blocks, and a ratio to the ceiling is only drawn when the ceiling ran under the engine's
conditions. Pure: reads files, starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.common import RESULTS_DIR, BenchResult

RESULTS = report.load_all(RESULTS_DIR)
README_TEXT = report.README.read_text()
BENCH_README_TEXT = report.BENCH_README.read_text()


# --- the published files ------------------------------------------------------------------------------
def test_results_md_is_what_the_json_renders() -> None:
    assert (RESULTS_DIR / "RESULTS.md").read_text() == report.render_markdown(RESULTS), (
        "RESULTS.md is stale or was edited by hand: python -m benchmarks.report"
    )


def test_every_result_file_is_named_with_its_run_in_results_md() -> None:
    text = (RESULTS_DIR / "RESULTS.md").read_text()
    unnamed = [name for name in RESULTS if f"- `{name}.json`: `" not in text]
    assert not unnamed, f"result files without their run (command, date, commit) in RESULTS.md: {unnamed}"


def test_the_readme_blocks_are_what_the_json_renders() -> None:
    names = [m.group("name") for text in (README_TEXT, BENCH_README_TEXT) for m in report.BLOCK.finditer(text)]
    assert sorted(names) == sorted(report.README_BLOCKS), "every block renderer is used once, and only those"
    for text in (README_TEXT, BENCH_README_TEXT):
        assert report.render_readme(text, RESULTS) == text, "README figures are stale: python -m benchmarks.report"


def test_the_readme_states_no_measured_figure_outside_its_bench_blocks() -> None:
    assert report.unbacked_figures(README_TEXT) == []


# --- the check can fail ------------------------------------------------------------------------------
def test_a_hand_typed_figure_outside_a_block_is_found() -> None:
    text = "Intro.\n<!-- bench:engines -->\nSecond, it is faster: 9,999 alerts/s.\n<!-- /bench -->\n"
    assert report.unbacked_figures(text) == []
    for stray in ("It does 15,642 alerts/s.", "p99 is 4.2 ms here.", "it is ~4× faster", "RSS 344 MB idle",
                  "took about 15 minutes", "hit ratio 92.2 %", "a 2.1–3.0 ms write"):
        assert report.unbacked_figures(text + stray + "\n"), stray
    # Settings and drill parameters are not measurements.
    assert report.unbacked_figures("fetch with `STREAM_ENGINE_FETCH_MAX_WAIT_MS` (50 ms), not faust's 1500 ms.\n") == []


def test_a_stale_or_unknown_block_is_found() -> None:
    stale = "<!-- bench:engines -->\nSecond, it is faster: 1 against 2 alerts/s.\n<!-- /bench -->\n"
    assert report.render_readme(stale, RESULTS) != stale
    with pytest.raises(KeyError, match="bench:nonsense"):
        report.render_readme("<!-- bench:nonsense -->\n<!-- /bench -->\n", RESULTS)


def test_check_reports_a_hand_edited_results_md(tmp_path: Path) -> None:
    for path in RESULTS_DIR.glob("*.json"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "RESULTS.md").write_text(report.render_markdown(RESULTS))
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    assert report.check(tmp_path, [readme]) == []
    (tmp_path / "RESULTS.md").write_text(report.render_markdown(RESULTS).replace("| 3 |", "| 4 |", 1) + "\n")
    readme.write_text(README_TEXT + "\nNow 99,999 alerts/s.\n")
    problems = report.check(tmp_path, [readme])
    assert any("RESULTS.md differs" in p for p in problems) and any("99,999 alerts/s" in p for p in problems)


# --- conditions behind a ratio ------------------------------------------------------------------------
def _bare(**params: object) -> BenchResult:
    base = {"partitioner": report.C_PARTITIONER, "acks": "all", "batch_max": 500, "batch_within_s": 0.01,
            "fetch_max_wait_ms": 50, "in_flight_batches": 2, "linger_ms": 1, "profile": "ci_failures"}
    return BenchResult("baseline_bare", "", base | params, {"msgs_per_s_median": 50_000.0})


def _engine(non_default: dict[str, object]) -> BenchResult:
    return BenchResult("e2e_throughput_ci_failures_aiokafka", "", {"profile": "ci_failures"}, {"msgs_per_s_median": 20_000.0},
                       settings={"non_default": non_default, "isolation": []})


def test_the_ceiling_ratio_needs_the_engines_partitioner_acks_linger_fetch_and_depth() -> None:
    assert report.ceiling_mismatch(_bare(), _engine({})) == []
    assert report.ceiling_mismatch(_bare(), _engine({"batch_concurrency": 4})) == ["batch_concurrency (ceiling 2, engine 4)"]
    assert report.ceiling_mismatch(_bare(partitioner="aiokafka.partitioner.DefaultPartitioner"), _engine({}))[0].startswith(
        "partitioner")
    assert report.ceiling_mismatch(_bare(in_flight_batches=None), _engine({})) == ["batch_concurrency (ceiling ?, engine 2)"]
    lines = report.ratio_lines({"baseline_bare": _bare(), "e2e_throughput_ci_failures_aiokafka": _engine({})})
    assert lines == ["- aiokafka, hit-heavy: **0.40× the ceiling** (aim ≥ 0.5×) and 20,000 alerts/s (aim ≥ 25,000)."]
    lines = report.ratio_lines({"baseline_bare": _bare(), "e2e_throughput_ci_failures_aiokafka": _engine({"batch_concurrency": 4})})
    assert "no ratio to the ceiling" in lines[0] and "×" not in lines[0]


def test_settings_notes_name_every_non_default_and_flag_unrecorded_ones() -> None:
    assert report.settings_note(_engine({})) == "defaults"
    assert report.settings_note(_engine({"batch_concurrency": 4, "lru_size": 5})) == "`batch_concurrency=4`, `lru_size=5`"
    old = BenchResult("e2e_throughput_ci_failures_aiokafka", "", {"batch_concurrency": 4}, {})
    assert report.settings_note(old) == "not recorded; `batch_concurrency=4` (default 2)"
    assert report.commit_note(old) == "commit not recorded (run before issue 17)"
