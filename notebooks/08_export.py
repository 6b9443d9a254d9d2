# Databricks notebook source
# MAGIC %md
# MAGIC # 08 · Export
# MAGIC `responses` -> SFT chat files (JSONL.gz / Parquet).
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "export", display), default=str))
