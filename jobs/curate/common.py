"""What the curate steps share: the raw columns, the step helper (timing, caching), prompts_rejected rows,
and the udf options filled from conf.curate."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.config import CurateConf
from instructlake.udfs import curate as U
from instructlake.udfs.minhash import optimal_bands

log = logging.getLogger("instructlake.jobs.curate")  # the stage's logger: log lines name the stage, not this module

STAGE = "curate"
KEY = ["source", "source_id", "turn"]
RAW = [*KEY, "text", "source_lang", "moderation_flagged", "redacted", "input_file", "record_index"]


def filter_options(c: CurateConf) -> U.FilterOptions:
    f = c.filters
    return U.FilterOptions(
        ui_residue=f.ui_residue == "strip",
        empty=f.empty,
        length=f.length.enabled,
        min_chars=f.length.min_chars,
        max_chars=f.length.max_chars,
        tokenizer=f.length.tokenizer,
        max_tokens=f.length.max_tokens,
        moderation=f.moderation,
        pii_redacted=f.pii.redacted,
        pii_detected=f.pii.detected,
        pii_kinds=tuple(f.pii.kinds),
        template=f.template.action,
        mask_names=f.template.mask_names,
    )


def lang_options(c: CurateConf) -> U.LangOptions:
    g = c.langid
    return U.LangOptions(
        g.model, g.threshold, g.max_chars, g.lower_caps, tuple(g.langs), g.und, g.unspaced_below, tuple(g.candidates), g.candidates_k
    )


def bands_rows(c: CurateConf) -> tuple[int, int]:
    """LSH bands x rows of word-shingled texts."""
    n = c.near_dedup
    if n.bands and n.rows:
        return n.bands, n.rows
    return optimal_bands(n.threshold, n.num_perm)


def near_options(c: CurateConf) -> U.NearOptions:
    n = c.near_dedup
    return U.NearOptions(n.threshold, n.ngram, n.char_ngram, n.shingle_mode, n.short_chars, n.short_edit_ratio)


class Steps:
    """Step timings, and the DataFrames the steps persisted (each released once the next step no longer
    needs it; whatever is left, at the end of the run)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self._held: list[DataFrame] = []

    @contextmanager
    def step(self, name: str, rows_in: int) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.rows[name] = rows_in
        log.info("curate %s: %d rows in %.1fs", name, rows_in, self.seconds[name])

    def record(self, name: str, seconds: float, rows_in: int) -> None:
        self.seconds[name], self.rows[name] = round(seconds, 3), rows_in

    def keep(self, df: DataFrame, cut: bool = False) -> tuple[DataFrame, int]:
        """Persist and materialize df; returns it with its row count. With `cut`, checkpoint it locally
        instead: the plan restarts from the stored rows, so the many actions that follow (the store's
        merge and delete) do not re-analyze the whole lineage each time."""
        if cut:
            df = df.localCheckpoint(eager=True)
            return df, df.count()
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self._held.append(df)
        return df, df.count()

    def release(self, *dfs: DataFrame) -> None:
        for df in dfs:
            df.unpersist()

    def release_all(self) -> None:
        for df in self._held:
            df.unpersist()


def detail(**fields: Column) -> Column:
    return F.to_json(F.struct(*[v.alias(k) for k, v in fields.items()]))


def rejects(df: DataFrame, reason: Column, detail: Column) -> DataFrame:
    """Raw-row columns of df (source, source_id, turn, text, input_file, record_index) as prompts_rejected rows."""
    return df.select(
        *KEY,
        F.lit(STAGE).alias("stage"),
        reason.alias("reason"),
        detail.alias("detail"),
        "text",
        F.lit(None).cast("string").alias("raw"),
        "input_file",
        "record_index",
    )


def histogram(sizes: DataFrame, col: str = "size") -> dict[str, int]:
    """Counts of group sizes in power-of-two bins: '2', '3-4', '5-8', ..."""
    upper = F.pow(F.lit(2), F.ceil(F.log2(F.col(col)))).cast("long")
    rows = sizes.groupBy(upper.alias("hi")).count().collect()

    def label(hi: int) -> str:
        lo = hi // 2 + 1
        return str(hi) if lo >= hi else f"{lo}-{hi}"

    return {label(r["hi"]): r["count"] for r in sorted(rows, key=lambda r: r["hi"])}
