"""Curate: `prompts_raw` -> `prompts` (one row per kept distinct prompt) + `prompts_rejected` (every
removed raw row with its reason). Nothing is removed silently and the driver collects only aggregates.

Steps, each materialized once and timed (stats["steps"], seconds; stats["step_rows"], rows in):
  read         prompts_raw (one pinned snapshot), spread over curate.partitions tasks
  filters      row filters (empty, length, tokens, moderation, PII) in one pandas UDF, then template
               skeletons counted across the table (more than max_count distinct prompts: a template)
  exact_dedup  group by prompt_id = hash(normalized text); representative = smallest (source, source_id,
               turn); the others -> duplicate_of:<prompt_id>
  decontaminate  distinct prompts (and their translations) containing a benchmark item ->
               contaminated:<benchmark>:<item id> (udfs.decontam; only with curate.decontaminate.benchmarks)
  langid       fastText on each distinct prompt (a narrow projection: id, text, language); languages
               outside curate.langid.langs or `und` rejected
  near_dedup   MinHash-LSH candidates, verified pairs, connected components (jobs.dedup); the member with
               the largest dup_count (then the smallest prompt_id) represents its cluster; the others ->
               near_duplicate_of:<cluster_id>
  assemble     one join of the wide per-prompt rows with the langid and near-dedup outcomes -> kept prompts
               and rejected representatives (the wide rows are cached once, by exact_dedup)
  write        upsert both tables on their keys and delete what an earlier run wrote that no longer holds

Every outcome is a function of prompts_raw, the config (benchmark files included) and, with
curate.decontaminate.translations, the translations table, so a re-run writes nothing and a run on a
grown prompts_raw leaves the tables exactly as a first run on it would (representatives may move, and
rows that an earlier run kept or rejected are updated or removed accordingly).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from instructlake.jobs.config import CurateConf
from instructlake.jobs.dedup import candidate_pairs, connected_components, local_checkpoint, shared_buckets
from instructlake.jobs.runs import Context, StageResult
from instructlake.udfs import curate as U
from instructlake.udfs import decontam
from instructlake.udfs.minhash import minhash_batch, optimal_bands

log = logging.getLogger(__name__)

STAGE = "curate"
KEY = ["source", "source_id", "turn"]
_RAW = [*KEY, "text", "source_lang", "moderation_flagged", "redacted", "input_file", "record_index"]


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
        g.model, g.threshold, g.max_chars, g.lower_caps, tuple(g.langs), g.und, g.raw_below, tuple(g.candidates), g.candidates_k
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


class _Steps:
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


def _detail(**fields: Column) -> Column:
    return F.to_json(F.struct(*[v.alias(k) for k, v in fields.items()]))


def _rejects(df: DataFrame, reason: Column, detail: Column) -> DataFrame:
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


def _histogram(sizes: DataFrame, col: str = "size") -> dict[str, int]:
    """Counts of group sizes in power-of-two bins: '2', '3-4', '5-8', ..."""
    upper = F.pow(F.lit(2), F.ceil(F.log2(F.col(col)))).cast("long")
    rows = sizes.groupBy(upper.alias("hi")).count().collect()

    def label(hi: int) -> str:
        lo = hi // 2 + 1
        return str(hi) if lo >= hi else f"{lo}-{hi}"

    return {label(r["hi"]): r["count"] for r in sorted(rows, key=lambda r: r["hi"])}


# ---- steps ----------------------------------------------------------------------------------------------
# Each step persists its main output (released as soon as the next step has materialized its own) and
# checkpoints its rejects (`cut`), which are small and feed the final write.


def _filters(ctx: Context, steps: _Steps, raw: DataFrame, n_raw: int) -> tuple[DataFrame, DataFrame, DataFrame, int, dict]:
    """-> (rows with prompt_id/norm_text/n_chars/reason/flags/template_id, the persisted DataFrame they
    come from, filter rejects, their count, stats). Releases `raw`."""
    c = ctx.conf.curate
    opts = filter_options(c)

    @F.pandas_udf(U.ANNOTATE_DDL)  # type: ignore[call-overload]
    def annotate(text: pd.Series, moderation: pd.Series, redacted: pd.Series) -> pd.DataFrame:
        return U.annotate(pd.DataFrame({"text": text, "moderation_flagged": moderation, "redacted": redacted}), opts)

    stats: dict = {}
    with steps.step("filters", n_raw):
        ann, _ = steps.keep(
            raw.select(*_RAW, annotate("text", "moderation_flagged", "redacted").alias("a")).select(
                *_RAW, "a.*", F.lit(None).cast("long").alias("template_count")
            )
        )
        steps.release(raw)
        t = c.filters.template
        rows = ann
        if t.action != "off":
            # Distinct prompts per skeleton, over every non-empty row: exact copies do not make a template.
            per_template, stats["templates"] = steps.keep(
                ann.where(F.col("template_id").isNotNull())
                .select("template_id", "prompt_id")
                .distinct()
                .groupBy("template_id")
                .agg(F.count("*").alias("template_count"))
                .where(F.col("template_count") > t.max_count),
                cut=True,
            )
            is_template = F.col("template_count").isNotNull()
            if t.action == "drop":
                reason = F.coalesce("reason", F.when(is_template, F.concat(F.lit("template:"), "template_id")))
                flags = F.col("flags")
            else:
                reason = F.col("reason")
                flags = F.when(is_template, F.array_union("flags", F.array(F.lit("template")))).otherwise(F.col("flags"))
            # Not persisted: a broadcast join over the cached rows costs less than caching them twice.
            rows = ann.drop("template_count").join(F.broadcast(per_template), "template_id", "left").select(
                *_RAW,
                "prompt_id",
                "norm_text",
                "n_chars",
                reason.alias("reason"),
                flags.alias("flags"),
                F.when(is_template, F.col("template_id")).alias("template_id"),
                "template_count",
            )
        rejected, n_rejected = steps.keep(
            _rejects(
                rows.where(F.col("reason").isNotNull()),
                F.col("reason"),
                _detail(prompt_id=F.col("prompt_id"), n_chars=F.col("n_chars"), template_count=F.col("template_count")),
            ),
            cut=True,
        )
    return rows, ann, rejected, n_rejected, stats


def _exact_dedup(
    ctx: Context, steps: _Steps, rows: DataFrame, parent: DataFrame, n_in: int
) -> tuple[DataFrame, DataFrame, dict]:
    """Survivors of `rows` -> (one row per prompt_id: normalized `text`, `raw_text` where the
    representative's raw text differs, representative raw row `rep`, group aggregates; duplicates; stats).
    Releases `parent`, the persisted DataFrame under `rows`."""
    cap = ctx.conf.curate.dedup.max_source_ids
    with steps.step("exact_dedup", n_in):
        survivors = rows.where(F.col("reason").isNull()).drop("reason", "template_count")
        order = Window.partitionBy("prompt_id").orderBy(*KEY)
        ranked, _ = steps.keep(survivors.withColumn("_rn", F.row_number().over(order)))
        steps.release(parent)
        # The texts stay top-level columns: the in-memory cache reads columns, not struct fields, so the
        # langid and near-dedup steps read the text without decoding the rest of the representative.
        rep = F.struct(*[c for c in _RAW if c != "text"], "n_chars", "template_id")
        groups, n_groups = steps.keep(
            ranked.groupBy("prompt_id")
            .agg(
                F.count("*").cast("int").alias("dup_count"),
                F.min_by(F.struct(F.coalesce("norm_text", "text").alias("text"), F.col("text").alias("raw"), rep.alias("rep")), F.col("_rn")).alias("r"),
                F.slice(F.sort_array(F.collect_list(F.struct(*KEY))), 1, cap).alias("members"),
                F.array_sort(F.array_distinct(F.flatten(F.collect_list("flags")))).alias("flags"),
                F.bool_or(F.coalesce("moderation_flagged", F.lit(False))).alias("moderation_flagged"),
                F.bool_or(F.coalesce("redacted", F.lit(False))).alias("redacted"),
            )
            .select(
                "prompt_id",
                F.col("r.text").alias("text"),
                F.when(F.col("r.raw") != F.col("r.text"), F.col("r.raw")).alias("raw_text"),
                F.col("r.rep").alias("rep"),
                *["dup_count", "members", "flags", "moderation_flagged", "redacted"],
            )
        )
        dups, n_dups = steps.keep(
            _rejects(
                ranked.where(F.col("_rn") > 1),
                F.concat(F.lit("duplicate_of:"), "prompt_id"),
                _detail(prompt_id=F.col("prompt_id")),
            ),
            cut=True,
        )
        steps.release(ranked)
    multi = groups.where(F.col("dup_count") > 1)
    agg = multi.agg(F.count("*"), F.max("dup_count")).first()
    stats = {
        "distinct_prompts": n_groups,
        "duplicate_groups": agg[0],
        "duplicates": n_dups,
        "largest_group": agg[1] or 1,
        "group_sizes": _histogram(multi.select(F.col("dup_count").alias("size"))),
    }
    return groups, dups, stats


def benchmark_index(ctx: Context) -> tuple[decontam.Index, dict[str, int]]:
    """The decontamination index of curate.decontaminate.benchmarks (read with Spark, so any filesystem
    Spark reads works; benchmarks are small and collected to the driver) and the items per benchmark."""
    d = ctx.conf.curate.decontaminate
    index = decontam.Index(
        d.ngram, d.char_ngram, d.min_ngrams, d.near_max_tokens, d.near_containment, d.char_near_containment, d.max_postings
    )
    items: dict[str, int] = {}
    for b in d.benchmarks:
        reader = ctx.spark.read.parquet if b.format == "parquet" else ctx.spark.read.json
        df = reader(b.path)
        missing = [f for f in (b.id_field, b.text_field) if f not in df.columns]
        if missing:
            raise ValueError(f"curate.decontaminate.benchmarks {b.name!r}: {b.path!r} has no field(s) {missing} (id_field, text_field)")
        # Distinct items (a file of answers, Rakuda's, repeats each question once per model), in id order:
        # a prompt containing two items is attributed to the first loaded, the same one on every run.
        rows = df.select(F.col(b.id_field).cast("string").alias("id"), F.col(b.text_field).cast("string").alias("text")).distinct().orderBy("id", "text").collect()
        for r in rows:
            index.add(b.name, r["id"], r["text"] or "")
        items[b.name] = len(rows)
    return index, items


def _contamination(ctx: Context, groups: DataFrame) -> tuple[DataFrame, dict]:
    """(prompt_id, contaminated: contaminated:<benchmark>:<item id>, cross_lingual) of every distinct prompt
    that contains a benchmark item, itself or in one of its translations; stats."""
    d = ctx.conf.curate.decontaminate
    index, items = benchmark_index(ctx)

    @F.pandas_udf("string")  # type: ignore[call-overload]
    def contaminated(text: pd.Series) -> pd.Series:
        return decontam.contamination(text, index)

    hits = groups.select("prompt_id", contaminated("text").alias("contaminated"), F.lit(False).alias("cross_lingual"))
    if d.translations and ctx.store.exists("translations"):
        translated = ctx.store.read("translations").where(F.col("text").isNotNull()).select("prompt_id", contaminated("text").alias("hit"))
        # A prompt's own text decides first; its translations only where the text itself is clean.
        cross = translated.where(F.col("hit").isNotNull()).groupBy("prompt_id").agg(F.min("hit").alias("hit"))
        hits = hits.join(cross, "prompt_id", "left").select(
            "prompt_id", F.coalesce("contaminated", "hit").alias("contaminated"), (F.col("contaminated").isNull() & F.col("hit").isNotNull()).alias("cross_lingual")
        )  # fmt: skip
    return hits.where(F.col("contaminated").isNotNull()), {"enabled": True, "action": d.action, "items": items}


def _decontaminate(ctx: Context, steps: _Steps, groups: DataFrame, n_in: int) -> tuple[DataFrame | None, dict]:
    """-> ((prompt_id, contaminated, cross_lingual) of the distinct prompts that contain a benchmark item,
    kept: a small table; None when the step is off), stats."""
    d = ctx.conf.curate.decontaminate
    if d.action == "off" or not d.benchmarks:
        return None, {"enabled": False}
    with steps.step("decontaminate", n_in):
        hits, stats = _contamination(ctx, groups)
        hits, _ = steps.keep(hits, cut=True)
        found = hits.groupBy(F.regexp_extract("contaminated", r"^contaminated:([^:]+):", 1).alias("benchmark"), "cross_lingual").count().collect()
    stats["prompts"] = {b: sum(r["count"] for r in found if r["benchmark"] == b) for b in stats["items"]}
    stats["cross_lingual"] = sum(r["count"] for r in found if r["cross_lingual"])
    return hits, stats


def _langid(ctx: Context, steps: _Steps, groups: DataFrame, n_in: int, hits: DataFrame | None) -> tuple[DataFrame, int, dict]:
    """-> (one narrow row per distinct prompt: prompt_id, text, dup_count, node, the LANG_DDL columns and
    `contaminated` from the decontaminate step's `hits`; how many are rejected; langid stats). The wide
    rows of `groups` are not copied: the assemble step joins them back once, with every step's outcome."""
    opts = lang_options(ctx.conf.curate)

    @F.pandas_udf(U.LANG_DDL)  # type: ignore[call-overload]
    def languages(text: pd.Series) -> pd.DataFrame:
        return U.languages(text, opts)

    with steps.step("langid", n_in):
        langs = groups.select("prompt_id", "text", "dup_count", languages("text").alias("l")).select("prompt_id", "text", "dup_count", "l.*")
        if hits is None:
            langs = langs.withColumn("contaminated", F.lit(None).cast("string")).withColumn("cross_lingual", F.lit(False))
        else:
            langs = langs.join(F.broadcast(hits), "prompt_id", "left")
            if ctx.conf.curate.decontaminate.action == "drop":  # contamination names the outcome before a language reason: it is what a reader must know
                langs = langs.withColumn("lang_reason", F.coalesce("contaminated", "lang_reason"))
        # node: a long id for the near-dedup shuffles (a prompt_id is 32 characters); fixed by the persist.
        langs, _ = steps.keep(langs.withColumn("node", F.monotonically_increasing_id()))
        counts = langs.groupBy("lang", F.col("lang_reason").isNotNull().alias("rejected")).count().collect()
    detected: dict[str, int] = {}
    for r in counts:
        detected[r["lang"]] = detected.get(r["lang"], 0) + r["count"]
    n_rejected = sum(r["count"] for r in counts if r["rejected"])
    return langs, n_rejected, {"detected": dict(sorted(detected.items()))}


def _near_dedup(ctx: Context, steps: _Steps, langs: DataFrame, n_in: int) -> tuple[DataFrame, dict]:
    """Selected prompts of `langs` -> (prompt_id, cluster_id, cluster_size) of every prompt in a cluster of
    two or more, stats."""
    n = ctx.conf.curate.near_dedup
    none = ctx.spark.createDataFrame([], "prompt_id string, cluster_id string, cluster_size int")
    if not n.enabled:
        return none, {"enabled": False}
    bands, rows = bands_rows(ctx.conf.curate)
    lsh = {"ngram": n.ngram, "char_ngram": n.char_ngram, "mode": n.shingle_mode, "char_bands": n.char_bands, "char_rows": n.char_rows}
    near = near_options(ctx.conf.curate)
    checkpoint = local_checkpoint
    if n.checkpoint_dir:
        ctx.spark.sparkContext.setCheckpointDir(n.checkpoint_dir)
        checkpoint = lambda df: df.checkpoint(eager=True)  # noqa: E731
    stats: dict = {
        "enabled": True, "bands": bands, "rows": rows, "char_bands": n.char_bands, "char_rows": n.char_rows,
        "char_min_bands": n.char_min_bands,
        "threshold": n.threshold, "verify": n.verify,
    }  # fmt: skip
    nodes = langs.where(F.col("lang_reason").isNull())

    with steps.step("near_dedup", n_in):
        params = {"bands": bands, "rows": rows, "num_perm": n.num_perm, "seed": n.seed, **lsh, "id_col": "node"}
        if n.verify == "signature":
            sig_ddl = "node bigint, signature array<int>, band_keys array<bigint>"
            sigs, _ = steps.keep(
                nodes.select("node", "text").mapInPandas(lambda it: (minhash_batch(b, **params) for b in it), sig_ddl)
            )
            band_rows = sigs.select("node", F.posexplode("band_keys").alias("band", "band_key"))
            payload = sigs.select("node", F.col("signature").alias("value"))
        else:
            band_ddl = "node bigint, band int, band_key bigint"
            band_rows = nodes.select("node", "text").mapInPandas(
                lambda it: (minhash_batch(b, explode=True, **params) for b in it), band_ddl
            )
            payload = nodes.select("node", F.col("text").alias("value"))
        shared, _ = steps.keep(shared_buckets(band_rows), cut=True)
        pairs, n_pairs = steps.keep(candidate_pairs(shared, n.max_bucket_pairs, n.char_min_bands), cut=True)

        if n.verify == "signature":

            @F.pandas_udf("boolean")  # type: ignore[call-overload]
            def similar(x: pd.Series, y: pd.Series) -> pd.Series:
                return U.signature_similarity(x, y) >= near.threshold

        else:

            @F.pandas_udf("boolean")  # type: ignore[call-overload]
            def similar(x: pd.Series, y: pd.Series) -> pd.Series:
                return U.near_duplicates(x, y, near)

        a = payload.select(F.col("node").alias("a"), F.col("value").alias("va"))
        b = payload.select(F.col("node").alias("b"), F.col("value").alias("vb"))
        scored = pairs.join(a, "a").join(b, "b").select("a", "b", similar("va", "vb").alias("near"))
        edges, n_edges = steps.keep(scored.where("near").select("a", "b"), cut=True)
        stats.update(candidate_pairs=n_pairs, verified_pairs=n_edges, rounds=0)
        clusters, n_clustered = none, 0
        if n_edges:
            labels, stats["rounds"] = connected_components(edges, max_iterations=n.max_iterations, checkpoint=checkpoint)
            # Representative: most raw copies, then the smallest prompt_id; its id names the cluster.
            members = labels.join(nodes.select("node", "prompt_id", "dup_count"), "node")
            best = Window.partitionBy("component").orderBy(F.desc("dup_count"), "prompt_id")
            clusters, n_clustered = steps.keep(
                members.select(
                    "prompt_id",
                    F.first("prompt_id").over(best.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)).alias("cluster_id"),
                    F.count("*").over(Window.partitionBy("component")).cast("int").alias("cluster_size"),
                ),
                cut=True,
            )
    sizes = clusters.where(F.col("cluster_id") == F.col("prompt_id")).select(F.col("cluster_size").alias("size"))
    agg = sizes.agg(F.count("*"), F.max("size")).first()
    capped = shared.where((F.col("rank") == 1) & (F.col("size") > n.max_bucket_pairs + 1)).count()
    stats.update(
        clusters=agg[0], clustered_prompts=n_clustered, largest_cluster=agg[1] or 1, removed=n_clustered - agg[0],
        capped_buckets=capped, cluster_sizes=_histogram(sizes),
    )  # fmt: skip
    return clusters, stats


def _assemble(
    ctx: Context, steps: _Steps, groups: DataFrame, langs: DataFrame, clusters: DataFrame, n_in: int
) -> tuple[DataFrame, int, DataFrame]:
    """Every distinct prompt with its outcomes, in one join -> (kept prompts rows, their count, rejected representatives:
    lang_* and near_duplicate_of:<cluster_id>), both checkpointed."""
    with steps.step("assemble", n_in):
        outcome = groups.join(langs.drop("text", "dup_count", "node", "cross_lingual"), "prompt_id").join(clusters, "prompt_id", "left")
        selected = F.col("lang_reason").isNull()
        outcome = outcome.withColumn("cluster_id", F.when(selected, F.coalesce("cluster_id", "prompt_id"))).withColumn(
            "cluster_size", F.when(selected, F.coalesce("cluster_size", F.lit(1)))
        )
        outcome, _ = steps.keep(outcome)
        kept, n_kept = steps.keep(_prompts(outcome.where(F.col("cluster_id") == F.col("prompt_id")), ctx.run_id), cut=True)
        removed = ~selected | (F.col("cluster_id") != F.col("prompt_id"))
        reps = outcome.where(removed).select(
            "rep.*", F.coalesce("raw_text", "text").alias("text"), "prompt_id", "lang", "lang_score", "lang_reason", "cluster_id", "cluster_size"
        )
        rejected, _ = steps.keep(
            _rejects(
                reps,
                F.coalesce("lang_reason", F.concat(F.lit("near_duplicate_of:"), "cluster_id")),
                F.when(
                    F.col("lang_reason").isNotNull(),
                    _detail(prompt_id=F.col("prompt_id"), lang=F.col("lang"), lang_score=F.col("lang_score"), source_lang=F.col("source_lang")),
                ).otherwise(
                    _detail(prompt_id=F.col("prompt_id"), cluster_id=F.col("cluster_id"), cluster_size=F.col("cluster_size"))
                ),
            ),
            cut=True,
        )
        steps.release(outcome)
    return kept, n_kept, rejected


def _prompts(kept: DataFrame, run_id: str) -> DataFrame:
    return kept.select(
        "prompt_id",
        "text",
        "lang",
        F.col("lang_score").cast("float").alias("lang_score"),
        "lang2",
        F.col("lang2_score").cast("float").alias("lang2_score"),
        F.col("rep.source_lang").alias("source_lang"),
        F.col("rep.n_chars").alias("n_chars"),
        "dup_count",
        "cluster_id",
        "cluster_size",
        F.col("members.source").alias("sources"),
        F.col("members.source_id").alias("source_ids"),
        F.col("members.turn").alias("turns"),
        F.col("rep.template_id").alias("template_id"),
        # decontaminate.action flag: the benchmark item is named in the flags (drop: the prompt is not kept).
        F.when(F.col("contaminated").isNotNull(), F.concat("flags", F.array("contaminated"))).otherwise(F.col("flags")).alias("flags"),
        "moderation_flagged",
        "redacted",
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )


def run(ctx: Context) -> StageResult:
    c, store = ctx.conf.curate, ctx.store
    steps = _Steps()
    stats: dict = {}
    try:
        start = time.perf_counter()
        raw, n_raw = steps.keep(store.read("prompts_raw").select(*_RAW).repartition(c.partitions or ctx.conf.spark.shuffle_partitions))
        steps.record("read", time.perf_counter() - start, n_raw)
        rows, parent, filtered, n_filtered, stats["filters"] = _filters(ctx, steps, raw, n_raw)
        groups, dups, stats["exact_dedup"] = _exact_dedup(ctx, steps, rows, parent, n_raw - n_filtered)
        n_groups = stats["exact_dedup"]["distinct_prompts"]
        hits, stats["decontaminate"] = _decontaminate(ctx, steps, groups, n_groups)
        langs, n_lang, stats["langs"] = _langid(ctx, steps, groups, n_groups, hits)
        clusters, stats["near_dedup"] = _near_dedup(ctx, steps, langs, n_groups - n_lang)
        prompts, n_kept, outcome_rejected = _assemble(ctx, steps, groups, langs, clusters, n_groups)

        with steps.step("write", n_raw):
            steps.release_all()
            rejected = filtered.unionByName(dups).unionByName(outcome_rejected)
            rejected = rejected.withColumn("run_id", F.lit(ctx.run_id)).withColumn("created_at", F.current_timestamp())
            rejected, n_rejected = steps.keep(rejected.coalesce(ctx.conf.spark.shuffle_partitions), cut=True)
            if n_raw != n_kept + n_rejected:  # every raw row has exactly one outcome; anything else is a bug
                raise AssertionError(f"curate lost rows: {n_raw} in, {n_kept} kept + {n_rejected} rejected")
            written = {
                "prompts": store.merge(prompts, "prompts", run_id=ctx.run_id, stage=STAGE),
                "prompts_rejected": store.merge(rejected, "prompts_rejected", run_id=ctx.run_id, stage=STAGE),
            }
            # What an earlier run kept or rejected and this one does not: representatives that moved, prompts
            # that became templates or near duplicates on a grown table, a changed config.
            stale_prompts = store.read("prompts").select("prompt_id").join(prompts, "prompt_id", "left_anti")
            stale_rejects = (
                store.read("prompts_rejected").where(F.col("stage") == STAGE).select(*KEY).join(rejected, KEY, "left_anti")
            )
            deleted = {
                "prompts": store.delete(stale_prompts, "prompts", run_id=ctx.run_id, stage=STAGE),
                "prompts_rejected": store.delete(stale_rejects, "prompts_rejected", run_id=ctx.run_id, stage=STAGE),
            }
        by_reason = rejected.groupBy(F.regexp_replace("reason", U.PER_ITEM_REASON, "$1").alias("r")).count().collect()
        kept_langs = prompts.groupBy("lang").count().collect()
        flag = F.regexp_replace(F.col("f"), U.PER_ITEM_REASON, "$1")
        flags = prompts.select(F.explode("flags").alias("f")).groupBy(flag.alias("f")).count().collect()
        stats["rejected_by_reason"] = {r["r"]: r["count"] for r in sorted(by_reason, key=lambda r: r["r"])}
        stats["langs"]["kept"] = {r["lang"]: r["count"] for r in sorted(kept_langs, key=lambda r: r["lang"])}
        stats["flags"] = {r["f"]: r["count"] for r in sorted(flags, key=lambda r: r["f"])}
        stats["steps"], stats["step_rows"] = steps.seconds, steps.rows
        for table, merged in written.items():
            stats[table] = {"inserted": merged.inserted, "updated": merged.updated, "deleted": deleted[table]}
    finally:
        steps.release_all()
    return StageResult(
        stage=STAGE,
        rows_in=n_raw,
        rows_out=n_kept,
        rows_rejected=n_rejected,
        stats=stats,
        tables=["prompts", "prompts_rejected"],
    )
