"""Report: one self-contained HTML page (tables + plots) describing the dataset the lake holds now.

Spark computes every aggregate; only small results reach the driver. The page is written to
`report.path/report-<run_id>.html` and copied to `index.html` there.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.llm import error_status
from instructlake.jobs.runs import Context, StageResult, utcnow


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
        leases = store.read("leases").select("resource", "run_id", "stage", "host", "pid", "acquired_at", "heartbeat_at", "expires_at")
        parts.append(_table(_rows(leases.orderBy("resource"), top), "Leases held (tables being written now)"))
    if "prompts_raw" in present:
        by_source = _rows(store.read("prompts_raw").groupBy("source").count().orderBy(F.desc("count")), top)
        parts.append(_table(by_source, "Ingested prompts per source"))
    if "prompts_rejected" in present:
        reasons = _rows(
            store.read("prompts_rejected")
            .withColumn("reason", F.regexp_replace("reason", r"^(duplicate_of|template):.*", "$1:*"))
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


def run(ctx: Context) -> StageResult:
    page, counts = build(ctx)
    out = Path(ctx.conf.report.path).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"report-{ctx.run_id}.html"
    target.write_text(page, encoding="utf-8")
    shutil.copyfile(target, out / "index.html")
    total = sum(counts.values())
    return StageResult(stage="report", rows_in=total, rows_out=total, rows_rejected=0, stats={"path": str(target), "tables": counts})
