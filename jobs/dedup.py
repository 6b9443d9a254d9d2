"""Spark-side near-duplicate machinery: LSH candidate pairs and connected components, as DataFrames.

Nothing here collects rows to the driver or holds all signatures or edges in one process: buckets are
Spark groups, components come from the large-star / small-star iteration (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014), which converges in O(log^2 n) rounds, each a few shuffles.
Every round is checkpointed, so the plan stays one round deep however many rounds it takes.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from instructlake.udfs.minhash import CHAR_BAND_OFFSET

Checkpoint = Callable[[DataFrame], DataFrame]


def local_checkpoint(df: DataFrame) -> DataFrame:
    return df.localCheckpoint(eager=True)


def shared_buckets(bands: DataFrame) -> DataFrame:
    """LSH buckets with more than one member: (band, band_key, node, size, rank).

    `bands` holds (node, band, band_key) per node and band; a bucket is one (band, band_key), and its
    members are ranked by node id. Most buckets of a real corpus are singletons, so this is small."""
    bucket = Window.partitionBy("band", "band_key")
    return (
        bands.withColumn("size", F.count("*").over(bucket))
        .where(F.col("size") > 1)
        .withColumn("rank", F.row_number().over(bucket.orderBy("node")))
    )


def candidate_pairs(shared: DataFrame, max_pairs_per_member: int, char_min_bands: int = 1) -> DataFrame:
    """Candidate pairs (a, b), a < b, distinct, from `shared_buckets`.

    Each member is paired with the members ranked before it, but only the first `max_pairs_per_member`:
    a bucket of up to max+1 members gives every pair, a giant bucket (a popular boilerplate) gives at
    most max pairs per member instead of a quadratic blow-up. A pair of char-shingled texts (bands from
    CHAR_BAND_OFFSET on; they never share a band with a word-shingled text) must share `char_min_bands`
    bands: more, shorter bands with that rule make a sharper LSH curve than fewer, longer ones.
    """
    bucket = ["band", "band_key"]
    left = shared.where(F.col("rank") <= max_pairs_per_member).select(*bucket, F.col("node").alias("a"), F.col("rank").alias("ra"))
    right = shared.select(*bucket, F.col("node").alias("b"), F.col("rank").alias("rb"))
    pairs = left.join(right, bucket).where(F.col("ra") < F.col("rb"))
    if char_min_bands <= 1:
        return pairs.select("a", "b").distinct()
    shared_bands = pairs.groupBy("a", "b").agg(F.count("*").alias("n"), F.max("band").alias("band"))
    return shared_bands.where((F.col("band") < CHAR_BAND_OFFSET) | (F.col("n") >= char_min_bands)).select("a", "b")


def _undirected(edges: DataFrame) -> DataFrame:
    return (
        edges.select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b"))
        .where(F.col("a") != F.col("b"))
        .distinct()
    )


def _large_star(e: DataFrame) -> DataFrame:
    # Each node u links every larger neighbour v to m(u) = min(u, neighbours of u).
    both = e.select(F.col("a").alias("u"), F.col("b").alias("v")).union(e.select(F.col("b").alias("u"), F.col("a").alias("v")))
    low = both.groupBy("u").agg(F.min("v").alias("m")).select("u", F.least("u", "m").alias("m"))
    return both.join(low, "u").where(F.col("v") > F.col("u")).select(F.col("m").alias("a"), F.col("v").alias("b")).distinct()


def _small_star(e: DataFrame) -> DataFrame:
    # Each node u links itself and its smaller neighbours to the smallest of them.
    low = e.groupBy(F.col("b").alias("u")).agg(F.min("a").alias("m"))
    spokes = e.join(low, e["b"] == low["u"]).where(F.col("a") != F.col("m")).select(F.col("m").alias("a"), F.col("a").alias("b"))
    return spokes.union(low.select(F.col("m").alias("a"), F.col("u").alias("b"))).distinct()


def _fingerprint(e: DataFrame) -> tuple:
    h = F.xxhash64("a", "b")
    row = e.agg(F.count("*"), F.bit_xor(h), F.sum(F.hash("a", "b").cast("long"))).first()
    return tuple(row)


def connected_components(
    edges: DataFrame, *, max_iterations: int, checkpoint: Checkpoint = local_checkpoint
) -> tuple[DataFrame, int]:
    """Undirected `edges` (a, b) over orderable node ids -> ((node, component), rounds).

    Every node on an edge gets the smallest node id of its component; nodes without edges are not listed.
    A round is large-star then small-star; the edge set stops changing exactly when every component is a
    star around its minimum, which is checked by a fingerprint (count, xor and sum of hashes) of the edges.
    """
    e = checkpoint(_undirected(edges))
    before = _fingerprint(e)
    for rounds in range(1, max_iterations + 1):
        e = checkpoint(_small_star(checkpoint(_large_star(e))))
        after = _fingerprint(e)
        if after == before:
            labels = e.select(F.col("b").alias("node"), F.col("a").alias("component")).union(
                e.select(F.col("a").alias("node"), F.col("a").alias("component"))
            )
            return labels.groupBy("node").agg(F.min("component").alias("component")), rounds
        before = after
    raise RuntimeError(f"connected components did not converge in {max_iterations} rounds (curate.near_dedup.max_iterations)")
