"""Ingest on real prompts from ../shared/data, written in the LMSYS-Chat-1M and WildChat record layouts,
through Spark into real Delta tables."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructlake.jobs.runs import run_stage
from instructlake.udfs.text import normalize
from tests.support.records import lmsys_record, real_prompts, wildchat_record


def jsonl(path, records, extra_lines=()):
    with open(path, "wb") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return path


@pytest.fixture
def inputs(tmp_path, shared_data):
    en = real_prompts(shared_data, 40)
    ja = real_prompts(shared_data, 30, "ja_dolly_15k_ja_v0_first5000.jsonl")
    jsonl(
        tmp_path / "lmsys.jsonl",
        [lmsys_record(p, i) for i, p in enumerate(en)],
        extra_lines=[
            b'{"conversation_id": "broken", "conversation": [',  # bad JSON (line 41)
            json.dumps({"conversation_id": "noconv", "model": "m"}).encode(),  # missing conversation (line 42)
            json.dumps({"conversation_id": "nonstr", "conversation": [{"role": "user", "content": 42}]}).encode(),
            json.dumps({"conversation_id": "empty", "conversation": [{"role": "user", "content": " \u200b\n\t "}]}).encode(),
            b'{"conversation_id": "badutf8", "conversation": [{"role": "user", "content": "caf\xe9 \xff"}]}',
            b"",  # a blank line is no record
        ],
    )
    wildchat = tmp_path / "wildchat.jsonl.gz"
    with gzip.open(wildchat, "wt", encoding="utf-8") as f:
        for i, p in enumerate(ja):
            f.write(json.dumps(wildchat_record(p, i), ensure_ascii=False) + "\n")
    plain_rows = real_prompts(shared_data, 25, "en_self_instruct_seed_tasks.jsonl")
    pq.write_table(pa.Table.from_pylist(plain_rows), tmp_path / "seed.parquet")
    (tmp_path / "arena.json").write_text(json.dumps(real_prompts(shared_data, 10, "en_arena_hard_v0.1.jsonl")))
    return tmp_path, en, ja, plain_rows


def ingest_sets(root):
    return [
        "ingest.inputs=["
        f"{{path: '{root}/lmsys.jsonl', source: lmsys}},"
        f"{{path: '{root}/wildchat.jsonl.gz', source: wildchat}},"
        f"{{path: '{root}/seed.parquet'}},"
        f"{{path: '{root}/arena.json'}}]"
    ]


def rows_by(table, *keys):
    return {tuple(r[k] for k in keys): r for r in (x.asDict() for x in table.collect())}


def test_ingest_layouts_rejects_counts_and_rerun(ctx_factory, inputs):
    root, en, ja, plain = inputs
    ctx = ctx_factory(*ingest_sets(root))
    result = run_stage(ctx, "ingest")

    raw = rows_by(ctx.store.read("prompts_raw"), "source", "source_id", "turn")
    rejected = rows_by(ctx.store.read("prompts_rejected"), "source", "source_id", "turn")
    # in = kept + rejected, exactly; the blank line is not a record
    assert result.rows_in == 40 + 5 + 30 + 25 + 10
    assert result.rows_out == len(raw) == 40 + 30 + 25 + 10
    assert result.rows_rejected == len(rejected) == 5
    assert result.rows_in == result.rows_out + result.rows_rejected
    assert result.stats["blank_lines"] == 1

    # LMSYS: first user turn only, moderation per message, redaction flag, model, language tag
    r = raw[("lmsys", "lmsys-5", 0)]
    assert r["text"] == normalize(en[5]["text"]) and r["layout"] == "lmsys"
    assert r["moderation_flagged"] is True and raw[("lmsys", "lmsys-1", 0)]["moderation_flagged"] is False
    assert raw[("lmsys", "lmsys-7", 0)]["redacted"] is True
    assert r["source_model"] == "vicuna-13b" and r["source_lang"] == "English"
    assert r["record_index"] == 6 and r["input_file"].endswith("lmsys.jsonl")  # 1-based line number
    assert not any(k[2] == 1 for k in raw)  # turns: first

    # WildChat (gzip): per-message language and toxic flag
    w = raw[("wildchat", "wc0004", 0)]
    assert w["text"] == normalize(ja[4]["text"]) and w["layout"] == "wildchat"
    assert w["moderation_flagged"] is True and w["source_lang"] == "Japanese"
    assert raw[("wildchat", "wc0003", 0)]["redacted"] is True

    # Plain prompts from Parquet and from a JSON array, source named after the file
    assert raw[("seed", plain[3]["id"], 0)]["text"] == normalize(plain[3]["text"])
    assert raw[("seed", plain[3]["id"], 0)]["source_lang"] == "en"
    assert sum(1 for k in raw if k[0] == "arena") == 10

    # Every malformed kind with its reason, pointing at its line, raw record kept
    reasons = {k[1]: (v["reason"], v["record_index"]) for k, v in rejected.items()}
    lmsys_file = next(v["input_file"] for v in rejected.values())
    assert reasons[f"{lmsys_file}#41"] == ("malformed:bad_json", 41)
    assert reasons["noconv"] == ("malformed:missing_conversation", 42)
    assert reasons["nonstr"] == ("malformed:non_string_content", 43)
    assert reasons["empty"] == ("empty", 44)
    assert reasons[f"{lmsys_file}#45"] == ("malformed:invalid_utf8", 45)
    assert "\\xff" in rejected[("lmsys", f"{lmsys_file}#45", 0)]["raw"]
    assert all(v["stage"] == "ingest" and v["raw"] for v in rejected.values())

    # Run record says the same
    run = ctx.store.read("runs").filter(f"run_id = '{ctx.run_id}'").first()
    assert (run.status, run.rows_in, run.rows_out, run.rows_rejected) == ("succeeded", 110, 105, 5)
    assert json.loads(run.stats)["rejected_by_reason"]["malformed:bad_json"] == 1

    # Re-running on the same input changes nothing: no new table versions
    versions = {t: ctx.store.version(t) for t in ("prompts_raw", "prompts_rejected")}
    again = run_stage(ctx_factory(*ingest_sets(root)), "ingest")
    assert (again.rows_in, again.rows_out, again.rows_rejected) == (110, 105, 5)
    assert {t: ctx.store.version(t) for t in versions} == versions
    assert again.stats["prompts_raw"] == {"inserted": 0, "updated": 0}


def test_all_user_turns(ctx_factory, inputs):
    root = inputs[0]
    ctx = ctx_factory(f"ingest.inputs=[{{path: '{root}/lmsys.jsonl', layout: lmsys}}]", "ingest.turns=all")
    result = run_stage(ctx, "ingest")
    raw = rows_by(ctx.store.read("prompts_raw"), "source_id", "turn")
    assert raw[("lmsys-3", 1)]["text"] == "follow-up 3"
    assert result.rows_out == 80 and result.rows_in == 85


def test_duplicate_keys_in_input_are_kept_as_rejects(ctx_factory, tmp_path, shared_data):
    rows = real_prompts(shared_data, 5)
    jsonl(tmp_path / "a.jsonl", rows + [rows[2]])
    ctx = ctx_factory(f"ingest.inputs=[{{path: '{tmp_path}/a.jsonl', source: s}}]")
    result = run_stage(ctx, "ingest")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (6, 5, 1)
    rej = ctx.store.read("prompts_rejected").first()
    assert rej.reason == "duplicate_key" and rej.source_id.startswith(rows[2]["id"] + "@")


def test_no_matching_input_is_a_clear_error(ctx_factory, tmp_path):
    ctx = ctx_factory(f"ingest.inputs=[{{path: '{tmp_path}/none*.jsonl'}}]")
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        run_stage(ctx, "ingest")
    run = ctx.store.read("runs").first()
    assert run.status == "failed" and "nothing matches" in run.error



def counts_by_source(ctx):
    kept = {r["source"]: r["count"] for r in ctx.store.read("prompts_raw").groupBy("source").count().collect()}
    rejected = {r["source"]: r["count"] for r in ctx.store.read("prompts_rejected").groupBy("source").count().collect()}
    return {s: (kept.get(s, 0), rejected.get(s, 0)) for s in sorted(set(kept) | set(rejected))}


@pytest.fixture
def remote_dir(spark, tmp_path):
    """A folder of tmp_path seen through a URI (Hadoop's viewfs://, a mount table over file://): what ingest
    does with s3://, abfss:// or gs:// files, on the session's own Hadoop file systems."""
    name = f"il{abs(hash(str(tmp_path))) % 10**9}"
    (tmp_path / "remote").mkdir()
    hadoop, key = spark._jsc.hadoopConfiguration(), f"fs.viewfs.mounttable.{name}.link./r"
    hadoop.set(key, (tmp_path / "remote").as_uri())
    yield tmp_path / "remote", f"viewfs://{name}/r"
    hadoop.unset(key)


def test_json_or_json_lines_by_the_first_byte_local_and_remote(ctx_factory, tmp_path, remote_dir):
    """A `.json` file is a JSON array when its first byte (past a BOM and whitespace) is `[`, else JSON Lines,
    local or remote: a malformed first line costs that line only, a pretty-printed remote array is read
    element by element."""
    folder, uri = remote_dir
    good = [{"id": f"g{i}", "text": f"prompt number {i}"} for i in range(200)]
    lines = b'{"id": "broken", "text": "cut\n' + b"".join(json.dumps(r).encode() + b"\n" for r in good)
    (tmp_path / "local_lines.json").write_bytes(lines)
    (folder / "lines.json").write_bytes(lines)
    (folder / "array.json").write_bytes(b"\xef\xbb\xbf\n" + json.dumps(good[:30], indent=2).encode())
    ctx = ctx_factory(
        f"ingest.inputs=[{{path: '{tmp_path}/local_lines.json', source: local}}, {{path: '{uri}/arr*.json', source: remote_array}},"
        f" {{path: '{uri}/lines.json', source: remote_lines}}]"
    )
    result = run_stage(ctx, "ingest")
    assert counts_by_source(ctx) == {"local": (200, 1), "remote_array": (30, 0), "remote_lines": (200, 1)}
    assert (result.rows_in, result.rows_out) == (432, 430)
    bad = ctx.store.read("prompts_rejected").filter("source = 'remote_lines'").first()
    assert (bad.reason, bad.record_index, bad.input_file) == ("malformed:bad_json", 1, f"{uri}/lines.json")
    assert {r.record_index for r in ctx.store.read("prompts_raw").filter("source = 'remote_array'").collect()} == set(range(30))


def test_a_bare_cr_splits_no_record_in_plain_or_gzip_json_lines(ctx_factory, tmp_path):
    """Records end at LF only (a CRLF's CR is dropped), in plain and gzip files alike: a bare CR, JSON
    whitespace between tokens, is no line break."""
    data = b'{"id": "a", "text": "one",\r"lang": "en"}\r\n{"id": "b", "text": "two"}\n{"id": "c",\r "text": "three"}\r\n'
    (tmp_path / "cr.jsonl").write_bytes(data)
    (tmp_path / "cr.jsonl.gz").write_bytes(gzip.compress(data))
    ctx = ctx_factory(f"ingest.inputs=[{{path: '{tmp_path}/cr.jsonl', source: plain}}, {{path: '{tmp_path}/cr.jsonl.gz', source: gz}}]")
    run_stage(ctx, "ingest")
    assert counts_by_source(ctx) == {"gz": (3, 0), "plain": (3, 0)}
    rows = rows_by(ctx.store.read("prompts_raw"), "source", "source_id")
    assert [rows[("plain", i)]["record_index"] for i in "abc"] == [rows[("gz", i)]["record_index"] for i in "abc"] == [1, 2, 3]
    assert rows[("plain", "a")]["source_lang"] == "en"


def test_oversize_lines_and_files_are_counted_rejects_not_failures(ctx_factory, tmp_path):
    """ingest.max_record_bytes / max_file_bytes (2 GiB-scale limits, small here): a JSON Lines line over
    the record limit (cut before it leaves the JVM) and a JSON file over the file limit (never read) are
    `oversize` rejects; the run succeeds and rows in = kept + rejected."""
    lines = [json.dumps({"id": str(i), "text": f"prompt number {i}"}).encode() for i in range(3)]
    lines.insert(1, json.dumps({"id": "big", "text": "x" * 3000}).encode())
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "huge.json").write_text(json.dumps([{"id": "h", "text": "y" * 6000}]))
    (tmp_path / "fine.json").write_text(json.dumps([{"id": "f", "text": "a prompt in a JSON array"}]))
    ctx = ctx_factory(
        f"ingest.inputs=[{{path: '{tmp_path}/p.jsonl', source: lines}}, {{path: '{tmp_path}/*.json', source: docs}}]",
        "ingest.max_record_bytes=2000", "ingest.max_file_bytes=5000",
    )  # fmt: skip
    result = run_stage(ctx, "ingest")
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (6, 4, 2)
    assert result.stats["rejected_by_reason"] == {"oversize": 2}
    rejects = {r["input_file"].rsplit("/", 1)[1]: r for r in ctx.store.rows("prompts_rejected")}
    assert set(rejects) == {"p.jsonl", "huge.json"}
    assert rejects["p.jsonl"]["record_index"] == 2 and rejects["p.jsonl"]["raw"].startswith('{"id": "big"')
    assert "max_record_bytes (2,000 bytes)" in rejects["p.jsonl"]["detail"]
    assert rejects["huge.json"]["detail"].startswith("file of 6,") and "max_file_bytes (5,000)" in rejects["huge.json"]["detail"]
