# Databricks notebook source
# MAGIC %md
# MAGIC # 07 · Quality
# MAGIC `responses` -> `response_checks` (rule checks per response) and Great Expectations suites over the tables -> `expectation_results`.
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "quality", display), default=str))
