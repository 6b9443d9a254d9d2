"""Quality: rule checks per response (`response_checks`) and Great Expectations suites per table
(`expectation_results`).

Suites are data in conf (`quality.expectations`: table -> list of {type, kwargs}), so adding an expectation
is a config change. Each suite runs on the table's current snapshot through GX's Spark datasource, in an
ephemeral context (no files, no network, no progress bars).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.runs import Context, StageResult, utcnow
from instructlake.udfs.checks import CHECKS, OUTPUT_DDL, check_batch

log = logging.getLogger(__name__)


def expectation_class(name: str):
    """`expect_column_values_to_be_unique` -> great_expectations.expectations.ExpectColumnValuesToBeUnique."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, "".join(part.capitalize() for part in name.split("_")), None)
    if cls is None:
        raise ValueError(f"quality.expectations: unknown Great Expectations expectation {name!r}")
    return cls


def validate_table(df: DataFrame, table: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one suite over a Spark DataFrame; one result dict per expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    expectations = [expectation_class(s["type"])(**s.get("kwargs", {})) for s in specs]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_spark(name=f"instructlake_{table}")
        .add_dataframe_asset(name=table)
        .add_batch_definition_whole_dataframe("snapshot")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_suite", expectations=expectations))
    result = batch_definition.get_batch(batch_parameters={"dataframe": df}).validate(suite)
    out = []
    for spec, r in zip(specs, result.results):
        details = {k: v for k, v in (r.result or {}).items() if k != "observed_value"}
        out.append(
            {
                "table_name": table,
                "expectation": f"{spec['type']}({json.dumps(spec.get('kwargs', {}), sort_keys=True)})",
                "success": bool(r.success),
                "observed_value": json.dumps((r.result or {}).get("observed_value"), default=str),
                "details": json.dumps(details, default=str)[:4000],
            }
        )
    return out


def run(ctx: Context) -> StageResult:
    conf, store = ctx.conf.quality, ctx.store
    params = {
        "repetition_threshold": conf.repetition_threshold,
        "repetition_run_chars": conf.repetition_run_chars,
        "lang_min_words": conf.lang_min_words,
        "lang_threshold": conf.lang_threshold,
        "langid_model": conf.langid_model,
    }

    def checks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            flags = check_batch(b, **params)
            flags.insert(0, "response_id", b["response_id"].to_numpy())
            yield flags

    responses = store.read("responses")
    flags = responses.select("response_id", "text", "finish_reason", "prompt_text", "lang").mapInPandas(
        checks, f"response_id string, {OUTPUT_DDL}"
    )
    gate = F.lit(False)
    for check in conf.gate:
        gate = gate | F.col(check)
    checked = (
        responses.select("response_id", "prompt_id", "model")
        .join(flags, "response_id")
        .withColumn("passed", ~gate)
        .withColumn("run_id", F.lit(ctx.run_id))
        .withColumn("created_at", F.current_timestamp())
        .persist()
    )
    try:
        sums = checked.agg(F.count("*").alias("n"), *[F.sum(F.col(c).cast("int")).alias(c) for c in (*CHECKS, "passed")]).first()
        written = store.merge(checked, "response_checks", run_id=ctx.run_id, stage="quality")
    finally:
        checked.unpersist()

    results = []
    for table, specs in conf.expectations.items():
        if specs and store.exists(table):
            results += validate_table(store.read(table), table, specs)
    if results:
        rows = [{**r, "run_id": ctx.run_id, "created_at": utcnow()} for r in results]
        store.write_rows(rows, "expectation_results", run_id=ctx.run_id, stage="quality")
    failed = [f"{r['table_name']}: {r['expectation']}" for r in results if not r["success"]]
    for f in failed:
        log.warning("expectation failed: %s", f)
    if failed and conf.fail_on_expectation:
        raise RuntimeError(f"{len(failed)} expectation(s) failed: {failed[:5]}")
    n = sums["n"] or 0
    return StageResult(
        stage="quality",
        rows_in=n,
        rows_out=sums["passed"] or 0,
        rows_rejected=n - (sums["passed"] or 0),
        stats={
            "checks_failed": {c: sums[c] or 0 for c in CHECKS},
            "response_checks": {"inserted": written.inserted, "updated": written.updated},
            "expectations": {"evaluated": len(results), "failed": failed},
        },
        tables=["response_checks", "expectation_results"],
    )

