"""The dataset card export writes beside its data: README.md in the Hugging Face dataset-card format.

A YAML header the Hub and `datasets.load_dataset(<export dir>, <lang>)` read (license, languages, size
category, one `configs` entry per language), then what a user of the data must know to trust it: where
the prompts came from, what was filtered and deduplicated, which models answered with which sampling,
what the checks and the judge found, and the run and config that made it. Every figure is read from the
lake's tables at export time; nothing is typed in by hand.
"""

from __future__ import annotations

from typing import Any

import yaml
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from instructlake.jobs.runs import Context, config_json, latest_stats
from instructlake.udfs.curate import PER_ITEM_REASON
from instructlake.udfs.text import content_hash

FILE = "README.md"
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))  # fmt: skip


def size_category(n: int) -> str:
    """The Hub's size_categories value for n examples."""
    return next((label for limit, label in _SIZES if n < limit), "n>1B")


def card_facts(ctx: Context, exported: DataFrame, left_out: dict[str, int], data_glob: str) -> dict[str, Any]:
    """Everything the card states, from the tables: `exported` holds the exported responses' rows
    (responses columns), `left_out` the export's reason counts, `data_glob` the data files of one
    language relative to the card, with `{lang}` in it."""
    store, conf = ctx.store, ctx.conf
    per = exported.groupBy("lang", "model", "task").count().collect()
    langs = sorted({r["lang"] for r in per})
    sampling = exported.groupBy("model", "task", "temperature", "top_p", "max_tokens", "n").count().orderBy("model", "task").collect()
    facts: dict[str, Any] = {
        "examples": sum(r["count"] for r in per),
        "per_lang_model_task": [dict(r.asDict()) for r in sorted(per, key=lambda r: (r["lang"], r["model"], r["task"]))],
        "langs": langs,
        "sampling": [dict(r.asDict()) for r in sampling],
        "left_out": dict(sorted((str(k), v) for k, v in left_out.items())),
        "data_glob": data_glob,
        "run_id": ctx.run_id,
        "config_digest": content_hash(config_json(conf)),
        "responses_version": store.version("responses"),
    }
    sources: dict[str, dict[str, int]] = {}
    if store.exists("prompts_raw"):
        for r in store.read("prompts_raw").groupBy("source").count().collect():
            sources.setdefault(r["source"], {})["ingested"] = r["count"]
    if store.exists("prompts"):
        kept = store.read("prompts").select(F.explode(F.array_distinct("sources")).alias("source")).groupBy("source").count().collect()
        for r in kept:
            sources.setdefault(r["source"], {})["kept"] = r["count"]
    facts["sources"] = dict(sorted(sources.items()))
    licenses = conf.export.card.licenses
    facts["licenses"] = {s: licenses.get(s) for s in facts["sources"]}
    if store.exists("prompts_rejected"):
        reasons = (
            store.read("prompts_rejected")
            .groupBy("stage", F.regexp_replace("reason", PER_ITEM_REASON, "$1").alias("reason"))
            .count()
            .orderBy(F.desc("count"), "stage", "reason")
            .collect()
        )
        facts["rejected"] = [dict(r.asDict()) for r in reasons]
    curate = latest_stats(store, "curate")
    if curate:
        near = curate.get("near_dedup", {})
        facts["dedup"] = {
            "exact_duplicates": curate.get("rejected_by_reason", {}).get("duplicate_of", 0),
            "near": near.get("enabled", False),
            "near_duplicates": curate.get("rejected_by_reason", {}).get("near_duplicate_of", 0),
            "near_clusters": near.get("clusters", 0),
            "near_threshold": near.get("threshold"),
        }
        facts["decontamination"] = curate.get("decontaminate", {"enabled": False})
    if store.exists("response_checks"):
        from instructlake.udfs.checks import CHECKS

        # Over every generated response that was checked: the failing ones are why some are not exported.
        checks = store.read("response_checks").join(store.read("responses").select("response_id"), "response_id")
        row = checks.agg(
            F.count("*").alias("n"), F.sum(F.col("passed").cast("int")).alias("passed"), *[F.sum(F.col(c).cast("int")).alias(c) for c in CHECKS]
        ).first()
        facts["checks"] = {"checked": row["n"], "passed": row["passed"] or 0, "flagged": {c: row[c] or 0 for c in CHECKS}}
    ids = exported.select("response_id")
    if store.exists("judgements"):
        scores = store.read("judgements").join(ids, "response_id").where(F.col("score").isNotNull())
        hist = scores.groupBy("judge_model", F.floor("score").cast("int").alias("score")).count().collect()
        facts["judge_scores"] = sorted((r["judge_model"], r["score"], r["count"]) for r in hist)
    return facts


def render(facts: dict[str, Any], pretty_name: str | None = None) -> str:
    """The card: YAML metadata between `---` lines, then Markdown."""
    declared = sorted({v for v in facts["licenses"].values() if v})
    undeclared = sorted(s for s, v in facts["licenses"].items() if not v)
    license_tag: Any = "other" if undeclared or not declared else declared[0] if len(declared) == 1 else declared
    meta: dict[str, Any] = {
        **({"pretty_name": pretty_name} if pretty_name else {}),
        "license": license_tag,
        "language": [lang for lang in facts["langs"] if lang != "und"],
        "size_categories": [size_category(facts["examples"])],
        "task_categories": ["text-generation"],
        "tags": ["instruction-tuning", "sft", "synthetic-responses"],
        "configs": [
            {"config_name": lang, "data_files": [{"split": "train", "path": facts["data_glob"].format(lang=lang)}], **({"default": True} if i == 0 else {})}
            for i, lang in enumerate(facts["langs"])
        ],
    }
    out = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    out += [f"# {_md(pretty_name or 'instructlake SFT export')}", ""]
    out += [
        f"{facts['examples']:,} chat examples (`messages`: system?, user, assistant) in {len(facts['langs'])} "
        f"language(s): real human-written prompts answered by open-weight models. Load one language with "
        f"`datasets.load_dataset(<this folder>, \"{facts['langs'][0] if facts['langs'] else 'en'}\")`.",
        "",
        "## Examples per language, model and task",
        "",
        *_table(["lang", "model", "task", "examples"], [[r["lang"], r["model"], r["task"], r["count"]] for r in facts["per_lang_model_task"]]),
        "",
        "## Sources",
        "",
        *_table(
            ["source", "license", "ingested rows", "kept prompts"],
            [[s, facts["licenses"].get(s) or "not declared", c.get("ingested", 0), c.get("kept", 0)] for s, c in facts["sources"].items()],
        ),
    ]
    if undeclared:
        out += ["", f"License not declared in `export.card.licenses` for: {', '.join(_md(s) for s in undeclared)}; the license tag says `other`."]
    if facts.get("rejected"):
        out += ["", "## Filtered prompts (prompts_rejected, by stage and reason)", ""]
        out += _table(["stage", "reason", "rows"], [[r["stage"], r["reason"], r["count"]] for r in facts["rejected"]])
    if facts.get("dedup"):
        d = facts["dedup"]
        out += [
            "", "## Deduplication", "",
            f"- exact duplicates removed (normalized text): {d['exact_duplicates']:,}",
            f"- near duplicates removed (MinHash-LSH, Jaccard >= {d['near_threshold']}, edit ratio for short CJK): "
            f"{d['near_duplicates']:,} in {d['near_clusters']:,} clusters" if d["near"] else "- near dedup: off",
        ]  # fmt: skip
    dc = facts.get("decontamination") or {}
    if dc.get("enabled"):
        verb = "removed" if dc["action"] == "drop" else "flagged"
        out += ["", "## Decontamination", "", f"Prompts that contain an evaluation benchmark's item ({verb}; "
                f"{dc.get('cross_lingual', 0):,} of them found through a translation):", ""]  # fmt: skip
        out += _table(["benchmark", "items", f"prompts {verb}"], [[b, n, dc.get("prompts", {}).get(b, 0)] for b, n in dc["items"].items()])
    elif facts.get("dedup"):
        out += ["", "## Decontamination", "", "No benchmark was checked (`curate.decontaminate.benchmarks` is empty)."]
    out += ["", "## Models and sampling", ""]
    out += _table(
        ["model", "task", "temperature", "top_p", "max_tokens", "samples per prompt", "exported"],
        [[r["model"], r["task"], r["temperature"], r["top_p"], r["max_tokens"], r["n"], r["count"]] for r in facts["sampling"]],
    )
    if facts.get("checks"):
        c = facts["checks"]
        out += [
            "", "## Response checks", "",
            f"{c['checked']:,} generated responses checked, {c['passed']:,} passed the gate; flagged per check:", "",
        ]  # fmt: skip
        out += _table(["check", "flagged"], [[k, v] for k, v in c["flagged"].items()])
    if facts.get("judge_scores"):
        out += ["", "## Judge scores of the exported responses", ""]
        out += _table(["judge model", "score (floor)", "responses"], [list(t) for t in facts["judge_scores"]])
    if facts["left_out"]:
        out += ["", "## Responses left out of the export", ""]
        out += _table(["reason", "responses"], [[k, v] for k, v in facts["left_out"].items()])
    out += [
        "", "## Provenance", "",
        f"- run id: `{_md(facts['run_id'])}`",
        f"- config digest: `{facts['config_digest']}` (blake2b of the redacted config; the full config is in the `runs` table)",
        f"- responses table version: {facts['responses_version']}",
        "",
    ]  # fmt: skip
    return "\n".join(out)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows]
    return lines


def _md(value: Any) -> str:
    # Source, model and reason names come from users' files and configs: nothing in them may open a tag,
    # a link or a table cell.
    text = "" if value is None else str(value)
    for ch, esc in (("\\", "\\\\"), ("|", "\\|"), ("`", "\\`"), ("<", "&lt;"), (">", "&gt;"), ("[", "\\["), ("]", "\\]"), ("\n", " ")):
        text = text.replace(ch, esc)
    return text
