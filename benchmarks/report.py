"""RESULTS.md, the README's performance figures and the plots, all rendered from the JSON results.

    python -m benchmarks.report             # rewrite RESULTS.md, the README's bench blocks, the PNGs
    python -m benchmarks.report --check     # exit 1 if any of them differs from what the JSON renders

Nothing here is typed by hand: every figure comes from a result file, and every section names the
run it comes from (command, date, commit and whether the tree was dirty, machine load, settings
that differ from the defaults). The README holds its figures in marked blocks,

    <!-- bench:NAME -->
    ...generated text...
    <!-- /bench -->

whose bodies :func:`render_readme` regenerates (``README_BLOCKS`` names them). Outside the blocks
the README must not state a measured figure: :func:`unbacked_figures` finds them, and
``tests/bench/test_figures.py`` fails on any, on a stale block and on a stale RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, BenchResult
from benchmarks.services import SERVICE, service_label, service_of
from stream_engine.settings import PROJECT_ROOT, Settings

README = PROJECT_ROOT / "README.md"
BENCH_README = PROJECT_ROOT / "benchmarks" / "README.md"
READMES = (README, BENCH_README)  # files with bench blocks; the stray-figure check reads README only
AIM_ALERTS_PER_S = 25_000
AIM_OF_CEILING = 0.5
AIM_OF_NAIVE = 10.0
AIM_P99_MS_AT_1K = 50.0
AIM_API_SINGLE_P99_MS = 20.0
C_PARTITIONER = "stream_engine.kafka.partitioner.kafka_partitioner"
DEFAULTS: dict[str, Any] = Settings.model_construct().model_dump(mode="json")
Results = dict[str, BenchResult]


def load_all(directory: Path = RESULTS_DIR) -> Results:
    return {p.stem: BenchResult.load(p) for p in sorted(directory.glob("*.json"))}


# --- formatting ----------------------------------------------------------------------------------
def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- provenance ----------------------------------------------------------------------------------
def effective(result: BenchResult, name: str) -> Any:
    """The value of setting ``name`` the result's workers ran with (None: not recorded)."""
    recorded = result.settings.get("non_default") if result.settings else None
    if recorded is not None:
        return recorded.get(name, DEFAULTS.get(name))
    return result.params.get(name)  # results older than issue 17 named a few settings in params


def settings_note(result: BenchResult) -> str:
    recorded = result.settings.get("non_default") if result.settings else None
    if recorded is not None:
        return "defaults" if not recorded else ", ".join(f"`{k}={v}`" for k, v in recorded.items())
    known = {k: result.params[k] for k in ("batch_concurrency",) if k in result.params and result.params[k] != DEFAULTS[k]}
    return "not recorded" + "".join(f"; `{k}={v}` (default {DEFAULTS[k]})" for k, v in known.items())


def commit_note(result: BenchResult) -> str:
    commit = result.git.get("commit") if result.git else None
    if not commit:
        return "commit not recorded (run before issue 17)"
    dirty = result.git.get("dirty")
    if dirty is None:
        state = "tree state not recorded"
    else:
        state = "dirty tree: " + ", ".join(result.git.get("dirty_paths", [])[:5]) if dirty else "clean tree"
    return f"commit `{commit[:10]}` ({state})"


def provenance(result: BenchResult, label: str | None = None) -> str:
    """One run's line; ``label`` names it when it is not a file of its own (default: ``NAME.json``)."""
    m = result.machine
    load = (f"load (1 min) {_num(m.get('loadavg_at_start', [None])[0], 2)} → {_num(m.get('loadavg_at_end', [None])[0], 2)}"
            if "loadavg_at_end" in m else "machine load not recorded")
    cores = f" on {m.get('nproc')} cores" if m.get("nproc") else ""
    return (f"{label or f'`{result.name}.json`'}: `{result.command}` · {result.started_at or 'start not recorded'} · "
            f"{commit_note(result)} · "
            f"{load}{cores} · settings: {settings_note(result)}")


def provenance_lines(*results: BenchResult | None) -> list[str]:
    present = [r for r in results if r is not None]
    return ["Runs:", "", *(f"- {provenance(r)}" for r in present), ""] if present else []


# --- conditions behind a ratio ----------------------------------------------------------------------
CEILING_CONDITIONS = (  # (bare loop param, engine setting)
    ("batch_max", "batch_max"),
    ("batch_within_s", "batch_within_s"),
    ("fetch_max_wait_ms", "fetch_max_wait_ms"),
    ("in_flight_batches", "batch_concurrency"),
    ("linger_ms", "producer_linger_ms"),
)


def ceiling_mismatch(bare: BenchResult, engine: BenchResult) -> list[str]:
    """Why the ceiling is not the engine's (empty: same partitioner, acks, linger, fetch, depth, workload)."""
    problems = []
    if bare.params.get("partitioner") != C_PARTITIONER:
        problems.append(f"partitioner ({bare.params.get('partitioner') or 'not recorded'})")
    if bare.params.get("acks") != "all":
        problems.append("acks not recorded")
    for param, setting in CEILING_CONDITIONS:
        ceiling, ours = bare.params.get(param), effective(engine, setting)
        if ceiling is None or ours is None or ceiling != ours:
            problems.append(f"{setting} (ceiling {'?' if ceiling is None else ceiling}, engine {'?' if ours is None else ours})")
    if bare.params.get("profile") != engine.params.get("profile"):
        problems.append(f"workload ({bare.params.get('profile')} vs {engine.params.get('profile')})")
    return problems


def same_service(a: BenchResult, b: BenchResult) -> bool:
    return service_of(a.params) is not None and service_of(a.params) == service_of(b.params)


def rate(r: Results, name: str) -> float | None:
    return r[name].metrics.get("msgs_per_s_median") if name in r else None


def _rate(value: Any) -> str:
    """alerts/s: whole numbers, one decimal below 100 (the naive path)."""
    return _num(value, 1 if isinstance(value, (int, float)) and value < 100 else 0)


# --- sections ------------------------------------------------------------------------------------------
def header(r: Results) -> list[str]:
    machine = next(iter(r.values())).machine if r else {}
    return [
        "# Benchmark results",
        "",
        "Rendered by `python -m benchmarks.report` from the JSON files next to this file (never edited by hand; "
        "`python -m benchmarks.run_all` regenerates everything). Each section names the run(s) it comes from: "
        "command, start (UTC), commit, machine load and the settings that differ from the defaults.",
        "",
        f"Machine: nproc={machine.get('nproc')}, RAM={_num(machine.get('ram_mb'))} MB, CPU={machine.get('cpu')}, "
        f"Python {machine.get('python')}, Kafka {machine.get('kafka')}, {machine.get('platform')}.",
        "",
    ]


def service_section(r: Results) -> list[str]:
    out = ["## The simulated proposition service", "",
           f"Every benchmark that calls the service runs it with: **{SERVICE.label()}** "
           "(`benchmarks.services.SERVICE`). The per-item part follows the shape of a real batch endpoint, "
           "the reference service's `POST /v1/propositions/batch` timed without simulated latency:", ""]
    if "service_shape" not in r:
        return out + ["Not measured yet (`python -m benchmarks.service_shape`).", ""]
    shape = r["service_shape"]
    out.append(table(["items", "requests", "fastest ms", "p50 ms", "p99 ms"], (
        [_num(x["items"]), _num(x["requests"]), _num(x["min_ms"], 3), _num(x["latency"]["p50_ms"], 3),
         _num(x["latency"]["p99_ms"], 3)] for x in shape.runs)))
    out.append("")
    for name, label in (("fastest", "through the fastest requests (the endpoint's own cost)"),
                        ("p50", "through the medians (with the machine's other work)")):
        fit = shape.metrics.get(name, {})
        out.append(f"- Fit {label}: {_num(fit.get('fixed_ms'), 3)} ms + {_num(fit.get('per_item_ms'), 4)} ms per item; "
                   f"per item = {_pct(fit.get('per_item_share_of_fixed'))} of a request, i.e. "
                   f"{_num(fit.get('implied_per_item_ms_at_model_median'), 3)} ms per item at {SERVICE.median_ms:g} ms per request.")
    out += ["", *provenance_lines(shape)]
    return out


def throughput_section(r: Results) -> list[str]:
    out = ["## Throughput (alerts/s, median of runs)", ""]
    names = [
        ("baseline_bare", "bare consume→produce loop (ceiling: the engine's producer, consumer settings and in-flight depth)"),
        ("baseline_naive", "naive: one alert at a time, simulated service"),
        ("baseline_naive_nolatency", "naive, service without simulated latency (CPU-bound)"),
        ("e2e_throughput_ci_failures_aiokafka", "**engine, aiokafka (default)**, hit-heavy (`ci_failures`)"),
        ("e2e_throughput_typical_aiokafka", "**engine, aiokafka (default)**, `typical`"),
        ("e2e_throughput_ci_failures", "engine, `--engine faust`, hit-heavy (`ci_failures`)"),
        ("e2e_throughput_typical", "engine, `--engine faust`, `typical`"),
    ]
    rows = []
    for name, label in names:
        if name not in r:
            continue
        res = r[name]
        cpu = [x["worker_cpu_per_wall_s"] for x in res.runs if isinstance(x.get("worker_cpu_per_wall_s"), (int, float))]
        rows.append([label, _rate(rate(r, name)), str(len(res.runs)), f"{sorted(cpu)[len(cpu) // 2]:.2f}" if cpu else "–",
                     service_label(res.params) if name != "baseline_bare" else "–", settings_note(res)])
    if not rows:
        return out + ["Not measured yet.", ""]
    out.append(table(["path", "alerts/s", "runs", "worker CPU s / wall s", "service", "settings"], rows))
    out += ["", *ratio_lines(r), "", "![throughput](throughput.png)", ""]
    out += provenance_lines(*(r.get(n) for n, _ in names))
    return out


def ratio_lines(r: Results) -> list[str]:
    lines = []
    for engine in ("aiokafka", "faust"):
        suffix = "_aiokafka" if engine == "aiokafka" else ""
        hit, typical = r.get(f"e2e_throughput_ci_failures{suffix}"), r.get(f"e2e_throughput_typical{suffix}")
        bare, naive, naive0 = r.get("baseline_bare"), r.get("baseline_naive"), r.get("baseline_naive_nolatency")
        if hit is not None and bare is not None:
            problems = ceiling_mismatch(bare, hit)
            ratio = _ratio(rate(r, hit.name), rate(r, "baseline_bare"))
            lines.append(f"- {engine}, hit-heavy: " + (
                f"**{_num(ratio, 2)}× the ceiling** (aim ≥ {AIM_OF_CEILING}×) and {_num(rate(r, hit.name))} alerts/s "
                f"(aim ≥ {AIM_ALERTS_PER_S:,})." if not problems else
                f"no ratio to the ceiling: it was not measured under the engine's conditions — {'; '.join(problems)}."))
        if typical is not None:
            for base, kind in ((naive, "latency-bound: the same simulated service"),
                               (naive0, "CPU-bound: the naive path with an instant service, the engine still with its "
                                        "simulated one, so this understates the engine")):
                if base is None:
                    continue
                ratio = _ratio(rate(r, typical.name), rate(r, base.name))
                fair = base.name == "baseline_naive_nolatency" or same_service(typical, base)
                lines.append(f"- {engine}, typical: " + (
                    f"**{_num(ratio, 1)}× naive** ({kind}; aim ≥ {AIM_OF_NAIVE:.0f}×)." if fair else
                    f"no ratio to `{base.name}`: the two ran different service models."))
    return lines


def latency_section(r: Results) -> list[str]:
    out = []
    for name, engine in (("e2e_latency_aiokafka", "aiokafka (default)"), ("e2e_latency", "faust")):
        if name not in r:
            continue
        lat = r[name]
        out += [f"## Publish → decision latency at fixed rates, engine {engine} (profile `{lat.params.get('profile')}`)", "",
                f"Service: {service_label(lat.params)}.", ""]
        rows = []
        for run in lat.runs:
            rec, seen, lru = run["record"], run["seen"], run["by_tier"].get("lru", {})
            rows.append([_num(run["rate"]), _num(run["achieved_publish_rate"]), _num(run["decided"]),
                         _num(rec.get("p50_ms"), 1), _num(rec.get("p95_ms"), 1), _num(rec.get("p99_ms"), 1),
                         _num(rec.get("max_ms"), 1), _num(lru.get("p99_ms"), 1), _num(seen.get("p99_ms"), 1),
                         ", ".join(f"{k} {v}" for k, v in sorted(run["tiers"].items()))])
        out.append(table(["rate/s", "achieved", "decided", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99 ms (lru hits)",
                          "p99 ms (seen by consumer)", "tiers"], rows))
        out += ["", f"Aim: p99 ≤ {AIM_P99_MS_AT_1K:.0f} ms at 1k alerts/s, all decisions (column *p99 ms*).", ""]
        if name == "e2e_latency_aiokafka":
            out += ["![latency](latency.png)", ""]
        out += provenance_lines(lat)
    return out or ["## Publish → decision latency", "", "Not measured yet.", ""]


def hitratio_section(r: Results) -> list[str]:
    out = ["## Hit ratio where the TTLs and the capacity bind", ""]
    hr = r.get("hitratio")
    cells = [x for x in hr.runs if "variant" in x] if hr is not None else []
    if not cells:
        return out + ["Not measured yet with this benchmark (`python -m benchmarks.hitratio`).", ""]
    p = hr.params
    out += [f"Modelled arrival rates per alert type, each trace covering up to {_num(p['horizon_s'])} s of modelled time "
            f"(at most {_num(p['max_alerts'])} alerts). Time is compressed by f (column ×f): the trace is published f times "
            f"faster and the worker runs with `lru_ttl_s` = {_num(p['lru_ttl_s'])} / f and `redis_ttl_s` = "
            f"{_num(p['redis_ttl_s'])} / f (and a service f times faster), which keeps the arrivals per TTL. "
            "*optimum*: both tiers unbounded, one lookup at a time (TTL-aware bound); *Belady*: the most the LRU tier "
            "can answer at its capacity; *model*: both tiers at the run's capacity and batch size; *engine*: the "
            "decisions' tiers. *avoided*: alerts that cost no service lookup (copies of a key inside one batch share "
            "one call but say `service`).", ""]
    rows = []
    for x in cells:
        eng = x.get("engine", {})
        rows.append([x["profile"], _num(x["rate"], 0), x["variant"].split(" ")[0], _num(x["alerts"]), _num(x["distinct_keys"]),
                     _num(x["horizon_s"]), f"×{x['compression']}", _num(x["lru_size"]),
                     _pct(x["optimum"]["hit"]), _pct(x["belady_lru"]),
                     f"{_pct(x['model']['lru'])} / {_pct(x['model']['redis'])} / **{_pct(x['model']['hit'])}**",
                     f"{_pct(eng.get('lru'))} / {_pct(eng.get('redis'))} / **{_pct(eng.get('hit'))}**" if eng else "–",
                     _pct(eng.get("service_avoided"))])
    out.append(table(["type", "rate/s", "variant", "alerts", "keys", "horizon s", "×f", "LRU/partition", "optimum",
                      "Belady (LRU tier)", "model lru / redis / hit", "engine lru / redis / hit", "engine: avoided"], rows))
    out += ["", "The seed's hit-ratio targets describe its production workloads, not these synthetic traces: no verdict "
            "is drawn from them here.", "", "![hit ratio](hitratio.png) ![capacity](hitratio_capacity.png)", ""]
    return out + provenance_lines(hr)


AIM_RSS_IDLE_MB = 64.0  # issue 16, a default worker (ClickHouse over HTTP)
AIM_RSS_CACHED_MB = 100.0  # ... with 1000 cached propositions
AIM_GROWTH_PER_100K_MB = 1.0  # ... after warm-up (the slope over the readings after the first step)


def memory_runs(r: Results) -> list[tuple[str, BenchResult]]:
    """Every memory result with the earlier run it carries (``params.before``, as a result of its
    own, named ``NAME@before``) just before it; the default worker (HTTP, default engine) first."""
    default_engine = DEFAULTS.get("engine")

    def order(name: str) -> tuple[bool, bool, int, str]:
        p = r[name].params
        return p.get("clickhouse") != "http", p.get("engine") != default_engine, p.get("steps", 0), name

    out: list[tuple[str, BenchResult]] = []
    for name in sorted((n for n in r if n == "memory" or n.startswith("memory_")), key=order):
        before = r[name].params.get("before")
        if before:
            out.append((f"{name}@before", BenchResult(**before)))
        out.append((name, r[name]))
    return out


def memory_label(name: str, result: BenchResult) -> str:
    p = result.params
    where = "ClickHouse over HTTP" if p.get("clickhouse") == "http" else "ClickHouse embedded (chdb://)"
    engine = f"{p['engine']} engine" if p.get("engine") else "engine not recorded"
    commit = (result.git or {}).get("commit")
    when = ("before: " if name.endswith("@before") else "") + (f"`{commit[:7]}`" if commit else "commit not recorded")
    return f"{where}, {engine}, {p.get('steps')} × {_num(p.get('step_alerts'))} alerts, {when}"


def memory_section(r: Results) -> list[str]:
    runs = memory_runs(r)
    if not runs:
        return ["## Worker memory (RSS)", "", "Not measured yet.", ""]

    def cell(result: BenchResult, key: str) -> str:
        value = result.metrics.get(key)
        return f"{_num(value, 1)} MB" if isinstance(value, (int, float)) else "–"

    def steps(result: BenchResult) -> str:
        return ", ".join(_num(p["rss_mb"], 1) for p in result.runs if str(p.get("stage", "")).startswith("after_step")) or "–"

    cached = runs[0][1].params.get("cached")
    rows = [
        ["idle", *(cell(x, "rss_idle_mb") for _, x in runs), f"≤ {_num(AIM_RSS_IDLE_MB)} MB (HTTP)"],
        [f"with {cached} cached propositions", *(cell(x, f"rss_with_{cached}_cached_mb") for _, x in runs),
         f"≤ {_num(AIM_RSS_CACHED_MB)} MB (HTTP)"],
        ["after each step of alerts (MB)", *(steps(x) for _, x in runs), "–"],
        ["growth, first step, per 100k alerts", *(cell(x, "growth_first_step_per_100k_mb") for _, x in runs), "–"],
        ["growth, later steps, per 100k alerts (median)", *(cell(x, "growth_per_100k_steady_mb") for _, x in runs), "–"],
        ["growth after the first step, per 100k alerts (slope)", *(cell(x, "growth_per_100k_slope_mb") for _, x in runs),
         f"< {_num(AIM_GROWTH_PER_100K_MB)} MB per 100k"],
        ["the separate ClickHouse process (HTTP; see the notes for which)", *(cell(x, "clickhouse_process_rss_mb") for _, x in runs),
         "–"],
    ]
    out = ["## Worker memory (RSS)", "",
           "*before*: the earlier run a result carries (`--before`), same benchmark and sizes on an older commit.", "",
           table(["measure", *(memory_label(n, x) for n, x in runs), "target"], rows), "", "![memory](memory.png)", "",
           "Notes:", ""]
    for name, x in runs:
        where = f"`{name.removesuffix('@before')}.json`" + (" (before)" if name.endswith("@before") else "")
        out += [f"- {where}: {note}" for note in x.notes]
    out += ["", "Runs:", ""]
    for name, x in runs:
        label = f"`{name.removesuffix('@before')}.json`, its earlier run (`params.before`)" if name.endswith("@before") else None
        out.append(f"- {provenance(x, label)}")
    return out + [""]


def sink_section(r: Results) -> list[str]:
    if "sink" not in r:
        return ["## ClickHouse sink", "", "Not measured yet.", ""]
    sk = r["sink"]
    out = [f"## ClickHouse sink ({_num(sk.params.get('rows'))} rows in batches of {sk.params.get('batch')}, without Kafka)", ""]
    rows = []
    for x in sk.runs:
        write = x.get("write", {})
        rows.append([x["backend"], "on" if x["fsync"] else "off", str(x.get("repeat", 0) + 1), _num(x["durable_rows_per_s"]),
                     _num(x["inserted_rows_per_s"]), _num(write.get("p50_ms"), 2), _num(write.get("p99_ms"), 2),
                     _num(x["flushes"]), _num(x["flush_rows_avg"])])
    out.append(table(["backend", "fsync", "run", "durable rows/s (journal)", "rows/s in ClickHouse", "write() p50 ms",
                      "write() p99 ms", "flushes", "rows per flush"], rows))
    http = next((n.removeprefix("http = ") for n in sk.notes if n.startswith("http = ")), "not recorded.")
    out += ["", f"*http*: {http} *write()*: one 500-row batch's time in the sink, the worker's hot-path share.", ""]
    return out + provenance_lines(sk)


def profile_section(r: Results) -> list[str]:
    if "profile_worker" not in r:
        return []
    p = r["profile_worker"]
    summary = p.runs[1] if len(p.runs) > 1 else {}
    engine = p.params.get("engine", "faust (the default then)")
    out = [f"## Where the worker's time goes at maximum throughput (py-spy, engine {engine}, {_num(summary.get('samples'))} "
           f"samples, {_num(p.metrics.get('msgs_per_s_while_sampled'))} alerts/s while sampled)", ""]
    out.append(table(["area", "% of samples"], [[a, f"{v:.1f}"] for a, v in summary.get("by_area", {}).items()]))
    own = [[f"`{x['frame']}`", f"{x['pct']:.1f}"] for x in summary.get("top_own", [])[:15]]
    out += ["", table(["function (own time)", "% of samples"], own), ""]
    return out + provenance_lines(p)


def api_verdict(p99: Any, target: Any) -> str:
    if not isinstance(p99, (int, float)) or target is None:
        return "–"
    return "met" if p99 < target else "**missed**"


def api_section(r: Results) -> list[str]:
    out = ["## API load (`POST /api/v1/alerts/process`, wrk)", ""]
    api = r.get("api")
    if api is None or not str(api.params.get("tool", "")).startswith("wrk"):
        return out + ["Not measured yet with wrk (`python -m benchmarks.api`).", ""]
    out += [f"{api.params['tool']}, `{api.params['script']}`, {_num(api.params['seconds'])} s per phase, closed loop; "
            f"service: {service_label(api.params)}; worker with an API token. *fresh*: every key new (LRU and Redis miss, "
            "service asked); *repeat*: keys answered just before. *rejected*: 429/503 (a full API queue; how many with "
            "`Retry-After`); *errors*: any other non-200, socket errors, timeouts. Latency over every response.", ""]
    rows = []
    for x in api.runs:
        lat = x["latency"]
        rows.append([x["shape"], x["keys"], _num(x["connections"]), _num(x["batch"]), _num(x["requests"]),
                     _num(lat["p50_ms"], 1), _num(lat["p99_ms"], 1), _num(lat["max_ms"], 1), _num(x["alerts_per_s"]),
                     f"{x['rejected']} ({x['rejected_with_retry_after']})", str(x["errors"]),
                     ", ".join(f"{k} {v}" for k, v in sorted(x["tiers"].items())), str(sum(x["degraded"].values())),
                     f"{x['worker_cpu_per_wall_s']:.2f} / {x['client_cpu_per_wall_s']:.2f}",
                     "–" if x.get("target_p99_ms") is None else f"< {_num(x['target_p99_ms'])} ms",
                     api_verdict(lat["p99_ms"], x.get("target_p99_ms"))])
    out.append(table(["shape", "keys", "connections", "alerts/request", "requests", "p50 ms", "p99 ms", "max ms", "alerts/s",
                      "rejected (Retry-After)", "errors", "tiers", "degraded", "CPU s / wall s worker / wrk",
                      "seed target p99", "verdict"], rows))
    reductions = api.metrics.get("caching_p50_reduction", {})
    out += ["", "Latency cut by the cache (1 − repeat p50 / fresh p50; the seed asks 40–50 %): "
            + ", ".join(f"{shape} {_pct(v)}" for shape, v in reductions.items()) + ".",
            f"Aim (issue 17): single-alert p99 ≤ {AIM_API_SINGLE_P99_MS:.0f} ms.", "",
            "Commands (the API token reaches wrk through `WRK_API_TOKEN`):", ""]
    out += [f"- `{x['command']}`" for x in api.runs]
    out += ["", "![api](api.png)", ""]
    return out + provenance_lines(api)


def cache_section(r: Results) -> list[str]:
    """Issue 12: stale decisions after invalidations under load, the cost of the checks, the cluster key layout."""
    out = ["## Cache coherence under load (issue 12)", ""]
    before, after = r.get("coherence_before"), r.get("coherence_after")
    drills = [("before the fixes", x) for x in (before.runs if before else [])] + [
        ("after", x) for x in (after.runs if after else [])]
    if not drills:
        out += ["Not measured yet (`tests/reliability/test_invalidation_under_load.py`).", ""]
    else:
        definition = next(x.params["definition"] for x in (after, before) if x is not None)
        out += [f"*stale*: {definition}. *node down*: seconds a cluster master was down mid-stream.", ""]
        rows = [[when, x.get("backend", "single"), x.get("engine", "aiokafka"), _num(x["seconds"]), _num(x["alerts"]),
                 _num(x["invalidations"]), _num(x["checked"]), f"**{_num(x['stale'])}**",
                 ", ".join(f"{k} {_num(v)}" for k, v in sorted(x["stale_by_tier"].items())) or "–",
                 _num(x.get("missing")), _num(x.get("duplicates")),
                 _num(x["node_down_s"], 1) if isinstance(x.get("node_down_s"), (int, float)) else "–"]
                for when, x in drills]
        out += [table(["code", "Redis", "engine", "s", "alerts", "invalidations", "checked", "stale", "stale by tier",
                       "missing", "duplicates", "node down s"], rows), ""]
        out += provenance_lines(before, after)
    cost = r.get("coherence_cost")
    if cost is not None:
        out += ["### CPU per alert of `Triage.decide` before and after the checks (`benchmarks/triage_cpu.py`)", "",
                table(["path", "base µs/alert (median)", "new µs/alert (median)", "change"],
                      ([path, _num(m["base_median"], 2), _num(m["new_median"], 2), f"{m['change_pct']:+.1f} %"]
                       for path, m in cost.metrics.items())), "",
                f"Base: `{cost.params['base_commit'][:10]}`. " + " ".join(n.rstrip(".") + "." for n in cost.notes), "",
                *provenance_lines(cost)]
    layouts = [r[name] for name in sorted(r, key=lambda n: r[n].params.get("batch", 0)) if name.startswith("redis_cluster_layout_")]
    if layouts:
        out += ["### Redis Cluster key layout (`benchmarks/redis_cluster_layout.py`, median batch time)", "",
                table(["keys per batch", *(f"{v} read / write ms" for v in LAYOUTS)],
                      ([_num(x.params["batch"]), *(f"{_num(x.metrics[v]['read_median_ms'], 1)} / "
                                                   f"{_num(x.metrics[v]['write_median_ms'], 1)}" for v in LAYOUTS)]
                       for x in layouts)), "", *(f"- {note}" for note in layouts[0].notes), "", *provenance_lines(*layouts)]
    return out


ISOLATION_RUNS = ("api_isolation", "api_isolation_unbounded")  # the defaults, the connection bound lifted


def _statuses(x: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in x["answers"].items())


def api_isolation_section(r: Results) -> list[str]:
    out = ["## The API flooded while the stream runs (`benchmarks/api_isolation.py`)", ""]
    runs = [r[n] for n in ISOLATION_RUNS if n in r]
    if not runs:
        return out + ["Not measured yet (`python -m benchmarks.api_isolation`).", ""]
    p = runs[0].params
    out += [f"{_num(p['connections'])} connections opened at once, {p['alerts_per_request']} alerts per request, while "
            f"{p['stream_alerts']} alerts are published to the stream; a fresh worker per run (engine {p.get('engine')}, "
            f"ClickHouse {p.get('clickhouse')}; service: {service_label(p)}). *growth*: peak RSS during the load − RSS "
            "just before it. *budget*: the API's bounds priced by their unit costs (`harness.api_flood.rss_budget`, "
            "which the e2e test asserts).", ""]
    rows = [[f"`{res.name}`", str(i), settings_note(res), _num(x["rss_idle_mib"], 1), _num(x["rss_peak_mib"], 1),
             f"**{_num(x['growth_mib'], 1)}**", _num(res.metrics["budget_mib"], 1), _statuses(x),
             _num(sum(v for k, v in x["retry_after"].items() if k != "missing")), _num(sum(x["errors"].values())),
             f"{_num(x['stream_decided'])} / {_num(x['stream_alerts'])}"]
            for res in runs for i, x in enumerate(res.runs, 1)]
    out += [table(["result", "run", "settings", "idle MiB", "peak MiB", "growth MiB", "budget MiB", "answers",
                   "with Retry-After", "errors", "stream decided"], rows), ""]
    return out + provenance_lines(*runs)


LAYOUTS = ("buckets_16", "buckets_64", "buckets_256", "per_slot", "single_redis")


def _drill_table(drills: BenchResult) -> str:
    def key(row: dict[str, Any]) -> tuple[int, str, str]:
        number = re.match(r"\d+", row["drill"])
        return (int(number.group(0)) if number else 999, row["drill"], row["engine"])

    rows = [[x["drill"], x["engine"], _num(x["published"]), _num(x["decisions"]), f"**{_num(x['missing'])}**",
             _num(x["duplicates"]), "–" if x["clickhouse_rows"] is None else _num(x["clickhouse_rows"]),
             "–" if x["recover_s"] is None else _num(x["recover_s"], 1)]
            for x in sorted(drills.runs, key=key)]
    return table(["drill", "engine", "published", "decisions", "missing", "duplicates", "ClickHouse rows", "recover s"], rows)


def _drill_outcome(drills: BenchResult) -> str:
    m = drills.metrics
    return (f"scale {drills.params['scale']}: {_num(m['passed'])} tests passed, {_num(m['failed'])} failed, "
            f"{_num(m['error'])} errors, {_num(m['skipped'])} skipped; {_num(m['test_seconds_total'])} s of test time")


def noloss_section(r: Results) -> list[str]:
    """Issue 11: the drills' accounting, and worker throughput before/after the no-loss changes."""
    out = ["## No alert lost, no decision diverted (issue 11)", ""]
    drills = r.get("drills")
    if drills is None:
        out += ["Drills: not run into a result file yet (`python -m benchmarks.drills`).", ""]
    else:
        from benchmarks.drills import durations_of

        out += [f"Drills (`tests/reliability`, {_drill_outcome(drills)}):", "", _drill_table(drills), "",
                "Test durations:", "",
                table(["test", "outcome", "s"], ([t, o, _num(sec, 1)] for t, o, sec in durations_of(drills))), "",
                *provenance_lines(drills)]
    for ba in noloss_throughput_runs(r):
        out += [f"### Worker throughput before / after (`benchmarks/before_after.py`, `{ba.name}.json`)", "",
                f"Backlog {_num(ba.params['backlog'])} alerts, profile `{ba.params['profile']}`, "
                f"{ba.params['rounds']} rounds, sides interleaved (order alternating per round). "
                f"Before: `{', '.join(c[:10] for c in ba.params['commits']['before'])}`; "
                f"after: `{', '.join(c[:10] for c in ba.params['commits']['after'])}`.", "",
                table(["engine", "before alerts/s (median)", "after alerts/s (median)", "change", "before runs (1-min load at start)",
                       "after runs"],
                      ([e, _num(ba.metrics[f"{e}_before_msgs_per_s_median"]), _num(ba.metrics[f"{e}_after_msgs_per_s_median"]),
                        _change(ba.metrics[f"{e}_before_msgs_per_s_median"], ba.metrics[f"{e}_after_msgs_per_s_median"]),
                        ", ".join(_run_with_load(x) for x in ba.runs if x["engine"] == e and x["side"] == "before"),
                        ", ".join(_run_with_load(x) for x in ba.runs if x["engine"] == e and x["side"] == "after")]
                       for e in ba.params["engines"])), "",
                *(f"- {note}" for note in ba.notes), "", *provenance_lines(ba)]
    return out


def _run_with_load(run: dict[str, Any]) -> str:
    load = (run.get("loadavg_at_start") or [None])[0]
    return f"{_num(run['msgs_per_s'])} (load {_num(load, 1)})"


def _change(before: Any, after: Any) -> str:
    ratio = _ratio(after, before)
    return "–" if ratio is None else f"{(ratio - 1) * 100:+.0f} %"


def outcomes_section(r: Results) -> list[str]:
    """Issue 15: what learning from outcomes costs the hot path."""
    out = ["## Learning from outcomes: the hot path's cost (issue 15)", ""]
    result = r.get("outcomes_cost")
    if result is None:
        return out + ["Not measured yet (`python -m benchmarks.outcomes_cost`).", ""]
    rows = []
    for path in ("lru", "redis"):
        for side in ("off", "on", "on_evidence"):
            m = result.metrics[path][side]
            rows.append([path, side, _num(m["cpu_us_per_alert"], 2), _num(m["wall_us_per_alert"], 2),
                         f"{m['cpu_change_pct']:+.1f}%" if "cpu_change_pct" in m else "–",
                         f"{m['wall_change_pct']:+.1f}%" if "wall_change_pct" in m else "–"])  # fmt: skip
    out += [result.params["what"], "", table(["path", "learning", "CPU µs/alert", "wall µs/alert", "CPU change", "wall change"], rows), ""]
    out += [f"One decision record: {_num(result.metrics['record_bytes'])} bytes of Redis (`MEMORY USAGE`).", ""]
    out += provenance_lines(result)
    e2e = r.get("outcomes_e2e")
    if e2e is None:
        return out + ["Worker end to end, learning off against on: not measured yet (`python -m benchmarks.outcomes_e2e`).", ""]
    p = e2e.params
    out += [f"Worker end to end (`benchmarks/outcomes_e2e.py`): backlog of {_num(p['backlog'])} `{p['profile']}` alerts, "
            f"{p['rounds']} interleaved rounds ({p['order']}), service {p['service']}.", ""]  # fmt: skip
    rows = [[str(x["round"] + 1), x["side"], _num(x["msgs_per_s"]), _num(x["cpu_us_per_alert"], 1), _num(x["worker_cpu_s"], 2),
             f"{x['load1_before']:.2f} → {x['load1_after']:.2f}", "yes" if x["complete"] else "**no**"] for x in e2e.runs]  # fmt: skip
    out += [table(["round", "learning", "alerts/s", "worker CPU µs/alert", "worker CPU s", "load (1 min)", "complete"], rows), ""]
    m = e2e.metrics
    out += [f"Medians: CPU per alert {_num(m['off']['cpu_us_per_alert'], 1)} → {_num(m['on']['cpu_us_per_alert'], 1)} µs "
            f"({m['cpu_change_pct']:+.1f}%; per round {', '.join(f'{c:+.1f}%' for c in m['cpu_change_pct_per_round'])}), "
            f"throughput {_num(m['off']['msgs_per_s'])} → {_num(m['on']['msgs_per_s'])} alerts/s "
            f"({m['throughput_change_pct']:+.1f}%).", ""]  # fmt: skip
    return out + provenance_lines(e2e)


def delivery_section(r: Results) -> list[str]:
    d = r.get("delivery_modes")
    if d is None:
        return ["## Delivery modes", "", "Not measured yet.", ""]
    out = ["## Delivery modes: at_least_once and exactly_once (issue 13)", ""]
    rows = []
    for x in d.runs:
        t, lat = x["throughput"], x["latency"]
        rows.append([f"`{x['mode']}`", str(x["round"] + 1), _num(t.get("msgs_per_s")), _num(t.get("decided")),
                     _num(lat["seen"].get("p50_ms"), 1), _num(lat["seen"].get("p99_ms"), 1), _num(lat["record"].get("p99_ms"), 1),
                     _num(t.get("duplicates", 0) + lat.get("duplicates", 0))])
    p = d.params
    out.append(table(["delivery", "round", f"alerts/s (backlog {_num(p.get('backlog'))})", "decided",
                      f"p50 ms seen at {_num(p.get('rate'))}/s", "p99 ms seen", "p99 ms by CreateTime", "duplicates"], rows))
    out += ["", *(f"- {n}" for n in d.notes), ""]
    return out + provenance_lines(d)


SECTIONS: tuple[Callable[[Results], list[str]], ...] = (
    header, service_section, throughput_section, latency_section, hitratio_section, memory_section, sink_section,
    api_section, api_isolation_section, profile_section, cache_section, noloss_section, delivery_section,
    outcomes_section,
)


def render_markdown(r: Results) -> str:
    return "\n".join(line for section in SECTIONS for line in section(r)).rstrip("\n") + "\n"


# --- README blocks -------------------------------------------------------------------------------------
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.S)
PENDING = "not measured by the current benchmarks yet (`python -m benchmarks.run_all` regenerates this)"


def _source(result: BenchResult, label: str | None = None) -> str:
    """Where a README figure comes from, short: file (or ``label``), date, commit, settings."""
    commit = result.git.get("commit") if result.git else None
    parts = [label or f"`{result.name}.json`", result.started_at[:10] or "date not recorded"]
    if commit:
        parts.append(f"commit {commit[:7]}" + (" with local changes" if result.git.get("dirty") else ""))
    else:
        parts.append("before issue 17: commit not recorded")
    note = settings_note(result)
    parts.append("default settings" if note == "defaults" else f"settings: {note}")
    return ", ".join(parts)


def block_performance(r: Results) -> str:
    lines = ["Every figure below is rendered from a result file in `benchmarks/results/` by `python -m benchmarks.report` "
             "(the full tables, with each run's command, commit and machine load: "
             "[`benchmarks/results/RESULTS.md`](benchmarks/results/RESULTS.md)).", ""]
    hit, typical = r.get("e2e_throughput_ci_failures_aiokafka"), r.get("e2e_throughput_typical_aiokafka")
    bare, naive, naive0 = r.get("baseline_bare"), r.get("baseline_naive"), r.get("baseline_naive_nolatency")
    if hit is not None:
        text = f"- Throughput, default engine, hit-heavy backlog: **{_num(rate(r, hit.name))} alerts/s**"
        if typical is not None:
            text += f" (`typical`: {_num(rate(r, typical.name))})"
        if bare is not None:
            problems = ceiling_mismatch(bare, hit)
            text += (f"; **{_num(_ratio(rate(r, hit.name), rate(r, bare.name)), 2)}×** the bare loop's "
                     f"{_num(rate(r, bare.name))} msg/s under the same Kafka settings (aim ≥ {AIM_OF_CEILING}×)"
                     if not problems else
                     "; no ratio to the bare loop, measured under other conditions")
        lines.append(text + f" ({_source(hit)}).")
    else:
        lines.append(f"- Throughput: {PENDING}.")
    if typical is not None and naive is not None and naive0 is not None:
        fair = same_service(typical, naive)
        model = service_of(typical.params)
        flatters = "" if model is None or model.per_item_ms else " (charged per request only, so batching looked free)"
        lines.append("- Against the naive one-alert-at-a-time path (`typical`): "
                     + (f"**{_num(_ratio(rate(r, typical.name), rate(r, naive.name)), 1)}×** with the same simulated "
                        f"service{flatters}" if fair else "no latency-bound ratio (different service models)")
                     + f", {_num(_ratio(rate(r, typical.name), rate(r, naive0.name)), 1)}× the naive path with an instant "
                     f"service ({_source(naive)}).")
    lat = r.get("e2e_latency_aiokafka")
    at_1k = next((x for x in lat.runs if x["rate"] == 1000), None) if lat is not None else None
    if at_1k is not None:
        lines.append(f"- Publish → decision at 1,000 alerts/s, default engine: p50 {_num(at_1k['record'].get('p50_ms'), 1)} ms, "
                     f"**p99 {_num(at_1k['record'].get('p99_ms'), 1)} ms** (aim ≤ {AIM_P99_MS_AT_1K:.0f} ms; LRU hits "
                     f"{_num(at_1k['by_tier'].get('lru', {}).get('p99_ms'), 1)} ms) ({_source(lat)}).")
    else:
        lines.append(f"- Latency: {PENDING}.")
    api = r.get("api")
    if api is not None and str(api.params.get("tool", "")).startswith("wrk"):
        single = {x["keys"]: x["latency"]["p99_ms"] for x in api.runs if x["shape"] == "single"}
        lines.append(f"- HTTP API, one alert per request: p99 {_num(single.get('repeat'), 1)} ms with a known key, "
                     f"{_num(single.get('fresh'), 1)} ms with a new one (aim ≤ {AIM_API_SINGLE_P99_MS:.0f} ms); "
                     f"{_num(api.metrics.get('rejected'))} rejected and {_num(api.metrics.get('errors'))} failed requests "
                     f"up to {_num(max(api.params.get('concurrency') or [1]))} connections ({_source(api)}).")
    else:
        lines.append(f"- HTTP API: {PENDING}.")
    return "\n".join(lines) + "\n"


def block_engines(r: Results) -> str:
    ours, faust = r.get("e2e_throughput_ci_failures_aiokafka"), r.get("e2e_throughput_ci_failures")
    if ours is None or faust is None:
        return f"Second, it is faster: {PENDING}.\n"
    return (f"Second, it is faster: {_num(rate(r, ours.name))} against {_num(rate(r, faust.name))} alerts/s on the "
            f"hit-heavy backlog, {_num(_ratio(rate(r, ours.name), rate(r, faust.name)), 1)}× (aiokafka: {_source(ours)}; "
            f"faust: {_source(faust)}).\n")


def block_sink_fsync(r: Results) -> str:
    sk = r.get("sink")
    runs = [x for x in sk.runs if x.get("backend") == "embedded" and "write" in x] if sk is not None else []
    on = sorted(x["write"]["p50_ms"] for x in runs if x["fsync"])
    off = sorted(x["write"]["p50_ms"] for x in runs if not x["fsync"])
    advice = "turn it on where a power loss must not lose rows."
    if not on or not off:
        return f"The journal is not fsynced by default (what `STREAM_ENGINE_SINK_FSYNC=true` costs a write: {PENDING}); {advice}\n"
    span = lambda v: f"{v[0]:.1f}" if f"{v[0]:.1f}" == f"{v[-1]:.1f}" else f"{v[0]:.1f}–{v[-1]:.1f}"  # noqa: E731
    return (f"The journal is not fsynced by default: with `STREAM_ENGINE_SINK_FSYNC=true` a 500-row write took p50 "
            f"{span(on)} ms instead of {span(off)} ms ({len(on)} run{'s' if len(on) > 1 else ''} each; {_source(sk)}); {advice}\n")


def block_memory(r: Results) -> str:
    """Issue 16's worker memory, before and after, per engine; a longer run; the embedded engine's cost."""
    views = dict(memory_runs(r))
    default = next((n for n in ("memory_http_aiokafka", "memory_http") if f"{n}@before" in views), None)
    if default is None:
        return f"A default worker's memory, before and after issue 16: {PENDING}.\n"

    def mb(result: BenchResult, key: str) -> str:
        value = result.metrics.get(key)
        return _num(value, 1) if isinstance(value, (int, float)) else "–"

    def signed(result: BenchResult, key: str) -> str:
        value = result.metrics.get(key)
        return f"{value:+.1f}" if isinstance(value, (int, float)) else "–"

    lines = []
    for name in (n for n in ("memory_http_aiokafka", "memory_http") if f"{n}@before" in views):
        now, old = views[name], views[f"{name}@before"]
        cached = now.params.get("cached")
        ckey = f"rss_with_{cached}_cached_mb"
        is_default = name == default  # the targets are the default worker's
        head = (f"Default worker ({now.params.get('engine')} engine, ClickHouse over HTTP), before → after issue 16: "
                if is_default else f"{str(now.params.get('engine')).capitalize()} engine, over HTTP: ")
        idle_aim = f" (target ≤ {_num(AIM_RSS_IDLE_MB)} MB)" if is_default else ""
        cached_aim = f" (≤ {_num(AIM_RSS_CACHED_MB)} MB)" if is_default else ""
        growth_aim = f"; target < {_num(AIM_GROWTH_PER_100K_MB)} MB" if is_default else ""
        earlier = f"its earlier run (`params.before`, from `{old.name}.json`)"
        lines.append(
            f"- {head}**{mb(old, 'rss_idle_mb')} → {mb(now, 'rss_idle_mb')} MB idle**{idle_aim}, "
            f"{mb(old, ckey)} → {mb(now, ckey)} MB with {_num(cached)} cached propositions{cached_aim}, "
            f"{signed(old, 'growth_first_step_per_100k_mb')} → {signed(now, 'growth_first_step_per_100k_mb')} MB over the "
            f"first {_num(now.params.get('step_alerts'))} alerts, then {signed(old, 'growth_per_100k_slope_mb')} → "
            f"{signed(now, 'growth_per_100k_slope_mb')} MB per 100k (slope over the later readings{growth_aim}); "
            f"the ClickHouse endpoint's own process {mb(now, 'clickhouse_process_rss_mb')} MB "
            f"({_source(now)}; before: {_source(old, earlier)}).")
    for name, x in views.items():  # the other HTTP runs (e.g. longer ones), without an earlier run
        if not name.startswith("memory_http") or name.endswith("@before") or f"{name}@before" in views:
            continue
        readings = ", ".join(_num(p["rss_mb"], 1) for p in x.runs if str(p.get("stage", "")).startswith("after_step"))
        slope, ckey = x.metrics.get("growth_per_100k_slope_mb"), f"rss_with_{x.params.get('cached')}_cached_mb"
        verdict = "within" if isinstance(slope, (int, float)) and slope < AIM_GROWTH_PER_100K_MB else "above"
        lines.append(
            f"- {x.params.get('steps')} × {_num(x.params.get('step_alerts'))} alerts, {x.params.get('engine')} engine over HTTP: "
            f"{mb(x, 'rss_idle_mb')} MB idle, {mb(x, ckey)} MB with "
            f"{_num(x.params.get('cached'))} cached, then {readings} MB after each step; slope "
            f"{signed(x, 'growth_per_100k_slope_mb')} MB per 100k, {verdict} the {_num(AIM_GROWTH_PER_100K_MB)} MB target "
            f"({_source(x)}).")
    embedded = views.get("memory_aiokafka") or views.get("memory")
    if embedded is not None and isinstance(embedded.metrics.get("rss_idle_mb"), (int, float)):
        cached = embedded.params.get("cached")
        engine = f"{embedded.params['engine']} engine" if embedded.params.get("engine") else "engine not recorded"
        lines.append(f"- With the engine in the worker (`chdb://`): {mb(embedded, 'rss_idle_mb')} MB idle, "
                     f"{mb(embedded, f'rss_with_{cached}_cached_mb')} MB with {_num(cached)} cached ({engine}; {_source(embedded)}).")
    return "\n".join(lines) + "\n"


def block_service_shape(r: Results) -> str:
    shape = r.get("service_shape")
    fit = shape.metrics.get("fastest", {}) if shape is not None else {}
    implied = fit.get("implied_per_item_ms_at_model_median")
    if not isinstance(implied, (int, float)) or implied <= 0:
        return f"The reference endpoint's measured shape: {PENDING}.\n"
    ratio = SERVICE.per_item_ms / implied
    verdict = ("within a factor of 2 of it" if 0.5 <= ratio <= 2 else
               "**more than a factor of 2 away from it: revisit `benchmarks.services.SERVICE`**")
    return (f"Measured ({_source(shape)}): {_num(fit.get('fixed_ms'), 2)} ms per request + "
            f"{_num(fit.get('per_item_ms'), 4)} ms per item through the fastest requests, i.e. "
            f"{_pct(fit.get('per_item_share_of_fixed'))} of a request per item, {_num(implied, 3)} ms per item at "
            f"{SERVICE.median_ms:g} ms per request; the model's {SERVICE.per_item_ms:g} ms is {verdict}.\n")


def block_coherence(r: Results) -> str:
    before, after = r.get("coherence_before"), r.get("coherence_after")
    if before is None or after is None:
        return f"Stale decisions after invalidations under load: {PENDING}.\n"
    b, a = before.metrics, after.metrics
    rates = sorted({x["rate"] for x in after.runs if "rate" in x})
    seconds = sorted({x["seconds"] for x in after.runs})
    backends = ", ".join(f"{x['backend']} ({x['engine']})" for x in after.runs)
    return (f"Before issue 12's fixes **{_num(b['stale'])} of {_num(b['checked'])}** checked decisions were stale "
            f"({_num(b['seconds'])} s, single Redis; {_source(before)}); after them **{_num(a['stale'])} of "
            f"{_num(a['checked'])}** over {a['runs']} runs of {'/'.join(_num(s) for s in seconds)} s at "
            f"{'/'.join(_num(x) for x in rates)} alerts/s — {backends} — and {_num(a['missing'])} alerts without a decision "
            f"({_source(after)}).\n")


def block_drills(r: Results) -> str:
    drills = r.get("drills")
    if drills is None:
        return "Drill accounting: not run into a result file yet (`python -m benchmarks.drills`).\n"
    return (f"Last recorded run ({_drill_outcome(drills)}; {_source(drills)}):\n\n{_drill_table(drills)}\n")


def block_noloss_throughput(r: Results) -> str:
    runs = noloss_throughput_runs(r)
    if not runs:
        return f"Throughput before/after these changes: {PENDING}.\n"
    lines = []
    for ba in runs:
        parts = [f"{e} {_num(ba.metrics[f'{e}_before_msgs_per_s_median'])} → {_num(ba.metrics[f'{e}_after_msgs_per_s_median'])} "
                 f"alerts/s ({_change(ba.metrics[f'{e}_before_msgs_per_s_median'], ba.metrics[f'{e}_after_msgs_per_s_median'])})"
                 for e in ba.params["engines"]]
        load = [x["loadavg_at_start"][0] for x in ba.runs if x.get("loadavg_at_start")]
        lines.append(f"- Before → after (medians of {ba.params['rounds']} interleaved runs per side, "
                     f"{_num(ba.params['backlog'])}-alert `{ba.params['profile']}` backlog, 1-min load "
                     f"{_num(min(load), 1)}–{_num(max(load), 1)}): {'; '.join(parts)} ({_source(ba)}).")
    return "\n".join(lines) + "\n"


def noloss_throughput_runs(r: Results) -> list[BenchResult]:
    """Every before/after run of the no-loss changes (``noloss_throughput``, ``noloss_throughput_2`` …)."""
    return [r[name] for name in sorted(r) if name.startswith("noloss_throughput")]


def block_redis_cluster_layout(r: Results) -> str:
    by_batch = {x.params["batch"]: x.metrics for name, x in r.items() if name.startswith("redis_cluster_layout_")}
    if not by_batch:
        return f"Hash-tagged buckets against per-slot pipelines: {PENDING}.\n"
    parts = []
    for batch in sorted(by_batch, reverse=True):
        m = by_batch[batch]
        ours, slot = m["buckets_64"], m["per_slot"]
        parts.append(f"{_num(batch)} keys: read {_num(ours['read_median_ms'], 1)} ms against {_num(slot['read_median_ms'], 1)} ms, "
                     f"write {_num(ours['write_median_ms'], 1)} ms against {_num(slot['write_median_ms'], 1)} ms")
    largest = by_batch[max(by_batch)]
    vs16 = [_ratio(largest["buckets_64"][k], largest["buckets_16"][k]) for k in ("read_median_ms", "write_median_ms")]
    sources = ", ".join(_source(x) for name, x in sorted(r.items()) if name.startswith("redis_cluster_layout_"))
    return (f"Median batch time on the local 3-master cluster, 64 hash-tagged buckets against per-slot pipelines: "
            f"{'; '.join(parts)}. 64 buckets rather than 16 take {_num(vs16[0], 2)}× (read) and {_num(vs16[1], 2)}× (write) "
            f"the time of 16 at {_num(max(by_batch))} keys ({sources}).\n")


def block_outcomes(r: Results) -> str:
    result = r.get("outcomes_cost")
    if result is None:
        return f"What learning from outcomes costs the hot path: {PENDING}.\n"
    m = result.metrics
    parts = []
    for path, label in (("lru", "warm LRU"), ("redis", "LRU cleared every 10 batches")):
        off, on, ev = m[path]["off"], m[path]["on"], m[path]["on_evidence"]
        parts.append(f"{label}: {_num(off['cpu_us_per_alert'], 1)} µs of CPU per alert off, {_num(on['cpu_us_per_alert'], 1)} µs on "
                     f"({on['cpu_change_pct']:+.1f}%), {_num(ev['cpu_us_per_alert'], 1)} µs with verdicts on every key "
                     f"({ev['cpu_change_pct']:+.1f}%)")
    ttl_s = Settings().outcome_record_ttl_s
    text = (f"In-process, triage core plus the decision records (`benchmarks/outcomes_cost.py`, medians of "
            f"{result.params['rounds']} alternated rounds): {'; '.join(parts)}. One decision record holds "
            f"{_num(m['record_bytes'])} bytes of Redis ({_source(result)}): at 1,000 alerts/s the default hot window "
            f"({_num(ttl_s)} s) holds {_num(m['record_bytes'] * 1000 * ttl_s / 1e6)} MB of records, where keeping them for "
            f"the whole outcome window ({_num(Settings().outcome_window_s / 86400)} days) would take "
            f"{_num(m['record_bytes'] * 1000 * Settings().outcome_window_s / 1e9)} GB.")
    e2e = r.get("outcomes_e2e")
    if e2e is None:
        return text + " The worker's end-to-end cost: " + PENDING + ".\n"
    em, p = e2e.metrics, e2e.params
    return text + (
        f" **End to end**, a worker draining a backlog of {_num(p['backlog'])} `{p['profile']}` alerts, learning off and on "
        f"interleaved ({p['rounds']} rounds each, the load average between {em['load1'][0]:.1f} and {em['load1'][1]:.1f} on "
        f"{p['cores']} shared cores): the worker's CPU per alert {_num(em['off']['cpu_us_per_alert'], 1)} → "
        f"{_num(em['on']['cpu_us_per_alert'], 1)} µs (**{em['cpu_change_pct']:+.1f}%**, per round "
        f"{', '.join(f'{c:+.1f}%' for c in em['cpu_change_pct_per_round'])}: median {em['cpu_change_pct_paired_median']:+.1f}%), "
        f"throughput {_num(em['off']['msgs_per_s'])} → "
        f"{_num(em['on']['msgs_per_s'])} alerts/s ({em['throughput_change_pct']:+.1f}%, wall time on a loaded machine) "
        f"({_source(e2e)}).\n")


def block_api_isolation(r: Results) -> str:
    bounded, lifted = (r.get(n) for n in ISOLATION_RUNS)
    if bounded is None:
        return f"The worker's RSS under the flood: {PENDING}.\n"
    p, m = bounded.params, bounded.metrics
    growth = sorted(x["growth_mib"] for x in bounded.runs)
    spread = lambda key: "–".join(dict.fromkeys(_num(v) for v in sorted(x["answers"].get(key, 0) for x in bounded.runs)))  # noqa: E731
    decided = "all" if m.get("stream_decided_all") else "**not all**"
    text = (f"Measured: under {_num(p['connections'])} concurrent requests of {p['alerts_per_request']} alerts, with "
            f"{p['stream_alerts']} stream alerts published meanwhile, the worker's peak RSS grew "
            f"**{' / '.join(_num(g, 1) for g in growth)} MiB** over {len(growth)} runs, "
            f"{'within' if m.get('within_budget') else '**above**'} the {_num(m['budget_mib'], 1)} MiB budget; answers "
            f"200: {spread('200')}, 429: {spread('429')}, 503: {spread('503')}; {decided} stream alerts decided "
            f"({_source(bounded)}).")
    if lifted is not None:
        lifted_growth = " / ".join(_num(x["growth_mib"], 1) for x in lifted.runs)
        text += (f" With the connection bound lifted, the same load grew it **{lifted_growth} MiB** "
                 f"({_source(lifted)}).")
    return text + "\n"


def block_delivery(r: Results) -> str:
    """Issue 13: the two delivery modes side by side, same machine, runs interleaved."""
    d = r.get("delivery_modes")
    if d is None:
        return f"  At-least-once against exactly-once: {PENDING}.\n"
    p = d.params
    rows = []
    for mode in ("at_least_once", "exactly_once"):
        m = d.metrics.get(mode, {})
        rows.append([f"`{mode}`", _num(m.get("msgs_per_s_median")), _num(m.get("seen_p50_ms_median"), 1),
                     _num(m.get("seen_p99_ms_median"), 1), _num(m.get("record_p99_ms_median"), 1),
                     _num(m.get("duplicates")), _num(m.get("incomplete_runs"))])
    head = ["delivery", f"alerts/s (backlog {_num(p.get('backlog'))}, {p.get('throughput_profile')})",
            f"p50 ms seen at {_num(p.get('rate'))}/s", "p99 ms seen", "p99 ms by CreateTime", "duplicates", "incomplete runs"]
    body = "\n".join("  " + line for line in table(head, rows).splitlines())
    alo, eos = (d.metrics.get(m, {}) for m in ("at_least_once", "exactly_once"))
    ratio = _ratio(eos.get("msgs_per_s_median"), alo.get("msgs_per_s_median"))
    return (f"{body}\n\n  Medians of {p.get('rounds')} interleaved rounds per mode, a fresh worker per run, {p.get('engine')} "
            f"engine; `seen` = publish → a read_committed consumer receives the decision (for exactly_once after the "
            f"commit), CreateTime = publish → the decision record's timestamp (before the commit). exactly_once ran at "
            f"{_num(ratio, 2)}× the at-least-once throughput ({_source(d)}).\n")


README_BLOCKS: dict[str, Callable[[Results], str]] = {
    "outcomes": block_outcomes,
    "delivery": block_delivery,
    "performance": block_performance,
    "service-shape": block_service_shape,
    "engines": block_engines,
    "sink-fsync": block_sink_fsync,
    "memory": block_memory,
    "coherence": block_coherence,
    "redis-cluster-layout": block_redis_cluster_layout,
    "drills": block_drills,
    "noloss-throughput": block_noloss_throughput,
    "api-isolation": block_api_isolation,
}


def render_readme(text: str, r: Results) -> str:
    """``text`` with every bench block's body regenerated; an unknown block name is an error."""

    def body(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in README_BLOCKS:
            raise KeyError(f"README block bench:{name} has no renderer (known: {sorted(README_BLOCKS)})")
        return match.group(1) + README_BLOCKS[name](r) + match.group(4)

    return BLOCK.sub(body, text)


# --- figures outside the blocks ------------------------------------------------------------------------
FIGURE = re.compile(
    r"(?<![\w.\-/`])[~≈+]?\d[\d,]*(?:\.\d+)?(?:\s*[–-]\s*\d[\d,]*(?:\.\d+)?)?\s?"
    r"(?:alerts/s|msgs?/s|rows/s|events/s|req(?:uests)?/s|/s\b|ms\b|µs\b|us\b|s\b|min\b|minutes\b|MB\b|GB\b|kB\b|KB\b|%|×)"
)
# Figures outside the blocks that are not measurements: settings, targets, drill parameters.
NOT_MEASURED = frozenset({
    "(50 ms)",  # STREAM_ENGINE_FETCH_MAX_WAIT_MS's default
    "1500 ms",  # faust's hard-coded fetch wait
    "2.5 s",  # the drill's proposition-service latency
    "30 s",  # journal adoption period
})


def unbacked_figures(text: str) -> list[str]:
    """Measured-looking figures (a number with a unit of time, rate, size, share or ratio) outside the
    bench blocks, less the NOT_MEASURED ones."""
    outside = BLOCK.sub("", text)
    found = []
    for line in outside.splitlines():
        for match in FIGURE.finditer(line):
            figure = match.group(0).strip()
            if not any(figure in allowed or allowed.strip("()") == figure for allowed in NOT_MEASURED):
                found.append(f"{figure!r} in: {line.strip()[:160]}")
    return found


# --- entry point ------------------------------------------------------------------------------------------
def render(directory: Path = RESULTS_DIR, readmes: Iterable[Path] = READMES, plots: bool = True) -> Path:
    """Rewrite RESULTS.md (and the READMEs' blocks, and the plots) from the JSON in ``directory``."""
    results = load_all(directory)
    path = directory / "RESULTS.md"
    path.write_text(render_markdown(results))
    for readme in readmes:
        readme.write_text(render_readme(readme.read_text(), results))
    if plots:
        from benchmarks.plots import render_plots

        render_plots(results, directory)
    return path


def check(directory: Path = RESULTS_DIR, readmes: Iterable[Path] = READMES) -> list[str]:
    """What is stale or unbacked (empty: everything is rendered from the JSON). The first README
    is also searched for figures outside its blocks."""
    results = load_all(directory)
    problems = []
    if (directory / "RESULTS.md").read_text() != render_markdown(results):
        problems.append("RESULTS.md differs from what the JSON renders: python -m benchmarks.report")
    for i, readme in enumerate(readmes):
        text = readme.read_text()
        if render_readme(text, results) != text:
            problems.append(f"{readme.name} bench blocks differ from what the JSON renders: python -m benchmarks.report")
        if i == 0:
            problems += [f"README figure without a result file: {x}" for x in unbacked_figures(text)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale or unbacked")
    parser.add_argument("--no-readme", action="store_true", help="leave the READMEs alone (e.g. a scratch results dir)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.results_dir)
        print("\n".join(problems) or "RESULTS.md and the README's figures are what the JSON renders")
        return 1 if problems else 0
    print(render(args.results_dir, () if args.no_readme else READMES, plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
