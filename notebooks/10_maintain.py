# Databricks notebook source
# MAGIC %md
# MAGIC # 10 · Maintain
# MAGIC Table upkeep after the writers: compacts the many small files that chunked commits leave (OPTIMIZE), and
# MAGIC vacuums data files no version within `maintain.retention_hours` needs (VACUUM), plus temp files of
# MAGIC killed staging tasks. Row counts are checked before and after. Tables with predictive optimization
# MAGIC enabled in Unity Catalog can leave this out (`maintain.compact=false`, `maintain.vacuum=false`).
# MAGIC
# MAGIC Widgets: `conf` (config files on top of the packaged conf/default.yaml, relative to this notebook),
# MAGIC `sets` (`key=value` overrides, as `--set` on the CLI), `run_id` (empty: a fresh one; the job passes
# MAGIC one per job run so all stages share it).

# COMMAND ----------

import json

from instructlake.jobs.notebook import run_stage_from_widgets

dbutils.notebook.exit(json.dumps(run_stage_from_widgets(spark, dbutils, "maintain", display), default=str))
