"""Report: one self-contained HTML page (tables + plots) describing the dataset the lake holds now.

Spark computes every aggregate; only small results reach the driver. The page is written to
`report.path/report-<run_id>.html` and copied to `index.html` there.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import check_run_id
from instructlake.jobs.export import judge_scores
from instructlake.jobs.llm.select import error_status
from instructlake.jobs.runs import Context, StageResult, latest_stats, utcnow
from instructlake.udfs.curate import PER_ITEM_REASON


def _table(rows: list[dict[str, Any]], title: str) -> str:
    if not rows:
        return f"<h3>{html.escape(title)}</h3><p class=empty>no rows</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"


def _plot(kind: str, labels: list[str], values: list[float], title: str, xlabel: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display on executors, CI or clusters
    import matplotlib.pyplot as plt

    if not values:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    if kind == "barh":
        ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    else:
        ax.bar(labels, values, color="#4c72b0")
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _rows(df: DataFrame, limit: int | None = None) -> list[dict[str, Any]]:
    return [r.asDict() for r in (df.limit(limit) if limit else df).collect()]


def _histogram(df: DataFrame, column: str, edges: list[int]) -> tuple[list[str], list[int]]:
    """Counts per bucket [edges[i], edges[i+1]) computed in Spark; the last bucket is open-ended."""
    bucket = F.lit(len(edges) - 1)
    for i in range(len(edges) - 1, 0, -1):
        bucket = F.when(F.col(column) < edges[i], F.lit(i - 1)).otherwise(bucket)
    counts = {r["b"]: r["count"] for r in df.select(bucket.alias("b")).groupBy("b").count().collect()}
    labels = [f"{edges[i]}–{edges[i + 1] - 1}" for i in range(len(edges) - 1)] + [f"≥{edges[-1]}"]
    return labels, [counts.get(i, 0) for i in range(len(edges))]


def build(ctx: Context) -> tuple[str, dict[str, int]]:
    """The HTML page and the row counts of the tables it describes."""
    store, top = ctx.store, ctx.conf.report.top_n
    present = {t for t in ctx.conf.tables.names if store.exists(t)}
    counts = {t: store.read(t).count() for t in sorted(present)}
    parts = [_table([{"table": t, "rows": n, "location": store.location(t)} for t, n in counts.items()], "Tables")]

    if "runs" in present:
        runs = store.read("runs").orderBy(F.col("started_at").desc())
        # The first line of the error: why a run failed, or why it was found abandoned (its driver died).
        note = F.substring(F.split(F.coalesce("error", F.lit("")), "\n").getItem(0), 1, 200).alias("note")
        parts.append(_table(_rows(runs.select("run_id", "stage", "status", "rows_in", "rows_out", "rows_rejected", "started_at", "finished_at", note), top), "Recent stage runs"))
    if "leases" in present and counts.get("leases"):
        # A lapsed lease stays until a run takes it over (lease.mark_abandoned): shown, but as lapsed.
        leases = store.read("leases").select(
            "resource", "run_id", "stage", "host", "pid", "acquired_at", "heartbeat_at", "expires_at",
            F.when(F.col("expires_at") < F.current_timestamp(), "lapsed").otherwise("held").alias("state"),
        )  # fmt: skip
        parts.append(_table(_rows(leases.orderBy("resource"), top), "Leases (held: tables being written now; lapsed: a stopped holder's)"))
    if "prompts_raw" in present:
        by_source = _rows(store.read("prompts_raw").groupBy("source").count().orderBy(F.desc("count")), top)
        parts.append(_table(by_source, "Ingested prompts per source"))
    if "prompts_rejected" in present:
        reasons = _rows(
            store.read("prompts_rejected")
            .withColumn("reason", F.regexp_replace("reason", PER_ITEM_REASON, "$1:*"))
            .groupBy("stage", "reason").count().orderBy(F.desc("count")),
            top,
        )
        parts.append(_table(reasons, "Rejected rows by stage and reason"))
        parts.append(_plot("barh", [f"{r['stage']}/{r['reason']}" for r in reasons], [r["count"] for r in reasons], "Rejected rows", "rows"))
    if "prompts" in present and counts.get("prompts"):
        prompts = store.read("prompts")
        langs = _rows(prompts.groupBy("lang").count().orderBy(F.desc("count")), top)
        parts.append(_plot("bar", [str(r["lang"]) for r in langs], [r["count"] for r in langs], "Curated prompts per language"))
        parts.append(_plot("bar", *_histogram(prompts, "n_chars", [0, 50, 100, 200, 500, 1000, 2000, 4000]), "Prompt length (characters)"))
    if "responses" in present and counts.get("responses"):
        responses = store.read("responses")
        parts.append(_table(_rows(responses.groupBy("model", "task", "lang").agg(
            F.count("*").alias("responses"), F.countDistinct("prompt_id").alias("prompts"),
            F.round(F.avg("completion_tokens"), 1).alias("avg_completion_tokens"),
        ).orderBy(F.desc("responses")), top), "Responses per model, task and language"))  # fmt: skip
        finish = _rows(responses.groupBy("finish_reason").count().orderBy(F.desc("count")))
        parts.append(_plot("bar", [str(r["finish_reason"]) for r in finish], [r["count"] for r in finish], "Finish reasons"))
        parts.append(_plot("bar", *_histogram(responses, "completion_tokens", [0, 16, 32, 64, 128, 256, 512, 1024, 2048]), "Completion tokens"))
        sample = responses.select("prompt_text", "text", "model", "finish_reason").orderBy("response_id")
        parts.append(_table(_rows(sample, 5), "Sample responses"))
    if "responses" in present and counts.get("responses"):
        cost, funnel, note = llm_cost(ctx)
        parts.append(_table(cost, "LLM engine cost by stage and model (succeeded runs)"))
        parts.append(_table(funnel, "Funnel and generation cost per 1,000 exported examples, by model and language"))
        parts.append(f"<p>{html.escape(note)}</p>")
    if "generation_errors" in present and counts.get("generation_errors"):
        errors = error_status(store).groupBy("error_class").agg(
            F.sum((~F.col("resolved")).cast("int")).alias("failing"), F.sum(F.col("resolved").cast("int")).alias("resolved_by_retry")
        )
        parts.append(_table(_rows(errors.orderBy(F.desc("failing"), "error_class")), "Generation errors (failing now, or answered by a later run)"))

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>instructlake report {html.escape(ctx.run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top;max-width:480px;overflow-wrap:anywhere}}
th{{background:#f3f3f3}}img{{display:block;margin:.5em 0 1.5em}}.empty{{color:#888}}</style></head><body>
<h1>instructlake dataset report</h1><p>run {html.escape(ctx.run_id)} · generated {utcnow():%Y-%m-%d %H:%M} UTC ·
delta backend {html.escape(store.backend)}</p>{''.join(parts)}</body></html>"""
    return page, counts


def _engine_jobs(stats: Any) -> Iterator[dict[str, Any]]:
    """Every engine job's record in a stage run's stats (generate's is the stats; reverse nests one per step)."""
    if isinstance(stats, dict):
        if "device_s" in stats and "model" in stats:
            yield stats
        else:
            for v in stats.values():
                yield from _engine_jobs(v)
    elif isinstance(stats, list):
        for v in stats:
            yield from _engine_jobs(v)


def llm_cost(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(engine cost per LLM stage and model, the funnel generated -> checks passed -> judged -> exported with
    generation device-hours per 1,000 exported examples per model and language, a one-line summary).

    Device-seconds are engine seconds times the devices a task held (GPUs; a CPU task counts one). A
    model's generation device-seconds are split over languages by their share of its completion tokens."""
    store, conf = ctx.store, ctx.conf
    runs = store.read("runs").where((F.col("status") == "succeeded") & F.col("stage").isin(*conf.llm_stages())) if store.exists("runs") else None
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for r in runs.select("stage", "stats").collect() if runs is not None else []:
        for job in _engine_jobs(json.loads(r["stats"] or "{}")):
            t = totals.setdefault((r["stage"], job["model"]), {"devices": job.get("devices"), "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "engine_s": 0.0, "device_s": 0.0})
            for k in ("requests", "prompt_tokens", "completion_tokens", "engine_s", "device_s"):
                t[k] += job.get(k) or 0
    cost = [
        {"stage": stage, "model": model, "devices": t["devices"], "requests": int(t["requests"]), "prompt_tokens": int(t["prompt_tokens"]),
         "completion_tokens": int(t["completion_tokens"]), "engine_hours": round(t["engine_s"] / 3600, 4),
         "device_hours": round(t["device_s"] / 3600, 4),
         "tokens_per_s_per_engine": round(t["completion_tokens"] / t["engine_s"], 1) if t["engine_s"] else None}
        for (stage, model), t in sorted(totals.items())
    ]  # fmt: skip

    e = conf.export
    resp = store.read("responses").where(F.col("task").isin(*e.tasks)).select("response_id", "model", F.coalesce("lang", F.lit("und")).alias("lang"), "completion_tokens")
    passed, judged = F.lit(True), F.lit(True)
    if store.exists("response_checks"):
        resp = resp.join(store.read("response_checks").select("response_id", "passed"), "response_id", "left")
        passed = F.coalesce(F.col("passed"), F.lit(False))
    if store.exists("judgements"):
        resp = resp.join(judge_scores(ctx, e.judge_model), "response_id", "left")
        judged = F.col("score") >= F.lit(float(e.min_score)) if e.min_score is not None else F.col("score").isNotNull()
    rows = resp.groupBy("model", "lang").agg(
        F.count("*").alias("generated"), F.sum(passed.cast("int")).alias("checks_passed"),
        F.sum((passed & judged).cast("int")).alias("judged"), F.sum(F.coalesce("completion_tokens", F.lit(0))).alias("tokens"),
    ).collect()  # fmt: skip
    export = latest_stats(store, "export").get("per_model_lang", {})
    model_tokens: dict[str, int] = {}
    for r in rows:
        model_tokens[r["model"]] = model_tokens.get(r["model"], 0) + (r["tokens"] or 0)
    judged_label = f"judged_ge_{e.min_score:g}" if e.min_score is not None else "judged"
    funnel = []
    for r in sorted(rows, key=lambda r: (r["model"], r["lang"])):
        exported = export.get(r["model"], {}).get(r["lang"], 0)
        gen_s = totals.get(("generate", r["model"]), {}).get("device_s", 0.0)
        share = (r["tokens"] or 0) / model_tokens[r["model"]] if model_tokens[r["model"]] else 0.0
        per_k = gen_s * share / 3600 / exported * 1000 if exported and gen_s else None
        funnel.append({"model": r["model"], "lang": r["lang"], "generated": r["generated"], "checks_passed": r["checks_passed"],
                       judged_label: r["judged"], "exported": exported,
                       "generation_device_hours_per_1000_exported": round(per_k, 4) if per_k is not None else None})  # fmt: skip
    n_exported = sum(sum(v.values()) for v in export.values())
    all_s = sum(t["device_s"] for t in totals.values())
    note = (
        f"All LLM stages: {all_s / 3600:.4f} device-hours for {n_exported:,} exported examples"
        + (f" = {all_s / 3600 / n_exported * 1000:.4f} device-hours per 1,000." if n_exported else ".")
    )
    return cost, funnel, note


def run(ctx: Context) -> StageResult:
    page, counts = build(ctx)
    out = Path(ctx.conf.report.path).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"report-{check_run_id(ctx.run_id)}.html"  # a run id never leads out of report.path
    target.write_text(page, encoding="utf-8")
    shutil.copyfile(target, out / "index.html")
    total = sum(counts.values())
    return StageResult(stage="report", rows_in=total, rows_out=total, rows_rejected=0, stats={"path": str(target), "tables": counts})
