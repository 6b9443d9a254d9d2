# Databricks notebook source
# MAGIC %md
# MAGIC # 99 · Explore the outputs with SQL
# MAGIC The Delta tables in `<catalog>.<schema>` (see conf/databricks.yaml): what came in per source and
# MAGIC language, what was rejected and why, and the `runs` table (one row per stage run). Tables appear as
# MAGIC their stages first run.

# COMMAND ----------

dbutils.widgets.text("catalog", "main", "Catalog")
dbutils.widgets.text("schema", "instructlake", "Schema")
catalog, schema = dbutils.widgets.get("catalog"), dbutils.widgets.get("schema")
# The SQL cells below run in this session, so they resolve table names in this catalog and schema.
spark.sql(f"USE CATALOG `{catalog}`")
spark.sql(f"USE SCHEMA `{schema}`")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Prompts per source and language

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT source, coalesce(source_lang, 'und') AS source_lang, count(*) AS prompts,
# MAGIC        round(avg(length(text))) AS avg_chars
# MAGIC FROM prompts_raw
# MAGIC GROUP BY ALL
# MAGIC ORDER BY prompts DESC

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rejected rows: why, and how much of each source

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT stage, split_part(reason, ':', 1) AS reason, count(*) AS rejected, any_value(detail) AS example_detail
# MAGIC FROM prompts_rejected
# MAGIC GROUP BY ALL
# MAGIC ORDER BY rejected DESC

# COMMAND ----------

# MAGIC %sql
# MAGIC WITH kept AS (SELECT source, count(*) AS n FROM prompts_raw GROUP BY source),
# MAGIC      rejected AS (SELECT source, count(*) AS n FROM prompts_rejected GROUP BY source)
# MAGIC SELECT coalesce(k.source, r.source) AS source, coalesce(k.n, 0) AS kept, coalesce(r.n, 0) AS rejected,
# MAGIC        round(coalesce(r.n, 0) / (coalesce(k.n, 0) + coalesce(r.n, 0)), 3) AS rejected_share
# MAGIC FROM kept k FULL OUTER JOIN rejected r ON k.source = r.source
# MAGIC ORDER BY source

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs: one row per stage run

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT run_id, stage, status, rows_in, rows_out, rows_rejected, started_at,
# MAGIC        timestampdiff(SECOND, started_at, finished_at) AS seconds, left(error, 200) AS error
# MAGIC FROM runs
# MAGIC ORDER BY started_at DESC
# MAGIC LIMIT 100

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT run_id, started_at, get_json_object(stats, '$.rejected_by_reason') AS rejected_by_reason,
# MAGIC        get_json_object(stats, '$.blank_lines') AS blank_lines
# MAGIC FROM runs
# MAGIC WHERE stage = 'ingest' AND status = 'succeeded'
# MAGIC ORDER BY started_at DESC

# COMMAND ----------

# MAGIC %md
# MAGIC ## Table history (Delta)

# COMMAND ----------

# MAGIC %sql
# MAGIC DESCRIBE HISTORY prompts_raw
