# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Translate
# MAGIC `prompts` -> `translations`: instructions translated into `translate.target_lang` (the seed paper's Japanese sets) with the same engine machinery as generate; `generate.source: translations|both` answers them. Runs on the GPU cluster.
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "translate", display), default=str))
