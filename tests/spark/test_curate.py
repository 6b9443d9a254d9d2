"""Curate on real prompts from ../shared/data (Dolly en/ja, Arena-Hard) plus planted rows, through run_stage.

One module-scoped lake holds the main run (about 4,400 raw rows) and its re-run; a second, small lake runs
the flag-mode config and the growth scenario.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from pyspark.sql import functions as F

from instructlake.jobs.dedup import connected_components
from instructlake.jobs.runs import Context, run_stage
from instructlake.jobs.tables import BOOKKEEPING, SCHEMAS
from instructlake.udfs import minhash
from instructlake.udfs.text import normalize, prompt_id, strip_ui_residue
from tests.support.lake import make_conf

N_DOLLY, N_JA, N_ARENA = 3742, 400, 150


TEMPLATE_PRODUCTS = ["Aurora desk lamp", "Basalt water bottle", "Cobalt hiking boots", "Dune travel pillow",
                     "Ember coffee grinder", "Fjord rain jacket", "Granite cutting board", "Harbor tote bag",
                     "Iris reading glasses", "Juniper candle set", "Kestrel bike helmet", "Lumen alarm clock"]  # fmt: skip


# Real Dolly-ja questions a near-dedup step must keep apart (difflib 0.80-0.89: one word changes the question).
DISTINCT_PAIRS = [
    ("第二次世界大戦はいつ終わったのですか？", "第二次世界大戦はいつ始まったのですか？"),
    ("アメリカで一番大きい州はどこでしょう？", "アメリカで一番小さい州はどこでしょう？"),
    ("犬の被毛にはどのような種類があるのでしょうか？", "塩にはどのような種類があるのでしょうか？"),
    ("ビールはどのように作られるのでしょうか？", "白米はどのように作られるのでしょうか？"),
    ("動詞とは何ですか？", "名詞とは何ですか？"),
]


def read_jsonl(shared_data, name):
    with open(shared_data / "prompts" / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def raw_row(source, source_id, text, lang=None, *, moderation=False, redacted=False, index=0):
    return {
        "source": source, "source_id": source_id, "turn": 0, "text": text, "source_lang": lang,
        "moderation_flagged": moderation, "redacted": redacted, "source_model": None, "layout": "plain",
        "input_file": f"{source}.jsonl", "record_index": index, "run_id": "fixture",
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    }  # fmt: skip


def write_raw(ctx, rows, chunk="0"):
    df = ctx.spark.createDataFrame(pd.DataFrame(rows)[SCHEMAS["prompts_raw"].names].astype(object), SCHEMAS["prompts_raw"])
    ctx.store.append(df, "prompts_raw", run_id="fixture", stage="fixture", chunk=chunk)


def en_variants(t):
    w = t.split()
    mid, late = len(w) // 2, 2 * len(w) // 3
    return [
        t.lower().replace(",", "").replace("?", " ?") + "!",  # case and punctuation only
        " ".join(w[:mid] + ["really"] + w[mid:]),  # one word inserted
        " ".join(w[:late] + ["banana"] + w[late + 1 :]),  # one word substituted
    ]


def en_control(t):
    w = t.split()
    return " ".join(x if i < len(w) // 3 or i % 2 else f"word{i}" for i, x in enumerate(w))  # every other word replaced


def ja_variants(t):
    mid, late = len(t) // 2, 2 * len(t) // 3
    return [t.replace("、", " ") + "？", t[:mid] + "とても" + t[mid:], t[:late] + "猫" + t[late + 1 :]]


def ja_control(t, other):
    return t[: len(t) // 3] + other[len(other) // 3 :]


def shingle_jaccard(a, b):
    return minhash.jaccard(minhash.shingle_hashes(a), minhash.shingle_hashes(b))


@pytest.fixture(scope="module")
def data(shared_data):
    dolly = read_jsonl(shared_data, "en_dolly_open_qa.jsonl")
    ja = read_jsonl(shared_data, "ja_dolly_15k_ja_v0_first5000.jsonl")
    arena = read_jsonl(shared_data, "en_arena_hard_v0.1.jsonl")
    rows = [raw_row("dolly", r["id"], r["text"], "en", index=i + 1) for i, r in enumerate(dolly)]
    rows += [raw_row("dolly_ja", r["id"], r["text"], "ja", index=i + 1) for i, r in enumerate(ja[:N_JA])]
    rows += [raw_row("arena", r["id"], r["text"], "en", index=i + 1) for i, r in enumerate(arena[:N_ARENA])]

    # Near-duplicate sets: a real prompt and three small edits of it; a control that shares its first third.
    en_bases = [r["text"] for r in arena[N_ARENA:] if 30 <= len(r["text"].split()) <= 90 and "\n" not in r["text"]][:3]
    ja_pool = [r["text"] for r in ja[N_JA:] if 40 <= len(r["text"]) <= 120 and sum(c.isascii() for c in r["text"]) < 5]
    ja_bases, ja_others = ja_pool[:3], ja_pool[3:6]
    near_sets, controls = {}, {}
    for lang, bases in (("en", en_bases), ("ja", ja_bases)):
        for k, base in enumerate(bases):
            variants = en_variants(base) if lang == "en" else ja_variants(base)
            control = en_control(base) if lang == "en" else ja_control(base, ja_others[k])
            assert all(shingle_jaccard(base, v) >= 0.75 for v in variants)  # near duplicates at 0.7 by construction
            assert shingle_jaccard(base, control) < 0.5  # ...and clearly different prompts
            ids = [f"near-{lang}{k}-{j}" for j in range(4)]
            near_sets[f"{lang}{k}"] = ids
            controls[f"{lang}{k}"] = f"control-{lang}{k}"
            rows += [raw_row("planted", i, t, lang) for i, t in zip(ids, [base, *variants])]
            rows.append(raw_row("planted", f"control-{lang}{k}", control, lang))

    # Real near-duplicate pairs that people made (../shared/data/neardup), and real Dolly questions that
    # differ in the one word that matters: the first must meet in one cluster, the second must not.
    dev_pairs = [json.loads(line) for line in open(shared_data / "neardup" / "pairs_dev.jsonl", encoding="utf-8")]
    for p in dev_pairs:
        lang = "ja" if any("\u3040" <= c <= "\u30ff" for c in p["a_text"]) else "en"  # as a source would tag it
        rows += [raw_row("neardup_dev", f"{p['pair_id']}-{s}", p[f"{s}_text"], lang) for s in ("a", "b")]
    for k, pair in enumerate(DISTINCT_PAIRS):
        rows += [raw_row("distinct_pairs", f"{k}-{s}", t, "ja") for s, t in zip("ab", pair)]
    # Exact duplicates these add (the koala copies are AlpacaEval prompts once the page counter goes).
    seen = {strip_ui_residue(normalize(r["text"]))[0] for r in rows if r["source"] not in ("neardup_dev", "distinct_pairs")}
    pair_dups = 0
    for r in rows:
        if r["source"] in ("neardup_dev", "distinct_pairs"):
            text = strip_ui_residue(normalize(r["text"]))[0]
            pair_dups += text in seen
            seen.add(text)

    long_text = " ".join(r["text"] for r in dolly[:200])[:6000]
    wordy = " ".join(r["text"] for r in dolly[200:400])
    wordy = wordy[: wordy.rfind(" ", 0, 4500)]  # under max_chars, over max_tokens
    # source_id -> (text, expected reason prefix or None for kept, extra raw fields)
    planted = {
        "empty": ("\u00ad \u2060", "empty", {}),
        "null-text": (None, "empty", {}),
        "short": ("hi", "too_short", {}),
        "short-ok": ("猫とは", None, {"lang": "ja"}),
        "long": (long_text, "too_long", {}),
        "wordy": (wordy, "too_many_tokens", {}),
        "flagged": ("Explain in detail why the sky looks blue at noon but red at sunset.", "moderation", {"moderation": True}),
        "unflagged": ("Explain in detail why the ocean looks blue from an airplane window.", None, {"moderation": False}),
        "name": ("Write a birthday poem for NAME_1, who loves sailing and old maps.", "pii:name_placeholder", {}),
        "redacted": ("Draft a polite reminder about the overdue library books.", "pii:redacted", {"redacted": True}),
        "email": ("Please email me at jane.doe@example.org about the new schedule for the choir.", "pii:email", {}),
        "phone": ("Call the office at +1 415-555-0134 and ask whether the parcel has arrived.", "pii:phone", {}),
        "private-ip": ("My router at 192.168.0.1 keeps dropping the connection every evening, what can I check?", None, {}),
        "german": ("Wie kann ich meine Zeit besser organisieren, wenn ich von zu Hause arbeite?", "lang_not_selected:de", {}),
        "french": ("Quelles sont les meilleures façons d'apprendre une nouvelle langue rapidement ?", "lang_not_selected:fr", {}),
        "gibberish": ("asdf qwer zxcv", "lang_low_confidence", {}),
        # An exact copy of a Dolly prompt under a source that sorts first: it represents the pair.
        "copy-of-dolly-0": (dolly[0]["text"], None, {"source": "aaa_copy"}),
    }
    for i, product in enumerate(TEMPLATE_PRODUCTS):
        text = f'Write a short product description for "{product}" that highlights its main benefits for busy people.'
        planted[f"template-{i}"] = (text, "template", {})
    for sid, (text, _, extra) in planted.items():
        extra = dict(extra)
        rows.append(raw_row(extra.pop("source", "planted"), sid, text, extra.pop("lang", "en"), **extra))
    return {"rows": rows, "dolly": dolly, "near_sets": near_sets, "controls": controls, "planted": planted, "dev_pairs": dev_pairs, "pair_dups": pair_dups}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, data):
    """A word-level tokenizer (whitespace and punctuation pieces) trained on the fixture's texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([r["text"] for r in data["rows"] if r["text"]], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


MAIN_SETS = [
    "curate.filters.length.max_chars=5000",
    "curate.filters.length.max_tokens=600",
    "curate.filters.pii.redacted=drop",
]


@pytest.fixture(scope="module")
def main(spark, tmp_path_factory, data, tokenizer_file, backend):
    """The main run on ~4,400 rows with the default config except the length limits and redacted: drop."""
    root = tmp_path_factory.mktemp("curate_main")
    sets = [f"delta.backend={backend}", *MAIN_SETS, f"curate.filters.length.tokenizer={tokenizer_file}"]
    ctx = Context.create(make_conf(root, *sets), spark=spark)
    write_raw(ctx, data["rows"])
    result = run_stage(ctx, "curate")
    prompts = ctx.store.read("prompts").toPandas()
    rejected = ctx.store.read("prompts_rejected").toPandas()
    return {"ctx": ctx, "root": root, "sets": sets, "result": result, "prompts": prompts, "rejected": rejected}


def kept_keys(prompts):
    """(source, source_id) of every raw row that a prompt represents or absorbed as an exact duplicate."""
    return {(s, i) for ss, ii in zip(prompts["sources"], prompts["source_ids"]) for s, i in zip(ss, ii)}


def representative(prompts, source, source_id):
    hit = prompts[[sid[0] == source_id and src[0] == source for src, sid in zip(prompts["sources"], prompts["source_ids"])]]
    return hit.iloc[0] if len(hit) else None


def reason_of(rejected, source, source_id):
    hit = rejected[(rejected["source"] == source) & (rejected["source_id"] == source_id)]
    return hit["reason"].iloc[0] if len(hit) else None


def test_every_raw_row_has_exactly_one_outcome(main, data):
    r, prompts, rejected = main["result"], main["prompts"], main["rejected"]
    n = len(data["rows"])
    assert r.rows_in == n and r.rows_out == len(prompts) and r.rows_rejected == len(rejected)
    assert r.rows_in == r.rows_out + r.rows_rejected  # in = kept + rejected, exactly
    assert prompts["prompt_id"].is_unique
    # A raw row is a representative (first in sources) or rejected, never both; none is missing.
    reps = {(s[0], i[0]) for s, i in zip(prompts["sources"], prompts["source_ids"])}
    rej = set(zip(rejected["source"], rejected["source_id"]))
    assert not reps & rej and len(reps | rej) == n
    assert (rejected["stage"] == "curate").all() and rejected["reason"].notna().all()
    # The run record carries the same counts and the stats.
    run = main["ctx"].store.read("runs").where((F.col("stage") == "curate") & (F.col("run_id") == main["ctx"].run_id)).first()
    assert (run.status, run.rows_in, run.rows_out, run.rows_rejected) == ("succeeded", n, len(prompts), len(rejected))
    stats = json.loads(run.stats)
    assert sum(stats["rejected_by_reason"].values()) == len(rejected)
    assert set(stats["steps"]) == {"read", "filters", "exact_dedup", "langid", "near_dedup", "assemble", "write"}
    assert all(isinstance(v, float) and v > 0 for v in stats["steps"].values())
    assert stats["step_rows"]["filters"] == n


def test_dolly_exact_duplicates(main, data):
    prompts, rejected = main["prompts"], main["rejected"]
    dups = rejected[(rejected["source"] == "dolly") & rejected["reason"].str.startswith("duplicate_of:")]
    # The 37 Dolly rows that repeat an instruction: in each group all but the smallest source_id.
    groups: dict[str, list[str]] = {}
    for r in data["dolly"]:
        groups.setdefault(normalize(r["text"]), []).append(r["id"])
    expected = {i for ids in groups.values() for i in sorted(ids)[1:]}
    assert len(expected) == 37 and len([g for g in groups.values() if len(g) > 1]) == 23
    # ...and dolly_open_qa_0, whose copy under the source `aaa_copy` sorts first and represents it.
    assert set(dups["source_id"]) == expected | {"dolly_open_qa_0"}
    assert reason_of(rejected, "dolly", "dolly_open_qa_0") == "duplicate_of:" + representative(prompts, "aaa_copy", "copy-of-dolly-0").prompt_id
    # Every duplicate points at the prompt holding its text; the representative lists every copy.
    by_id = prompts.set_index("prompt_id")
    stats = main["result"].stats["exact_dedup"]
    assert stats["duplicates"] == 38 + data["pair_dups"] and stats["largest_group"] == 8
    top = prompts[prompts["dup_count"] == 8].iloc[0]
    assert top.text.startswith("What are the primary causes of inflation")
    assert len(top.source_ids) == 8 and list(top.source_ids) == sorted(top.source_ids) and set(top.sources) == {"dolly"}
    for _, d in dups.iterrows():
        pid = d.reason.split(":", 1)[1]
        if pid in by_id.index:  # the representative itself may be gone later (near duplicate, language)
            assert by_id.loc[pid, "dup_count"] >= 2 and d.source_id in set(by_id.loc[pid, "source_ids"])
    copy = representative(prompts, "aaa_copy", "copy-of-dolly-0")
    assert copy.dup_count == 2 and list(copy.sources) == ["aaa_copy", "dolly"]


def test_planted_near_duplicates_cluster_and_distinct_prompts_do_not(main, data):
    prompts, rejected = main["prompts"], main["rejected"]
    for name, ids in data["near_sets"].items():
        kept = [representative(prompts, "planted", i) for i in ids]
        kept = [k for k in kept if k is not None]
        assert len(kept) == 1, name  # one representative per cluster
        rep = kept[0]
        assert rep.cluster_size == 4 and rep.cluster_id == rep.prompt_id, name
        others = [reason_of(rejected, "planted", i) for i in ids]
        assert sorted(o for o in others if o) == [f"near_duplicate_of:{rep.prompt_id}"] * 3, name
        control = representative(prompts, "planted", data["controls"][name])
        assert control is not None and control.cluster_id != rep.cluster_id, name
    stats = main["result"].stats["near_dedup"]
    assert stats["verified_pairs"] <= stats["candidate_pairs"] and stats["clusters"] >= 6
    assert stats["cluster_sizes"]["3-4"] >= 6 and stats["rounds"] >= 1


def cluster_of(main, source, source_id):
    """The cluster a raw row ended in: its prompt's cluster_id (or prompt_id when it is alone), following
    duplicate_of and near_duplicate_of rejects; None when it left for another reason."""
    prompts, rejected = main["prompts"], main["rejected"]
    reason = reason_of(rejected, source, source_id)
    if reason is None:
        rep = representative(prompts, source, source_id)
        if rep is None:  # absorbed as an exact duplicate by a kept prompt
            rep = next(r for _, r in prompts.iterrows() if (source, source_id) in zip(r["sources"], r["source_ids"]))
        return rep.cluster_id or rep.prompt_id
    if reason.startswith("near_duplicate_of:"):
        return reason.split(":", 1)[1]
    if reason.startswith("duplicate_of:"):
        pid = reason.split(":", 1)[1]
        kept = prompts[prompts["prompt_id"] == pid]
        if len(kept):
            return kept.iloc[0].cluster_id or pid
        rep = rejected[rejected["detail"].map(lambda d: json.loads(d or "{}").get("prompt_id")) == pid]
        rep = rep[~rep["reason"].str.startswith("duplicate_of:")]
        return rep.iloc[0].reason.split(":", 1)[1] if len(rep) and rep.iloc[0].reason.startswith("near_duplicate_of:") else None
    return None


def test_real_near_duplicates_people_made_meet_and_distinct_questions_do_not(main, data):
    """The dev half of the real pairs (ShareGPT's "2 / 2" glued to the first word; people's edits of
    Japanese MT-Bench prompts): every pair at difflib 0.9 or more ends in one cluster."""
    missed = []
    for p in data["dev_pairs"]:
        a, b = (cluster_of(main, "neardup_dev", f"{p['pair_id']}-{s}") for s in "ab")
        if p["similarity"] >= 0.9 and (a is None or a != b):
            missed.append(p["pair_id"])
    assert not missed, missed
    for k in range(len(DISTINCT_PAIRS)):
        a, b = (cluster_of(main, "distinct_pairs", f"{k}-{s}") for s in "ab")
        assert a is not None and a != b, DISTINCT_PAIRS[k]
    # The page counter is stripped and flagged: the koala copy and the AlpacaEval prompt are one prompt.
    stripped = main["prompts"][main["prompts"]["flags"].map(lambda f: "ui_residue:page_counter" in list(f))]
    assert len(stripped) >= 1 and not stripped["text"].str.match(r"^\d+ / \d+").any()


@pytest.mark.parametrize("source_id", ["empty", "null-text", "short", "short-ok", "long", "wordy", "flagged", "unflagged",
                                       "name", "redacted", "email", "phone", "private-ip", "german", "french",
                                       "gibberish", "template-0", "template-11"])  # fmt: skip
def test_each_filter_fires_and_does_not(main, data, source_id):
    _, expected, _ = data["planted"][source_id]
    got = reason_of(main["rejected"], "planted", source_id)
    if expected is None:
        assert got is None and representative(main["prompts"], "planted", source_id) is not None
    else:
        assert got is not None and got.startswith(expected), got


def test_filters_spare_real_prompts_and_stats_count_reasons(main, data):
    rejected = main["rejected"]
    real = rejected[rejected["source"].isin(["dolly", "dolly_ja"])]
    # Real Dolly prompts only leave as duplicates, near duplicates or by language, never by a row filter.
    classes = real["reason"].str.split(":").str[0]
    assert set(classes) <= {"duplicate_of", "near_duplicate_of", "lang_not_selected", "lang_low_confidence"}
    assert classes.isin(["lang_not_selected", "lang_low_confidence"]).sum() < 20
    stats = main["result"].stats
    counts = rejected["reason"].str.replace(r"^(duplicate_of|near_duplicate_of|template):.*$", r"\1", regex=True).value_counts()
    assert stats["rejected_by_reason"] == counts.to_dict()
    assert stats["rejected_by_reason"]["template"] == len(TEMPLATE_PRODUCTS) and stats["filters"]["templates"] == 1
    assert stats["langs"]["kept"]["en"] > 3500 and stats["langs"]["kept"]["ja"] > 350
    assert set(stats["langs"]["kept"]) == {"en", "ja"}  # langs: [en, ja]
    detail = json.loads(rejected[rejected["source_id"] == "german"]["detail"].iloc[0])
    assert detail["lang"] == "de" and detail["lang_score"] > 0.5


def test_prompts_columns(main, data):
    prompts = main["prompts"]
    assert set(prompts.columns) == set(SCHEMAS["prompts"].names)
    ja = prompts[prompts["lang"] == "ja"]
    assert (ja["source_lang"] == "ja").mean() > 0.99  # the source's tag is kept beside fastText's
    assert prompts["lang_score"].between(0.3, 1.0).all()
    assert (prompts["n_chars"] == prompts["text"].str.len()).all()
    assert (prompts["cluster_size"] >= 1).all() and prompts["cluster_id"].notna().all()
    assert (prompts["dup_count"] == prompts["source_ids"].map(len)).all()
    # Nothing is flag-only in this config; the stripped page counters of the koala copies are named.
    assert set(f for fs in prompts["flags"] for f in fs) == {"ui_residue:page_counter"}


def test_rerun_writes_nothing(main, spark):
    ctx = main["ctx"]
    versions = {t: ctx.store.version(t) for t in ("prompts", "prompts_rejected")}
    again = run_stage(Context.create(make_conf(main["root"], *main["sets"]), spark=spark), "curate")
    r = main["result"]
    assert (again.rows_in, again.rows_out, again.rows_rejected) == (r.rows_in, r.rows_out, r.rows_rejected)
    assert {t: ctx.store.version(t) for t in versions} == versions
    assert again.stats["prompts"] == {"inserted": 0, "updated": 0, "deleted": 0}
    assert again.stats["prompts_rejected"] == {"inserted": 0, "updated": 0, "deleted": 0}


FLAG_SETS = [
    "curate.langid.langs=[ja]",
    "curate.langid.und=keep",
    "curate.filters.moderation=flag",
    "curate.filters.pii.redacted=flag",
    "curate.filters.pii.detected=flag",
    "curate.filters.template.action=flag",
    "curate.near_dedup.verify=signature",
]


JA_FLAGGED = {
    "ja-moderation": ("空が昼は青く、夕方は赤く見える理由を詳しく説明してください。", ["moderation"], {"moderation": True}),
    "ja-name": ("NAME_1さんの誕生日に贈る、航海と古い地図が好きな人向けの短い詩を書いてください。", ["pii:name_placeholder"], {}),
    "ja-redacted": ("図書館の本の返却期限が過ぎていることを丁寧に知らせる文面を作ってください。", ["pii:redacted"], {"redacted": True}),
    "ja-email": ("合唱団の新しい練習日程について jane.doe@example.org まで連絡してください。", ["pii:email"], {}),
}


JA_TEMPLATE = "「{}」という商品の説明文を書いてください。"


def small_rows(data):
    ja = [r for r in data["rows"] if r["source"] == "dolly_ja"][:30]
    en = [r for r in data["rows"] if r["source"] == "dolly"][:10]
    planted = [r for r in data["rows"] if r["source"] == "planted" and r["source_id"].startswith(("near-ja0", "near-ja1", "control-ja0"))]
    english = [r for r in data["rows"] if r["source_id"] in ("flagged", "email", "gibberish", "template-0")]
    flagged = [raw_row("planted", sid, text, "ja", **extra) for sid, (text, _, extra) in JA_FLAGGED.items()]
    # Twelve prompts from one short Japanese template (some of them are near duplicates of each other too).
    products = ["懐中電灯", "水筒", "登山靴", "旅行枕", "珈琲ミル", "雨合羽", "まな板", "手提げ袋", "老眼鏡", "蝋燭", "自転車", "目覚まし時計"]
    templates = [raw_row("planted", f"ja-template-{i}", JA_TEMPLATE.format(p), "ja") for i, p in enumerate(products)]
    return ja + en + planted + english + flagged + templates


def table_rows(ctx, name):
    df = ctx.store.read(name).toPandas().drop(columns=list(BOOKKEEPING))
    for col in df.columns:
        if df[col].map(lambda v: hasattr(v, "tolist")).any():
            df[col] = df[col].map(lambda v: tuple(v.tolist()) if hasattr(v, "tolist") else v)
    key = ["prompt_id"] if name == "prompts" else ["source", "source_id", "turn"]
    return df.sort_values(key).reset_index(drop=True)


def test_flags_language_selection_and_growth(spark, tmp_path, data, backend):
    rows = small_rows(data)
    ja0, ja1 = data["near_sets"]["ja0"], data["near_sets"]["ja1"]
    # First run: the near-duplicate set ja0 lacks its base; the set ja1 has all four.
    first = [r for r in rows if r["source_id"] != ja0[0]]
    lake = make_conf(tmp_path / "a", f"delta.backend={backend}", *FLAG_SETS)
    write_raw(Context.create(lake, spark=spark), first)
    run_stage(Context.create(lake, spark=spark), "curate")
    grown = Context.create(lake, spark=spark)  # a new run (run id) on the same lake
    before = table_rows(grown, "prompts")
    # Grow: ja0's base arrives twice, so it now has the largest dup_count and represents its cluster (the
    # old representative leaves `prompts`); the ja1 member with the largest prompt_id, a near duplicate so
    # far, gets two more copies and represents ja1 (its raw row leaves `prompts_rejected`); a row that sorts
    # first joins the exact-duplicate group of rows[0] and represents it.
    base = next(r for r in rows if r["source_id"] == ja0[0])
    ja1_rows = [r for r in rows if r["source_id"] in ja1]
    last = max(ja1_rows, key=lambda r: prompt_id(normalize(r["text"])))
    extra = [base, {**base, "source": "zzz", "source_id": "base-copy"}, {**rows[0], "source": "aaa", "source_id": "first-copy"}]
    extra += [{**last, "source": "zzz", "source_id": f"ja1-copy-{i}"} for i in range(2)]
    assert reason_of(table_rows(grown, "prompts_rejected"), "planted", last["source_id"]).startswith("near_duplicate_of:")
    write_raw(grown, extra, chunk="grow")
    result = run_stage(grown, "curate")

    # From scratch on the grown table: the same tables, row for row.
    fresh = Context.create(make_conf(tmp_path / "b", f"delta.backend={backend}", *FLAG_SETS), spark=spark)
    write_raw(fresh, first + extra)
    scratch = run_stage(fresh, "curate")
    for name in ("prompts", "prompts_rejected"):
        pd.testing.assert_frame_equal(table_rows(grown, name), table_rows(fresh, name))
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (scratch.rows_in, scratch.rows_out, scratch.rows_rejected)
    assert result.stats["prompts"]["deleted"] == 2  # the old representatives of ja0 and ja1
    assert result.stats["prompts_rejected"]["deleted"] == 1  # the ja1 member that represents it now
    assert reason_of(table_rows(grown, "prompts_rejected"), "planted", last["source_id"]) is None

    prompts, rejected = table_rows(fresh, "prompts"), table_rows(fresh, "prompts_rejected")
    assert len(prompts) + len(rejected) == len(first) + len(extra)
    new_rep = prompts[prompts["source_ids"].map(lambda s: "base-copy" in s)]
    assert len(new_rep) == 1 and new_rep.iloc[0].dup_count == 2 and new_rep.iloc[0].cluster_size == 4
    assert not before["prompt_id"].isin([new_rep.iloc[0].prompt_id]).any()
    ja1_rep = representative(prompts, "planted", last["source_id"])
    assert ja1_rep.dup_count == 3 and ja1_rep.cluster_size == 4 and list(ja1_rep.sources) == ["planted", "zzz", "zzz"]
    assert (rejected["source_id"] == "first-copy").sum() == 0  # it sorts first: it represents its group now
    assert reason_of(rejected, rows[0]["source"], rows[0]["source_id"]).startswith("duplicate_of:")

    # langs: [ja] rejects English; und: keep keeps the gibberish, tagged `und`.
    assert (rejected[rejected["source"] == "dolly"]["reason"] == "lang_not_selected:en").all()
    assert reason_of(rejected, "planted", "email") == "lang_not_selected:en"
    assert set(prompts["lang"]) == {"ja", "und"}
    assert representative(prompts, "planted", "gibberish").lang == "und"
    # Flag mode keeps the rows and names what was found.
    for sid, (_, flags, _) in JA_FLAGGED.items():
        assert list(representative(prompts, "planted", sid)["flags"]) == flags, sid
    # The twelve template prompts are kept and flagged, less those that are near duplicates of each other.
    templated = prompts[prompts["source_ids"].map(lambda s: s[0].startswith("ja-template-"))]
    assert templated["flags"].map(lambda f: list(f) == ["template"]).all() and templated["template_id"].nunique() == 1
    assert prompts["template_id"].notna().sum() == len(templated)
    near = rejected[rejected["source_id"].str.startswith("ja-template-")]
    assert near["reason"].str.removeprefix("near_duplicate_of:").isin(templated["prompt_id"]).all()
    assert len(templated) + len(near) == 12 and len(templated) >= 2
    flags = {"moderation": 1, "pii:email": 1, "pii:name_placeholder": 1, "pii:redacted": 1, "template": len(templated)}
    assert scratch.stats["flags"] == flags
    # Signature verification clusters the Japanese near-duplicate sets as well.
    planted_sets = prompts[prompts["source_ids"].map(lambda s: s[0].startswith(("near-ja", "ja1-copy")))]
    assert sorted(planted_sets["cluster_size"].tolist()) == [4, 4]


def test_connected_components_on_chains_stars_and_cycles(spark):
    chain = [(i, i + 1) for i in range(100, 164)]  # a 65-node path: many rounds for min-label propagation
    star = [(7, j) for j in range(1000, 1010)]
    cycle = [(50, 51), (51, 52), (52, 50), (52, 53)]
    edges = spark.createDataFrame(chain + star + cycle + [(5, 5)], "a long, b long")
    labels, rounds = connected_components(edges, max_iterations=20)
    got = {r["node"]: r["component"] for r in labels.collect()}
    assert {got[i] for i in range(100, 165)} == {100}
    assert {got[j] for j in range(1000, 1010)} == {7} and got[7] == 7
    assert {got[i] for i in (50, 51, 52, 53)} == {50}
    assert 5 not in got and len(got) == 65 + 11 + 4
    assert rounds <= 8
    with pytest.raises(RuntimeError, match="did not converge"):
        connected_components(edges, max_iterations=1)


def test_filters_and_near_dedup_off(spark, tmp_path, data, backend):
    """With the switches off, nothing is rejected but exact duplicates and languages, nothing clustered."""
    keep = {"flagged", "email", "name", "template-0", "template-1", "short-ok", "gibberish"}
    rows = [r for r in data["rows"] if r["source_id"] in keep or r["source_id"].startswith("near-en0")]
    rows += [{**rows[0], "source": "zzz", "source_id": "copy"}]
    sets = [
        "curate.filters.moderation=off", "curate.filters.pii.redacted=off", "curate.filters.pii.detected=off",
        "curate.filters.template.action=off", "curate.filters.length.enabled=false", "curate.near_dedup.enabled=false",
        "curate.langid.langs=[]", "curate.langid.und=keep",
    ]  # fmt: skip
    ctx = Context.create(make_conf(tmp_path, f"delta.backend={backend}", *sets), spark=spark)
    write_raw(ctx, rows)
    result = run_stage(ctx, "curate")
    prompts, rejected = table_rows(ctx, "prompts"), table_rows(ctx, "prompts_rejected")
    assert rejected["reason"].str.startswith("duplicate_of:").all() and len(rejected) == 1
    assert result.rows_out == len(rows) - 1 == len(prompts)
    assert (prompts["cluster_id"] == prompts["prompt_id"]).all() and (prompts["cluster_size"] == 1).all()
    assert prompts["flags"].map(len).eq(0).all() and prompts["template_id"].isna().all()
    assert result.stats["near_dedup"] == {"enabled": False} and "near_dedup" not in result.stats["steps"]

