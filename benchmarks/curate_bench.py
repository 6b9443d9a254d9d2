"""Curate throughput on N prompts, against single-process baselines; prints Markdown tables.

    python benchmarks/curate_bench.py [--n 1000000] [--partitions 8] [--driver-memory 6g] [--work DIR] [--set KEY=VALUE]

With --n 9471 it runs on the real rows alone (the shared prompts and the real near-duplicate pairs).

The N prompts are the 9,417 real prompts of ../shared/data plus generated ones, all written into a
prompts_raw Delta table by Spark tasks (the driver never holds them):
  - synthetic prompts: 20-60 words drawn from the real English prompts' vocabulary (70%), or 3-6 phrases
    of the real Japanese prompts (30%);
  - 5% exact copies of an earlier synthetic prompt, 2% near duplicates of one (a word or character
    inserted, appended or substituted, or case and punctuation changed): the planted pairs;
  - about 1.5% rows for the filters (empty, too short, too long, e-mail PII, moderation flag) and
    0.4% from one template.
Then curate runs on local[2] with conf/local.yaml, and in child processes, on the same rows:
  (a) a bare fastText loop (the same `preprocess` + `predict` per text) over the texts our langid step
      saw: the per-core ceiling;
  (b) datasketch MinHashLSH (same shingles, threshold and num_perm) over the texts our near-dedup step
      saw: insert all, query all, union-find; recall of both on the planted pairs whose true Jaccard
      reaches the threshold.
Peak RSS is sampled every 0.5 s for the Python driver, the JVM (driver and executor in local mode) and
the Spark Python workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "prompts"
NEARDUP = REPO.parent / "shared" / "data" / "neardup" / "pairs_dev.jsonl"
SOURCES = ["en_dolly_open_qa", "ja_dolly_15k_ja_v0_first5000", "en_arena_hard_v0.1", "en_self_instruct_seed_tasks"]
DUP, NEAR, EMPTY, SHORT, PII, MODERATION, LONG, TEMPLATE = 50, 70, 72, 75, 78, 85, 86, 90  # kind(i) < bound, per mille


# ---- data ---------------------------------------------------------------------------------------------


def dev_pairs() -> list[dict]:
    with open(NEARDUP, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def real_prompts() -> list[dict]:
    """The shared prompts, then both sides of every real near-duplicate pair (source `neardup_dev`)."""
    rows = []
    for name in SOURCES:
        with open(SHARED / f"{name}.jsonl", encoding="utf-8") as f:
            rows += [{"source": name, **json.loads(line)} for line in f]
    for p in dev_pairs():
        lang = "ja" if re.search(r"[\u3040-\u30ff]", p["a_text"]) else "en"
        rows += [{"source": "neardup_dev", "id": f"{p['pair_id']}-{s}", "text": p[f"{s}_text"], "lang": lang} for s in "ab"]
    return rows


def vocabularies(rows: list[dict]) -> tuple[list[str], list[str]]:
    words = sorted({w for r in rows if r["lang"] == "en" for w in re.findall(r"[A-Za-z]{2,12}", r["text"])})
    phrases = sorted({p for r in rows if r["lang"] == "ja" for p in re.split(r"[、。？！\n\s]+", r["text"]) if 3 <= len(p) <= 20})
    return words, phrases


def kind(i: int) -> int:
    return (i * 2654435761) % 1000


class Generator:
    """Deterministic prompt i (any process computes the same text for the same i)."""

    def __init__(self, n_real: int, words: list[str], phrases: list[str]):
        self.n_real, self.words, self.phrases = n_real, words, phrases

    def synthetic(self, i: int) -> tuple[str, str]:
        r = random.Random(i * 7919 + 17)
        if r.random() < 0.7:
            ws = r.choices(self.words, k=r.randint(20, 60))
            return " ".join([ws[0].capitalize(), *ws[1:]]) + r.choice(["?", ".", ""]), "en"
        return "、".join(r.choices(self.phrases, k=r.randint(3, 6))) + r.choice(["。", "？"]), "ja"

    def partner(self, i: int) -> int:
        """An earlier plain synthetic prompt (the original of a planted copy)."""
        j = self.n_real + (i * 40503) % max(1, i - self.n_real)
        while kind(j) < TEMPLATE and j > self.n_real:
            j -= 1
        return j

    def edit(self, text: str, lang: str, i: int) -> str:
        r = random.Random(i)
        e = i % 4
        if lang == "en":
            w = text.split()
            k, k3 = len(w) // 2, 2 * len(w) // 3
            return [" ".join(w + ["please"]), text.upper() + "!", " ".join(w[:k] + ["really"] + w[k:]),
                    " ".join(w[:k3] + [r.choice(self.words)] + w[k3 + 1 :])][e]  # fmt: skip
        k = len(text) // 2
        return [text + "ね", text.replace("、", " ") + "？", text[:k] + "とても" + text[k:], text[:k] + "猫" + text[k + 1 :]][e]

    def row(self, i: int) -> tuple[str, str, bool]:
        """(text, source_lang, moderation_flagged) of synthetic row i >= n_real."""
        k = kind(i)
        if k < DUP:
            return (*self.synthetic(self.partner(i)), False)
        if k < NEAR:
            text, lang = self.synthetic(self.partner(i))
            return self.edit(text, lang, i), lang, False
        text, lang = self.synthetic(i)
        if k < EMPTY:
            return " \u200b ", lang, False
        if k < SHORT:
            return random.Random(i).choice(["ok", "hi", "?!", "はい"]), lang, False
        if k < PII:
            return f"{text} Contact me at user{i}@example.com for details.", lang, False
        if k < MODERATION:
            return text, lang, True
        if k < LONG:
            return (text + " ") * (10_500 // len(text) + 1), lang, False
        if k < TEMPLATE:
            product = " ".join(random.Random(i).choices(self.words, k=3))
            return f'Write a product description for "{product}" that highlights its main benefits.', "en", False
        return text, lang, False


def write_prompts_raw(ctx, n: int, partitions: int) -> float:
    """N rows into prompts_raw, generated inside Spark tasks; returns seconds."""
    import pandas as pd
    from pyspark.sql import functions as F

    from instructlake.jobs.tables import SCHEMAS

    real = real_prompts()
    words, phrases = vocabularies(real)
    real_cols = [(r["source"], r["id"], r["text"], r["lang"]) for r in real]
    gen_args = (len(real), words, phrases)
    stamp = pd.Timestamp("2026-01-01", tz="UTC")

    def make(batches):
        gen = Generator(*gen_args)
        for b in batches:
            out = []
            for i in b["id"].tolist():
                if i < len(real_cols):
                    src, sid, text, lang = real_cols[i]
                    out.append((src, str(sid), text, lang, False))
                else:
                    text, lang, mod = gen.row(i)
                    out.append(("bench", f"b{i:09d}", text, lang, mod))
            df = pd.DataFrame(out, columns=["source", "source_id", "text", "source_lang", "moderation_flagged"])
            df["turn"] = 0
            df["redacted"] = False
            df["source_model"] = None
            df["layout"] = "bench"
            df["input_file"] = "curate_bench"
            df["record_index"] = b["id"].to_numpy()
            df["run_id"] = "bench"
            df["created_at"] = stamp
            yield df[SCHEMAS["prompts_raw"].names]

    start = time.perf_counter()
    ids = ctx.spark.range(0, n, numPartitions=partitions).select(F.col("id"))
    rows = ids.mapInPandas(make, SCHEMAS["prompts_raw"])
    ctx.store.append(rows, "prompts_raw", run_id="bench", stage="bench")
    return time.perf_counter() - start


# ---- memory -------------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.peak = {"python_driver": 0, "jvm": 0, "python_workers": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                kids = self.me.children(recursive=True)
                jvm = sum(p.memory_info().rss for p in kids if "java" in p.name())
                workers = sum(p.memory_info().rss for p in kids if "python" in p.name())
                now = {"python_driver": self.me.memory_info().rss, "jvm": jvm, "python_workers": workers}
                self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            except Exception:  # a worker exited between listing and reading
                pass
            self.stop.wait(0.5)


# ---- baselines (child processes) ------------------------------------------------------------------------


def _tables(lake: str):
    import pandas as pd
    from deltalake import DeltaTable

    prompts = DeltaTable(f"{lake}/prompts").to_pandas(columns=["prompt_id", "text", "cluster_id"])
    rej = DeltaTable(f"{lake}/prompts_rejected").to_pandas(columns=["source_id", "reason", "detail", "text"])
    rej = rej[rej["reason"].str.startswith(("lang_", "near_duplicate_of:"))]
    detail = rej["detail"].map(json.loads)
    rej = rej.assign(prompt_id=detail.map(lambda d: d["prompt_id"]), cluster_id=detail.map(lambda d: d.get("cluster_id")))
    return prompts, rej, pd


def fasttext_baseline(lake: str) -> dict:
    """The texts our langid step saw (every distinct prompt that passed the filters), one process."""
    from instructlake.udfs import langid
    from instructlake.udfs.text import normalize

    prompts, rej, _ = _tables(lake)
    texts = prompts["text"].tolist() + [normalize(t) for t in rej["text"]]
    model = langid.load_model(langid.default_model_path())
    start = time.perf_counter()
    for t in texts:
        model.predict(langid.preprocess(t), k=2)
    return {"rows": len(texts), "seconds": time.perf_counter() - start}


def datasketch_baseline(lake: str, n_real: int, n: int, threshold: float, num_perm: int, char_ngram: int) -> dict:
    """MinHashLSH over the texts our near-dedup step saw; recall of both on the planted near pairs."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from instructlake.udfs import minhash
    from instructlake.udfs.text import normalize, prompt_id

    prompts, rej, pd = _tables(lake)
    near_in = rej[~rej["reason"].str.startswith("lang_")]
    ids = prompts["prompt_id"].tolist() + near_in["prompt_id"].tolist()
    texts = prompts["text"].tolist() + [normalize(t) for t in near_in["text"]]
    cluster = dict(zip(prompts["prompt_id"], prompts["cluster_id"])) | dict(zip(near_in["prompt_id"], near_in["cluster_id"]))
    del prompts, rej, near_in

    identity = lambda x: x  # noqa: E731  (shingles are already 32-bit hashes: the same sets as ours)
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    # One set of permutations for all (MinHash() draws its own: 0.1 ms each), in datasketch's default scheme.
    first = MinHash(num_perm=num_perm)
    perms, scheme = first.permutations, first.scheme
    sigs = []
    with lsh.insertion_session() as session:
        for key, t in zip(ids, texts):
            m = MinHash(num_perm=num_perm, hashfunc=identity, permutations=perms, scheme=scheme)
            h = minhash.shingle_hashes(t, char_ngram=char_ngram)
            if len(h):
                m.update_batch(h.tolist())
                session.insert(key, m, check_duplication=False)
            sigs.append(m)
    parent = {k: k for k in ids}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    candidates = 0
    for key, m in zip(ids, sigs):
        for other in lsh.query(m):
            if other != key:
                candidates += 1
                a, b = find(key), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Planted near pairs that reached near dedup and really are near duplicates at the threshold.
    real = real_prompts()
    gen = Generator(len(real), *vocabularies(real))
    present = set(ids)
    pairs, found_ours, found_ds = 0, 0, 0
    index = {k: i for i, k in enumerate(ids)}
    for i in range(n_real, n):
        if not DUP <= kind(i) < NEAR:
            continue
        a_text = normalize(gen.synthetic(gen.partner(i))[0])
        b_text = normalize(gen.row(i)[0])
        a, b = prompt_id(a_text), prompt_id(b_text)
        if a == b or a not in present or b not in present:
            continue
        if minhash.jaccard(minhash.shingle_hashes(a_text, char_ngram=char_ngram), minhash.shingle_hashes(b_text, char_ngram=char_ngram)) < threshold:
            continue
        pairs += 1
        found_ours += cluster[a] == cluster[b]
        found_ds += b in set(lsh.query(sigs[index[a]]))
    return (
        {
            "rows": len(ids), "seconds": seconds, "candidate_pairs": candidates // 2, "peak_rss_mb": peak_mb,
            "planted_pairs": pairs, "recall_ours": found_ours / max(1, pairs), "recall_datasketch": found_ds / max(1, pairs),
            "removed_datasketch": int(np.sum([find(k) != k for k in ids])), "bands_rows": [lsh.b, lsh.r],
        }
    )  # fmt: skip


def real_quality(lake: str, min_similarity: float = 0.9) -> dict:
    """On the real rows only (shared prompts and the real near-duplicate pairs): recall of the real pairs
    at difflib >= min_similarity (both rows end in one cluster), recall of exact real duplicates, and every
    merge of two real prompts with its difflib ratio, for inspection (those under min_similarity are
    the candidates for false merges)."""
    import difflib

    from deltalake import DeltaTable

    from instructlake.udfs.text import normalize, strip_ui_residue

    prompts = DeltaTable(f"{lake}/prompts").to_pandas(columns=["prompt_id", "text", "cluster_id", "sources", "source_ids"])
    rej = DeltaTable(f"{lake}/prompts_rejected").to_pandas(columns=["source", "source_id", "reason", "detail", "text"])
    real = {r["source"] for r in real_prompts()}
    text_of = dict(zip(prompts["prompt_id"], prompts["text"]))
    cluster: dict[tuple[str, str], str | None] = {}
    cluster_of_pid = {pid: cid or pid for pid, cid in zip(prompts["prompt_id"], prompts["cluster_id"])}
    for pid, srcs, sids in zip(prompts["prompt_id"], prompts["sources"], prompts["source_ids"]):
        for src, sid in zip(srcs, sids):
            cluster[(src, sid)] = cluster_of_pid[pid]
    near_of_pid = {}
    rej = rej[rej["source"].isin(real) | rej["reason"].str.startswith("near_duplicate_of:")]
    for _, r in rej.iterrows():
        d = json.loads(r["detail"] or "{}")
        if r["reason"].startswith("near_duplicate_of:"):
            near_of_pid[d.get("prompt_id")] = r["reason"].split(":", 1)[1]
            text_of.setdefault(d.get("prompt_id"), r["text"])
    for _, r in rej.iterrows():
        reason = r["reason"]
        if reason.startswith("near_duplicate_of:"):
            cluster[(r["source"], r["source_id"])] = reason.split(":", 1)[1]
        elif reason.startswith("duplicate_of:"):
            pid = reason.split(":", 1)[1]
            cluster[(r["source"], r["source_id"])] = near_of_pid.get(pid) or cluster_of_pid.get(pid)
        else:
            cluster.setdefault((r["source"], r["source_id"]), None)
    pairs = [p for p in dev_pairs() if p["similarity"] >= min_similarity]
    found = [p["pair_id"] for p in pairs if (c := cluster.get(("neardup_dev", f"{p['pair_id']}-a"))) and c == cluster.get(("neardup_dev", f"{p['pair_id']}-b"))]
    rows = [r for r in real_prompts()]
    by_text: dict[str, list] = {}
    for r in rows:
        by_text.setdefault(strip_ui_residue(normalize(r["text"]))[0], []).append((r["source"], str(r["id"])))
    exact = [g for g in by_text.values() if len(g) > 1]
    exact_pairs = sum(len(g) - 1 for g in exact)
    exact_found = sum(sum(1 for k in g[1:] if cluster.get(k) is not None and cluster.get(k) == cluster.get(g[0])) for g in exact)
    # Merges of real prompts: a real row's prompt that is a near duplicate of a real representative.
    merges = []
    rep_real = {pid for pid, srcs in zip(prompts["prompt_id"], prompts["sources"]) if set(srcs) & real}
    for _, r in rej[rej["reason"].str.startswith("near_duplicate_of:") & rej["source"].isin(real)].iterrows():
        cid = r["reason"].split(":", 1)[1]
        if cid in rep_real:
            ratio = difflib.SequenceMatcher(None, r["text"], text_of.get(cid, ""), autojunk=False).ratio()
            merges.append({"ratio": round(ratio, 3), "text": r["text"][:120], "representative": text_of.get(cid, "")[:120]})
    distinct = len(by_text)
    return {
        "pairs": len(pairs), "pairs_found": len(found), "missed": sorted({p["pair_id"] for p in pairs} - set(found)),
        "exact_pairs": exact_pairs, "exact_found": exact_found, "distinct_real": distinct,
        "merges": sorted(merges, key=lambda m: m["ratio"]),
    }  # fmt: skip


def in_child(target, *args):
    """Run target(*args) in a fresh (spawned) process: its memory is its own, and a crash raises here."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(target, *args).result()


# ---- main -----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="prompts in prompts_raw")
    ap.add_argument("--partitions", type=int, default=8, help="spark.shuffle_partitions (and generator tasks)")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--work", default=None, help="lake and scratch (default .scratch/curate_bench/n<N>)")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a config override, as on the CLI")
    args = ap.parse_args()

    from instructlake.jobs.config import load_config
    from instructlake.jobs.runs import Context, run_stage

    work = Path(args.work or REPO / ".scratch" / "curate_bench" / f"n{args.n}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    conf = load_config(
        [REPO / "conf" / "local.yaml"],
        [f"run.lake_root={work / 'lake'}", f"run.work_dir={work / 'work'}", f"spark.shuffle_partitions={args.partitions}",
         f"spark.driver_memory={args.driver_memory}", 'spark.conf={"spark.ui.enabled": "false"}', *args.sets],
    )  # fmt: skip
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    ctx = Context.create(conf)
    session_s = time.perf_counter() - t0
    gen_s = write_prompts_raw(ctx, args.n, args.partitions)
    t0 = time.perf_counter()
    result = run_stage(ctx, "curate")
    curate_s = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    peak = {k: v / 2**20 for k, v in sampler.peak.items()}
    peak["python_driver_ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = result.stats
    lake = str(work / "lake")
    ctx.spark.stop()

    cores = 2
    out = {"n": args.n, "partitions": args.partitions, "session_s": session_s, "generate_s": gen_s, "curate_s": curate_s,
           "rows_in": result.rows_in, "rows_out": result.rows_out, "rows_rejected": result.rows_rejected,
           "steps": stats["steps"], "step_rows": stats["step_rows"], "peak_rss_mb": peak, "stats": stats}  # fmt: skip
    print(f"\n## curate on {args.n:,} prompts (local[{cores}], {args.partitions} partitions)\n")
    print(f"generate + write prompts_raw: {gen_s:.1f} s; curate: {curate_s:.1f} s "
          f"({result.rows_in:,} in = {result.rows_out:,} kept + {result.rows_rejected:,} rejected)\n")  # fmt: skip
    print("| step | rows in | seconds | rows/s | rows/s per core |")
    print("|---|---:|---:|---:|---:|")
    for step, secs in stats["steps"].items():
        rows = stats["step_rows"][step]
        print(f"| {step} | {rows:,} | {secs:.1f} | {rows / secs:,.0f} | {rows / secs / cores:,.0f} |")
    print(f"| **curate (run_stage)** | {result.rows_in:,} | {curate_s:.1f} | {result.rows_in / curate_s:,.0f} | {result.rows_in / curate_s / cores:,.0f} |")

    quality = real_quality(lake)
    under = [m for m in quality["merges"] if m["ratio"] < 0.9]
    out["real"] = quality
    print(f"\nreal near-duplicate pairs (difflib >= 0.9, ../shared/data/neardup): {quality['pairs_found']}/{quality['pairs']} "
          f"in one cluster (recall {quality['pairs_found'] / max(1, quality['pairs']):.3f}; missed {quality['missed']}); "
          f"exact real duplicates {quality['exact_found']}/{quality['exact_pairs']}; merges of two real prompts: "
          f"{len(quality['merges'])} of {quality['distinct_real']:,} distinct, {len(under)} under difflib 0.9 "
          f"({len(under) / quality['distinct_real']:.2%}; listed with --json)")  # fmt: skip
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    if not args.skip_baselines:
        ft = in_child(fasttext_baseline, lake)
        near = stats["near_dedup"]
        try:
            ds = in_child(datasketch_baseline, lake, len(real_prompts()), args.n, near["threshold"], conf.curate.near_dedup.num_perm, conf.curate.near_dedup.char_ngram)
        except Exception as e:  # e.g. the single process runs out of memory: that is a result too
            print(f"\ndatasketch baseline failed: {type(e).__name__}: {e}")
            ds = None
        ours_lid = stats["step_rows"]["langid"] / stats["steps"]["langid"] / cores
        bare = ft["rows"] / ft["seconds"]
        ours_near = stats["step_rows"]["near_dedup"] / stats["steps"]["near_dedup"]
        out |= {"fasttext_bare": ft, "datasketch": ds}
        print("\n| comparison | rows | seconds | rows/s | ours / baseline (rows/s) |")
        print("|---|---:|---:|---:|---:|")
        print(f"| bare fastText loop, 1 process | {ft['rows']:,} | {ft['seconds']:.1f} | {bare:,.0f} | |")
        print(f"| our langid step, per core | {stats['step_rows']['langid']:,} | {stats['steps']['langid']:.1f} | {ours_lid:,.0f} | {ours_lid / bare:.2f} |")
    if not args.skip_baselines and ds:
        print(f"| datasketch MinHashLSH, 1 process | {ds['rows']:,} | {ds['seconds']:.1f} | {ds['rows'] / ds['seconds']:,.0f} | |")
        print(f"| our near_dedup step, 2 cores | {stats['step_rows']['near_dedup']:,} | {stats['steps']['near_dedup']:.1f} | {ours_near:,.0f} | {ours_near / (ds['rows'] / ds['seconds']):.2f} |")
        print(f"\nplanted near-duplicate pairs (true Jaccard >= {near['threshold']}): {ds['planted_pairs']:,}; "
              f"recall ours {ds['recall_ours']:.4f} (same cluster), datasketch {ds['recall_datasketch']:.4f} (query hit); "
              f"datasketch peak RSS {ds['peak_rss_mb']:,.0f} MB")  # fmt: skip
        print(f"ours: {near['candidate_pairs']:,} candidate pairs, {near['verified_pairs']:,} verified, "
              f"{near['clusters']:,} clusters, {near['rounds']} rounds; datasketch: {ds['candidate_pairs']:,} candidate pairs")  # fmt: skip
    print("\n| process | peak RSS (MB) |\n|---|---:|")
    for k, v in peak.items():
        print(f"| {k} | {v:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
