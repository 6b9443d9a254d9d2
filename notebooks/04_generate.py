# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Generate
# MAGIC `prompts` -> `responses` (n samples per prompt, one vLLM engine per GPU) and `generation_errors`. Runs on the bundle's GPU cluster.
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "generate", display), default=str))
