"""Table contracts: the schema of every Delta table, in one place.

Every table carries `run_id` (the run that last wrote the row) and `created_at`. Those two are
bookkeeping: upserts ignore them when deciding whether a row changed, so an identical re-run writes
nothing.
"""

from __future__ import annotations

import re

from pyspark.sql import types as T

BOOKKEEPING = ("run_id", "created_at")

_ATOMS = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "bigint": T.LongType(),
    "boolean": T.BooleanType(),
    "float": T.FloatType(),
    "double": T.DoubleType(),
    "timestamp": T.TimestampType(),
}


def _type(spec: str) -> T.DataType:
    spec = spec.strip().lower()
    if spec.startswith("array<") and spec.endswith(">"):
        return T.ArrayType(_type(spec[6:-1]))
    return _ATOMS[spec]


def ddl(spec: str) -> T.StructType:
    """'name TYPE [NOT NULL], ...' -> StructType, without a SparkSession (StructType.fromDDL needs one)."""
    fields = []
    for col in re.split(r",(?![^<]*>)", spec):
        m = re.fullmatch(r"\s*(\w+)\s+([\w<>, ]+?)(\s+NOT NULL)?\s*", col, re.I)
        if not m:
            raise ValueError(f"bad column spec {col!r}")
        fields.append(T.StructField(m.group(1), _type(m.group(2)), nullable=not m.group(3)))
    return T.StructType(fields)


SCHEMAS: dict[str, T.StructType] = {
    "prompts_raw": ddl(
        """source STRING NOT NULL, source_id STRING NOT NULL, turn INT NOT NULL,
        text STRING, source_lang STRING, moderation_flagged BOOLEAN, redacted BOOLEAN, source_model STRING,
        layout STRING, input_file STRING, record_index BIGINT,
        run_id STRING, created_at TIMESTAMP"""
    ),
    "prompts_rejected": ddl(
        """source STRING NOT NULL, source_id STRING NOT NULL, turn INT NOT NULL,
        stage STRING, reason STRING, detail STRING, text STRING, raw STRING, input_file STRING, record_index BIGINT,
        run_id STRING, created_at TIMESTAMP"""
    ),
    "prompts": ddl(
        """prompt_id STRING NOT NULL, text STRING, lang STRING, lang_score FLOAT, lang2 STRING, lang2_score FLOAT,
        source_lang STRING, n_chars INT, dup_count INT, cluster_id STRING, cluster_size INT,
        sources ARRAY<STRING>, source_ids ARRAY<STRING>, turns ARRAY<INT>, template_id STRING, flags ARRAY<STRING>,
        moderation_flagged BOOLEAN, redacted BOOLEAN, run_id STRING, created_at TIMESTAMP"""
    ),
    "translations": ddl(
        """prompt_id STRING NOT NULL, target_lang STRING NOT NULL, model STRING NOT NULL, translated_prompt_id STRING,
        source_lang STRING, source_text STRING, text STRING, finish_reason STRING, prompt_tokens INT,
        completion_tokens INT, gen_config_id STRING, run_id STRING, created_at TIMESTAMP"""
    ),
    "responses": ddl(
        """response_id STRING NOT NULL, prompt_id STRING NOT NULL, origin_prompt_id STRING, task STRING, lang STRING,
        model STRING, gen_config_id STRING, sample_index INT, n INT, temperature DOUBLE, top_p DOUBLE,
        max_tokens INT, seed BIGINT, system_prompt STRING, prompt_text STRING, text STRING, finish_reason STRING,
        prompt_tokens INT, completion_tokens INT, latency_s DOUBLE, engine STRING, engine_version STRING,
        run_id STRING, created_at TIMESTAMP"""
    ),
    # One row per failed request: input_id is the id of the input it was for (its kind's request key: a
    # prompt id for respond and translate, a response id for judge, a fragment id for the reverse steps).
    # max_model_len: the engine's context length when the request failed; a prompt_too_long is given up
    # until a run's configured max_model_len exceeds it.
    "generation_errors": ddl(
        """input_id STRING NOT NULL, model STRING NOT NULL, gen_config_id STRING NOT NULL, task STRING NOT NULL,
        error_class STRING, message STRING, max_model_len INT, attempt INT, run_id STRING, created_at TIMESTAMP"""
    ),
    # One row per response and judge model (the latest judge config); score 0-10, null when the judge's
    # output (`rationale`) holds no parseable [[score]]. Judge failures: generation_errors rows of task
    # `judge`, whose input_id is the judged response_id.
    "judgements": ddl(
        """response_id STRING NOT NULL, prompt_id STRING, judge_model STRING NOT NULL, score DOUBLE, rationale STRING,
        finish_reason STRING, prompt_tokens INT, completion_tokens INT, gen_config_id STRING,
        run_id STRING, created_at TIMESTAMP"""
    ),
    # One row per corpus fragment, reverse-instruction step and model (the latest config): the step's input
    # and output text; score for the score step (0-10, null when unparseable). lang: the fragment's language.
    "reverse_steps": ddl(
        """fragment_id STRING NOT NULL, step STRING NOT NULL, model STRING NOT NULL, gen_config_id STRING, lang STRING,
        input STRING, text STRING, score DOUBLE, finish_reason STRING, prompt_tokens INT, completion_tokens INT,
        run_id STRING, created_at TIMESTAMP"""
    ),
    "response_checks": ddl(
        """response_id STRING NOT NULL, prompt_id STRING, model STRING, empty BOOLEAN, truncated BOOLEAN,
        repetition BOOLEAN, wrong_language BOOLEAN, refusal BOOLEAN, self_identification BOOLEAN, pii_leak BOOLEAN,
        response_lang STRING, repeated_ratio FLOAT, passed BOOLEAN, run_id STRING, created_at TIMESTAMP"""
    ),
    "expectation_results": ddl(
        """run_id STRING NOT NULL, table_name STRING NOT NULL, expectation STRING NOT NULL, success BOOLEAN,
        observed_value STRING, details STRING, created_at TIMESTAMP"""
    ),
    "runs": ddl(
        """run_id STRING NOT NULL, stage STRING NOT NULL, status STRING, config STRING,
        rows_in BIGINT, rows_out BIGINT, rows_rejected BIGINT, stats STRING,
        started_at TIMESTAMP, finished_at TIMESTAMP, error STRING, created_at TIMESTAMP"""
    ),
    # One row per leased resource (a table, an output path, a stage run): who writes it and until when.
    # A lease not renewed by expires_at is free; jobs/lease.py.
    "leases": ddl(
        """resource STRING NOT NULL, lease_id STRING NOT NULL, run_id STRING, stage STRING, host STRING, pid INT,
        pid_started BIGINT, acquired_at TIMESTAMP, heartbeat_at TIMESTAMP, expires_at TIMESTAMP, created_at TIMESTAMP,
        taken_from STRING"""
    ),
}

KEYS: dict[str, tuple[str, ...]] = {
    "prompts_raw": ("source", "source_id", "turn"),
    "prompts_rejected": ("source", "source_id", "turn"),
    "prompts": ("prompt_id",),
    "translations": ("prompt_id", "target_lang", "model"),
    "responses": ("response_id",),
    "generation_errors": ("input_id", "model", "gen_config_id", "task"),
    "judgements": ("response_id", "judge_model"),
    "reverse_steps": ("fragment_id", "step", "model"),
    "response_checks": ("response_id",),
    "expectation_results": ("run_id", "table_name", "expectation"),
    "runs": ("run_id", "stage"),
    "leases": ("resource",),
}

# Columns a table once had under another name (old -> contract name). A table that still has the old name
# reads as if renamed; TableStore.upgrade renames it for good, by the stage that holds the table's lease.
RENAMED: dict[str, dict[str, str]] = {
    "generation_errors": {"prompt_id": "input_id"},  # it never held only prompt ids (judge: response ids)
}
