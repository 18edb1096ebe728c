"""RESULTS.md and PNG plots from the JSON results in a directory.

    python -m benchmarks.report [--results-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.api import CACHING_TARGET, REFERENCE_P99_MS
from benchmarks.common import RESULTS_DIR, BenchResult
from benchmarks.hitratio import verdict

AIM_ALERTS_PER_S = 25_000
AIM_OF_BARE = 0.5
AIM_OF_NAIVE = 10.0
AIM_P99_MS_AT_1K = 50.0


def _memory_results(r: dict[str, BenchResult]) -> list[tuple[str, str]]:
    """The memory runs present, with their column labels (an earlier run they carry comes first)."""
    labels = (("memory_http_aiokafka", "ClickHouse over HTTP, aiokafka engine (the defaults; docker-compose)"),
              ("memory_http", "ClickHouse over HTTP, faust engine"),
              ("memory", "ClickHouse embedded (chdb://, in the worker)"),
              ("memory_aiokafka", "ClickHouse embedded, aiokafka engine"))
    out: list[tuple[str, str]] = []
    for name, label in labels:
        if name in r:
            before = r[name].params.get("before")
            if before:
                out.append((f"{name}@before", f"{label}, before (commit {before.get('commit')})"))
            out.append((name, label))
    return out


def _memory_view(r: dict[str, BenchResult], name: str) -> BenchResult:
    """A result, or (``name@before``) the earlier run it carries, as a result of its own."""
    if not name.endswith("@before"):
        return r[name]
    current = r[name.removesuffix("@before")]
    before = current.params["before"]
    return BenchResult(name, before["command"], current.params, before["metrics"], before["runs"])


def load_all(directory: Path) -> dict[str, BenchResult]:
    return {p.stem: BenchResult.load(p) for p in sorted(directory.glob("*.json"))}


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def throughput_rows(r: dict[str, BenchResult]) -> tuple[list[list[str]], dict[str, float | None]]:
    get = lambda name: r[name].metrics.get("msgs_per_s_median") if name in r else None  # noqa: E731
    bare, naive, naive0 = get("baseline_bare"), get("baseline_naive"), get("baseline_naive_nolatency")
    ours_hit, ours_typ = get("e2e_throughput_ci_failures"), get("e2e_throughput_typical")
    ak_hit, ak_typ = get("e2e_throughput_ci_failures_aiokafka"), get("e2e_throughput_typical_aiokafka")
    ratios = {
        "aiokafka_hit_heavy_vs_bare": _ratio(ak_hit, bare),
        "aiokafka_typical_vs_naive": _ratio(ak_typ, naive),
        "hit_heavy_vs_bare": _ratio(ours_hit, bare),
        "typical_vs_naive": _ratio(ours_typ, naive),
        "hit_heavy_vs_naive": _ratio(ours_hit, naive),
        "typical_vs_naive_nolatency": _ratio(ours_typ, naive0),
    }
    def runs(name: str) -> str:
        return str(len(r[name].runs)) if name in r else "–"
    def cpu(name: str) -> str:
        if name not in r:
            return "–"
        values = [x.get("worker_cpu_per_wall_s") for x in r[name].runs if x.get("worker_cpu_per_wall_s") is not None]
        return f"{sorted(values)[len(values) // 2]:.2f}" if values else "–"
    rows = [
        ["bare aiokafka consume→produce (ceiling)", _num(bare), runs("baseline_bare"), "–", "–"],
        ["naive: one alert at a time, service 20/50 ms", _num(naive, 1), runs("baseline_naive"), "–", "–"],
        ["naive, service without latency", _num(naive0, 1), runs("baseline_naive_nolatency"), "–", "–"],
        ["**engine, `--engine faust`**, hit-heavy (ci_failures), service 20/50 ms", _num(ours_hit), runs("e2e_throughput_ci_failures"),
         cpu("e2e_throughput_ci_failures"), f"{_num(ratios['hit_heavy_vs_bare'], 2)}× bare (aim ≥ {AIM_OF_BARE}); "
         f"aim ≥ {AIM_ALERTS_PER_S:,}/s"],
        ["**engine, `--engine faust`**, typical, service 20/50 ms", _num(ours_typ), runs("e2e_throughput_typical"),
         cpu("e2e_throughput_typical"), f"{_num(ratios['typical_vs_naive'], 1)}× naive (aim ≥ {AIM_OF_NAIVE:.0f}×)"],
    ]
    if ak_hit is not None or ak_typ is not None:
        params = r.get("e2e_throughput_ci_failures_aiokafka", r.get("e2e_throughput_typical_aiokafka")).params
        concurrency = params.get("batch_concurrency")
        aiokafka = "**engine, aiokafka (default)**" + (f" `batch_concurrency={concurrency}`" if concurrency != 2 else "")
        rows += [
            [f"{aiokafka}, hit-heavy, service 20/50 ms", _num(ak_hit),
             runs("e2e_throughput_ci_failures_aiokafka"), cpu("e2e_throughput_ci_failures_aiokafka"),
             f"{_num(ratios['aiokafka_hit_heavy_vs_bare'], 2)}× bare (aim ≥ {AIM_OF_BARE}); aim ≥ {AIM_ALERTS_PER_S:,}/s"],
            [f"{aiokafka}, typical, service 20/50 ms", _num(ak_typ),
             runs("e2e_throughput_typical_aiokafka"), cpu("e2e_throughput_typical_aiokafka"),
             f"{_num(ratios['aiokafka_typical_vs_naive'], 1)}× naive (aim ≥ {AIM_OF_NAIVE:.0f}×)"],
        ]
    return rows, ratios


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(r: dict[str, BenchResult], command: str) -> str:
    any_result = next(iter(r.values()), None)
    machine = any_result.machine if any_result else {}
    started = min((x.started_at for x in r.values() if x.started_at), default="?")
    loads = [x.machine.get("loadavg_at_start", [None])[0] for x in r.values()]
    out = [
        "# Benchmark results",
        "",
        f"- **Command**: `{command}`",
        f"- **Date**: {started} (UTC)",
        f"- **Machine**: nproc={machine.get('nproc')}, RAM={_num(machine.get('ram_mb'))} MB, CPU={machine.get('cpu')}, "
        f"Python {machine.get('python')}, Kafka {machine.get('kafka')}, {machine.get('platform')}",
        f"- **Load average (1 min) at the start of each benchmark**: {', '.join(_num(x, 2) for x in loads if x is not None)} "
        "(2 cores: anything above ~0.3 means other work shared the machine)",
        "- Every number below comes from the JSON next to this file (same directory), which also holds each run.",
        "",
        "## Throughput (alerts/s, median of runs)",
        "",
    ]
    rows, _ = throughput_rows(r)
    out.append(table(["path", "alerts/s", "runs", "worker CPU s / wall s", "vs"], rows))
    out += ["", "![throughput](throughput.png)", ""]

    for name, engine in (("e2e_latency", "faust"), ("e2e_latency_aiokafka", "aiokafka")):
        if name not in r:
            continue
        lat = r[name]
        out += [f"## Publish → decision latency at fixed rates, engine `{engine}` (profile `{lat.params.get('profile')}`, "
                f"service median {lat.params.get('service_median_ms')} ms / p99 {lat.params.get('service_p99_ms')} ms)", ""]
        rows = []
        for run in lat.runs:
            rec, seen, lru = run["record"], run["seen"], run["by_tier"].get("lru", {})
            rows.append([_num(run["rate"]), _num(run["achieved_publish_rate"]), _num(run["decided"]),
                         _num(rec.get("p50_ms"), 1), _num(rec.get("p95_ms"), 1), _num(rec.get("p99_ms"), 1),
                         _num(rec.get("max_ms"), 1), _num(lru.get("p99_ms"), 1), _num(seen.get("p99_ms"), 1),
                         ", ".join(f"{k} {v}" for k, v in sorted(run["tiers"].items()))])
        out.append(table(["rate/s", "achieved", "decided", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99 ms (lru hits)",
                          "p99 ms (seen by consumer)", "tiers"], rows))
        out += ["", f"Aim: p99 ≤ {AIM_P99_MS_AT_1K:.0f} ms at 1k alerts/s on hits (column *lru hits*).", ""]
        if engine == "faust":
            out += ["![latency](latency.png)", ""]

    if "hitratio" in r:
        hr = r["hitratio"]
        out += [f"## Hit ratio per profile ({_num(hr.params.get('size'))} alerts at {_num(hr.params.get('rate'))}/s, "
                f"LRU {_num(hr.params.get('lru_size_per_partition'))}/partition, TTL {_num(hr.params.get('lru_ttl_s'))} s)", ""]
        rows = []
        for row in hr.runs:
            b, eng = row["bounds"], row.get("engine", {})
            target = row.get("target")
            target_text = "–" if not target else (f"≥ {target[0]:.0%}" if target[1] is None else f"{target[0]:.0%}–{target[1]:.0%}")
            rows.append([row["profile"], _num(row["distinct_keys"]), _pct(eng.get("hit_ratio")), _pct(eng.get("service_avoided_ratio")),
                         _pct(b["best_achievable"]), _pct(b["lru"]), _pct(b.get("lru_batched")), target_text,
                         verdict(row["profile"], eng.get("hit_ratio"))])
        batch = hr.runs[0].get("expected_batch", "?") if hr.runs else "?"
        out.append(table(["profile", "distinct keys", "engine hit ratio", "engine: alerts not sent to service",
                          "trace optimum", "LRU bound", f"LRU, batched lookups (batch≈{batch})",
                          "target", "verdict"], rows))
        out += ["", "Trace optimum = min(1 − compulsory misses within the TTL, Belady OPT at the LRU capacity). "
                "TTL optimum of the larger sweep trace if it arrived slowly (the TTL starts to matter):", ""]
        rows = [[row["profile"], *(_pct(v) for v in row["ttl_optimum_by_rate"].values())] for row in hr.runs]
        rates = list(hr.runs[0]["ttl_optimum_by_rate"]) if hr.runs else []
        out.append(table(["profile", *(f"{x}/s" for x in rates)], rows))
        out += ["", "![hit ratio](hitratio.png) ![capacity](hitratio_capacity.png)", ""]

    mems = _memory_results(r)
    if mems:
        out += ["## Worker memory (RSS)", ""]

        def cell(name: str, key: str) -> str:
            value = _memory_view(r, name).metrics.get(key)
            return f"{_num(value, 1)} MB" if value is not None else "–"

        cached = _memory_view(r, mems[0][0]).params.get("cached")
        rows = [
            ["idle", *(cell(n, "rss_idle_mb") for n, _ in mems), "≤ 64 MB (HTTP)"],
            [f"with {cached} cached propositions", *(cell(n, f"rss_with_{cached}_cached_mb") for n, _ in mems), "≤ 100 MB (HTTP)"],
            ["growth, first step, per 100k alerts", *(cell(n, "growth_first_step_per_100k_mb") for n, _ in mems), "–"],
            ["growth, later steps, per 100k alerts (median)", *(cell(n, "growth_per_100k_steady_mb") for n, _ in mems), "–"],
            ["growth after the first step, per 100k alerts (slope)", *(cell(n, "growth_per_100k_slope_mb") for n, _ in mems),
             "< 1 MB per 100k"],
            ["the separate ClickHouse process (the chDB endpoint)", *(cell(n, "clickhouse_process_rss_mb") for n, _ in mems), "–"],
        ]
        out.append(table(["measure", *(label for _, label in mems), "target"], rows))
        out += ["", "![memory](memory.png)", ""]

    if "sink" in r:
        sk = r["sink"]
        out += [f"## ClickHouse sink ({_num(sk.params.get('rows'))} rows in batches of {sk.params.get('batch')}, "
                "without Kafka)", ""]
        out.append(table(["backend", "fsync", "durable rows/s (journal)", "rows/s in ClickHouse", "flushes", "rows per flush"], [
            [x["backend"], "on" if x["fsync"] else "off", _num(x["durable_rows_per_s"]), _num(x["inserted_rows_per_s"]),
             _num(x["flushes"]), _num(x["flush_rows_avg"])] for x in sk.runs
        ]))
        out += ["", "*http* is the stack's ClickHouse endpoint (chDB in its own process behind the HTTP interface), "
                "not a clickhouse-server.", ""]

    if "profile_worker" in r:
        p = r["profile_worker"]
        summary = p.runs[1] if len(p.runs) > 1 else {}
        out += [f"## Where the worker's time goes at maximum throughput (py-spy, {_num(summary.get('samples'))} samples, "
                f"{_num(p.metrics.get('msgs_per_s_while_sampled'))} alerts/s while sampled)", ""]
        out.append(table(["area", "% of samples"], [[a, f"{v:.1f}"] for a, v in summary.get("by_area", {}).items()]))
        own = [[f"`{x['frame']}`", f"{x['pct']:.1f}"] for x in summary.get("top_own", [])[:15]]
        out += ["", table(["function (own time)", "% of samples"], own), ""]

    out += api_section(r)
    return "\n".join(out)


def api_verdict(p99: Any, target: Any) -> str:
    if not isinstance(p99, (int, float)):
        return "–"
    if target is None:
        return f"no target ({'<' if p99 < REFERENCE_P99_MS else '≥'} {REFERENCE_P99_MS / 1000:.0f} s)"
    return "met" if p99 < target else "**missed**"


def api_section(r: dict[str, BenchResult]) -> list[str]:
    if "api" not in r:
        return ["## API targets (`POST /api/v1/alerts/process`)", "", "Not measured in this run (`python -m benchmarks.api`).", ""]
    api = r["api"]
    out = [f"## API targets (`POST /api/v1/alerts/process` on a worker subprocess, service median "
           f"{api.params.get('service_median_ms')} ms / p99 {api.params.get('service_p99_ms')} ms, {api.params.get('client')})", "",
           f"Command: `{api.command}`, {api.started_at} (UTC), load average (1 min) "
           f"{_num(api.machine.get('loadavg_at_start', [None])[0], 2)} at the start and "
           f"{_num(api.machine.get('loadavg_at_end', [None])[0], 2)} at the end.", ""]
    rows = []
    for row in api.runs:
        if row.get("cache") not in ("cold", "warm"):
            continue
        lat, target = row["latency"], row.get("target_p99_ms")
        rows.append([row["shape"], row["cache"], _num(row["requests"]), _num(row["alerts"]), _num(lat.get("p50_ms"), 1),
                     _num(lat.get("p95_ms"), 1), _num(lat.get("p99_ms"), 1), _num(lat.get("max_ms"), 1),
                     _num(row["alerts_per_s"]), ", ".join(f"{k} {v}" for k, v in sorted(row["tiers"].items())),
                     str(sum(row["degraded"].values())), f"{row['client_queued']} / {_num(row['client_start_lag_ms'], 1)} ms",
                     f"{_num(row.get('worker_cpu_per_wall_s'), 2)}",
                     "–" if target is None else f"< {_num(target)} ms", api_verdict(lat.get("p99_ms"), target)])
    out.append(table(["shape", "cache", "requests", "alerts", "p50 ms", "p95 ms", "p99 ms", "max ms", "alerts/s", "tiers",
                      "degraded", "client queued / start lag", "worker CPU s / wall s", "target p99", "verdict"], rows))
    low, high = CACHING_TARGET
    reductions = api.metrics.get("caching_p50_reduction", {})
    out += ["", f"Latency reduction from caching (1 − warm p50 / cold p50; target {low:.0%}–{high:.0%} lower): "
            + ", ".join(f"{shape} {_pct(v)}" for shape, v in reductions.items()) + ".",
            "cold = every alert's key new (LRU + Redis miss, one service call per request); warm = keys answered just "
            "before (the API's LRU pseudo-partition). *client queued*: requests that waited for a client connection; "
            "*start lag*: how late the client sent the last request of a round (its own event loop). Latency is "
            "client-side, send → last response byte.", "", "![api](api.png)", ""]
    return out


def render_plots(r: dict[str, BenchResult], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    subtitle = ""
    if r:
        m = next(iter(r.values())).machine
        subtitle = f"{m.get('nproc')} cores, {m.get('cpu')}, Python {m.get('python')}, Kafka {m.get('kafka')}"

    def save(fig: Any, name: str) -> None:
        fig.text(0.01, 0.01, subtitle, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    names = [("baseline_bare", "bare loop"), ("baseline_naive", "naive\n(20 ms svc)"),
             ("baseline_naive_nolatency", "naive\n(0 ms svc)"), ("e2e_throughput_ci_failures", "engine\nhit-heavy"),
             ("e2e_throughput_typical", "engine\ntypical")]
    present = [(label, r[n].metrics.get("msgs_per_s_median")) for n, label in names if n in r]
    if present:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([p[0] for p in present], [p[1] or 0 for p in present], color=["#888", "#c66", "#e99", "#36c", "#69c"][: len(present)])
        ax.set_yscale("log")
        ax.set_ylabel("alerts/s (median, log scale)")
        ax.axhline(AIM_ALERTS_PER_S, ls="--", color="green", lw=1, label=f"aim {AIM_ALERTS_PER_S:,}/s")
        ax.legend()
        ax.set_title("Maximum sustained throughput")
        save(fig, "throughput.png")

    if "e2e_latency" in r and r["e2e_latency"].runs:
        runs = r["e2e_latency"].runs
        labels = [str(x["rate"]) for x in runs]
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.2
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms", "max_ms")):
            ax.bar([j + i * width for j in range(len(runs))], [x["record"].get(q, 0) for x in runs], width, label=q[:-3])
        ax.set_xticks([j + 1.5 * width for j in range(len(runs))], labels)
        ax.set_xlabel("publish rate (alerts/s)")
        ax.set_ylabel("publish → decision (ms, log)")
        ax.set_yscale("log")
        ax.axhline(AIM_P99_MS_AT_1K, ls="--", color="green", lw=1, label="aim p99 at 1k/s")
        ax.legend()
        ax.set_title("Streaming latency")
        save(fig, "latency.png")

    if "hitratio" in r and r["hitratio"].runs:
        rows = r["hitratio"].runs
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.25
        xs = range(len(rows))
        ax.bar([x - width for x in xs], [row.get("engine", {}).get("hit_ratio") or 0 for row in rows], width, label="engine")
        ax.bar(list(xs), [row["bounds"]["best_achievable"] for row in rows], width, label="trace optimum")
        ax.bar([x + width for x in xs], [row["bounds"].get("lru_batched", 0) for row in rows], width, label="LRU, batched lookups")
        for x, row in zip(xs, rows):
            if row.get("target"):
                low, high = row["target"]
                ax.plot([x - 0.4, x + 0.4], [low, low], color="black", lw=2)
                if high:
                    ax.plot([x - 0.4, x + 0.4], [high, high], color="black", lw=1, ls="--")
        ax.set_xticks(list(xs), [row["profile"] for row in rows])
        ax.set_ylim(0, 1)
        ax.set_ylabel("hit ratio")
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title("Hit ratio per profile (black: target range)")
        save(fig, "hitratio.png")

        fig, ax = plt.subplots(figsize=(7, 4))
        for row in rows:
            sweep = row["sweep"]
            line = ax.plot(sweep["capacities"], sweep["lru"], marker="o", label=f"{row['profile']} LRU")[0]
            ax.plot(sweep["capacities"], sweep["belady"], ls="--", color=line.get_color(), label=f"{row['profile']} OPT")
        ax.set_xscale("log")
        ax.set_xlabel("cache capacity per partition (entries)")
        ax.set_ylabel("hit ratio")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"Hit ratio vs capacity ({_num(rows[0]['sweep']['size'])}-alert traces)")
        save(fig, "hitratio_capacity.png")

    mems = _memory_results(r)
    if mems:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, label in mems:
            points = _memory_view(r, name).runs
            ax.plot([p["alerts"] for p in points], [p["rss_mb"] for p in points], marker="o", label=re.sub(r"\s*\([^)]*\)", "", label))
            for p in points:
                ax.annotate(p["stage"], (p["alerts"], p["rss_mb"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("alerts processed")
        ax.set_ylabel("worker RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.set_title("Worker memory")
        save(fig, "memory.png")

    api_rows = [x for x in r["api"].runs if x.get("cache") in ("cold", "warm")] if "api" in r else []
    if api_rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.2
        labels = [f"{x['shape']}\n{x['cache']}" for x in api_rows]
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms", "max_ms")):
            ax.bar([j + i * width for j in range(len(api_rows))], [x["latency"].get(q) or 0 for x in api_rows], width, label=q[:-3])
        for j, x in enumerate(api_rows):
            target = x.get("target_p99_ms")
            if target:
                ax.plot([j - 0.1, j + 0.7], [target, target], color="green", lw=1.5, ls="--")
        ax.set_xticks([j + 1.5 * width for j in range(len(api_rows))], labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("client latency (ms, log)")
        ax.legend(fontsize=8)
        ax.set_title("POST /api/v1/alerts/process (green dashes: target p99)")
        save(fig, "api.png")
    return written


def render(directory: Path = RESULTS_DIR, command: str | None = None) -> Path:
    results = load_all(directory)
    if command is None:  # the command most results came from (run_all), not whichever file sorts first
        commands = Counter(x.command for x in results.values() if x.command)
        command = commands.most_common(1)[0][0] if commands else "?"
    path = directory / "RESULTS.md"
    path.write_text(render_markdown(results, command))
    render_plots(results, directory)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    print(render(args.results_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
