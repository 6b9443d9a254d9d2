# Databricks notebook source
# MAGIC %md
# MAGIC # 09 · Report
# MAGIC One self-contained HTML page describing the lake (tables, runs, rejects, languages, lengths, finish reasons, samples), written to `report.path` (a Volume).
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "report", display), default=str))
