"""What the curate steps hand on: one frozen dataclass per step's output, and `Curation`, the outputs of
the steps run so far, which every step takes and returns with its own output added."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame


@dataclass(frozen=True)
class ReadOutput:
    raw: DataFrame  # prompts_raw's RAW columns, persisted (released by filters)
    rows: int


@dataclass(frozen=True)
class FiltersOutput:
    rows: DataFrame  # every raw row with prompt_id, norm_text, n_chars, reason, flags, template_id, template_count
    annotated: DataFrame  # the persisted DataFrame `rows` is computed from (released by exact_dedup)
    rejected: DataFrame  # the rows with a reason, as prompts_rejected rows
    rejected_rows: int
    stats: dict


@dataclass(frozen=True)
class ExactDedupOutput:
    # One row per prompt_id: normalized `text`, `raw_text` where the representative's raw text differs,
    # the representative raw row `rep`, group aggregates (dup_count, members, flags, ...). Persisted.
    groups: DataFrame
    duplicates: DataFrame  # every other member of a group, as prompts_rejected rows
    distinct_prompts: int
    stats: dict


@dataclass(frozen=True)
class DecontaminateOutput:
    # (prompt_id, contaminated, cross_lingual) of the distinct prompts that contain a benchmark item: a
    # small table; None when the step is off.
    hits: DataFrame | None
    stats: dict


@dataclass(frozen=True)
class LangidOutput:
    # One narrow row per distinct prompt: prompt_id, text, dup_count, node, the LANG_DDL columns and the
    # decontaminate step's contaminated, cross_lingual. Persisted.
    prompts: DataFrame
    rejected_prompts: int
    stats: dict


@dataclass(frozen=True)
class NearDedupOutput:
    clusters: DataFrame  # (prompt_id, cluster_id, cluster_size) of every prompt in a cluster of two or more
    stats: dict


@dataclass(frozen=True)
class AssembleOutput:
    prompts: DataFrame  # the kept prompts, as prompts rows
    kept: int
    rejected: DataFrame  # the rejected representatives (lang_*, near_duplicate_of:<cluster_id>), as prompts_rejected rows


@dataclass(frozen=True)
class Curation:
    """Each field is the output of the step of its name, None until that step has run."""

    read: ReadOutput
    filters: FiltersOutput | None = None
    exact_dedup: ExactDedupOutput | None = None
    decontaminate: DecontaminateOutput | None = None
    langid: LangidOutput | None = None
    near_dedup: NearDedupOutput | None = None
    assemble: AssembleOutput | None = None
