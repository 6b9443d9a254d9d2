# Databricks notebook source
# MAGIC %md
# MAGIC # 06 · Reverse instructions
# MAGIC Corpus fragments (the curated rows of the ingest sources in `reverse.sources`) -> `reverse_steps` -> `responses` with task `reverse_instruction` (Indurthi et al. 2024): a non-English fragment is translated into English, the model writes the instruction the passage answers, scores the pair 0–10, and translates the instruction back; the original fragment is the answer. Runs on the GPU cluster.
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "reverse", display), default=str))
