"""What every Databricks stage notebook does, in one place: widgets -> config -> run_stage -> summary."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from typing import Any

from instructlake.jobs.config import load_config
from instructlake.jobs.runs import Context, run_stage


def run_stage_from_widgets(spark: Any, dbutils: Any, stage: str, display: Any = None) -> dict[str, Any]:
    """Declare the widgets (conf files, `--set` overrides, run id), run one stage on the notebook's
    session and return its summary (what the notebook hands back with dbutils.notebook.exit). With the
    notebook's `display`, the counts are shown as a table and the stats printed."""
    dbutils.widgets.text("conf", "../conf/databricks.yaml", "Config file(s), comma-separated")
    dbutils.widgets.text("sets", "", "--set overrides: key=value ... (shell quoting)")
    dbutils.widgets.text("run_id", "", "Run id (empty: a fresh one)")
    files = [os.path.abspath(f.strip()) for f in dbutils.widgets.get("conf").split(",") if f.strip()]
    sets = shlex.split(dbutils.widgets.get("sets"))
    if dbutils.widgets.get("run_id"):
        sets.append(f"run.run_id={json.dumps(dbutils.widgets.get('run_id'))}")
    ctx = Context.create(load_config(files, sets), spark=spark)
    result = run_stage(ctx, stage)
    summary = {
        "run_id": ctx.run_id,
        **dataclasses.asdict(result),
        "locations": {t: ctx.store.location(t) for t in result.tables},
    }
    if display is not None:
        display(spark.createDataFrame([{k: summary[k] for k in ("run_id", "stage", "rows_in", "rows_out", "rows_rejected")}]))
        print(json.dumps(summary["stats"], indent=2, default=str))
    return summary
