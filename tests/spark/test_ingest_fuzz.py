"""Ingest under damage: real prompts from ../shared/data in every layout and format, with every kind of bad
record and damaged file mixed in. The stage must succeed and account for each record: in = kept + rejected."""

import gzip
import io
import json
import random
import zlib
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructlake.jobs.runs import run_stage
from tests.support.cli import cli
from tests.support.records import lmsys_record, real_prompts, wildchat_record

DEEP = b"[" * 10_000 + b"]" * 10_000


# Bad JSON Lines: (kind, line, reason); reason None means a blank line, which is no record.
BAD_LINES = [
    ("truncated", b'{"id": "t", "text": "cut', "malformed:bad_json"),
    ("garbage", b"\x93\xfe\x81garbage\xff\x00", "malformed:invalid_utf8"),
    ("invalid_utf8", b'{"id": "u8", "text": "caf\xe9 \xff"}', "malformed:invalid_utf8"),
    ("nul", b'{"id": "nul", "text": "a\x00b"}', "malformed:bad_json"),
    ("wrong_type", b'{"id": "wt", "text": 7}', "malformed:non_string_content"),
    ("array_line", b"[1, 2, 3]", "malformed:not_an_object"),
    ("null_line", b"null", "malformed:not_an_object"),
    ("tab_only", b"\t", None),
    ("deep", b'{"id": "deep", "text": ' + DEEP + b"}", "malformed:too_deep"),
    ("lone_surrogate", b'{"id": "sur", "text": "\\ud800 x"}', "malformed:invalid_unicode"),
    ("conversation_not_list", b'{"conversation_id": "cs", "conversation": "hello"}', "malformed:missing_conversation"),
    ("message_not_object", b'{"conversation_id": "mo", "conversation": [7]}', "malformed:bad_message"),
    ("content_object", b'{"conversation_hash": "co", "conversation": [{"role": "user", "content": {"a": 1}}]}', "malformed:non_string_content"),
]


# Valid JSON elements that are bad records, for JSON arrays (invalid UTF-8 inside a string stays in its element).
BAD_ELEMENTS = [
    (b'{"id": "u8", "text": "caf\xe9"}', "malformed:invalid_utf8"),
    (b'{"id": "wt", "text": ["a"]}', "malformed:non_string_content"),
    (b"[1, 2]", "malformed:not_an_object"),
    (b"null", "malformed:not_an_object"),
    (b'{"id": "deep", "text": ' + DEEP + b"}", "malformed:too_deep"),
    (b'{"id": "sur", "text": "\\udc00"}', "malformed:invalid_unicode"),
    (b'{"prompt_typo": "x"}', "malformed:missing_text"),
]


def sharegpt_record(p, i):
    return {"id": f"sg{i}", "conversations": [{"from": "human", "value": p["text"]}, {"from": "gpt", "value": "ok"}]}


def odd_but_valid(p, i):
    """Wrong types where the field is optional: the record is kept, the odd tag dropped."""
    return {"id": f"odd{i}", "text": p["text"], "lang": 5, "model": {"name": "x"}}


class Corpus:
    """Writes the damaged inputs and keeps the expected outcome of each source."""

    def __init__(self, root, shared_data):
        self.root, self.rng = root, random.Random(11)
        self.en = real_prompts(shared_data, 400)
        self.ja = real_prompts(shared_data, 120, "ja_dolly_15k_ja_v0_first5000.jsonl")
        self.arena = real_prompts(shared_data, 60, "en_arena_hard_v0.1.jsonl")
        self.inputs: list[tuple[str, str]] = []  # (path, source)
        self.kept: Counter = Counter()
        self.reasons: dict[str, Counter] = {}

    def expect(self, source, kept, reasons):
        self.kept[source] += kept
        self.reasons.setdefault(source, Counter()).update(r for r in reasons if r)

    def add(self, name, data, source):
        (self.root / name).write_bytes(data)
        self.inputs.append((str(self.root / name), source))

    def mixed_lines(self, good: list[bytes], bad_count: int) -> tuple[bytes, list]:
        lines = list(good)
        bad = [self.rng.choice(BAD_LINES) for _ in range(bad_count)]
        for _, line, _ in bad:
            lines.insert(self.rng.randrange(len(lines) + 1), line)
        return b"\n".join(lines) + b"\n", [reason for _, _, reason in bad]

    def jsonl(self, name, records, source, bad_count=12, compress=False):
        data, reasons = self.mixed_lines([json.dumps(r, ensure_ascii=False).encode() for r in records], bad_count)
        self.add(name, gzip.compress(data) if compress else data, source)
        self.expect(source, len(records), reasons)

    def json_array(self, name, records, source, bom=False, compress=False):
        elements = [json.dumps(r, ensure_ascii=False).encode() for r in records]
        bad = [self.rng.choice(BAD_ELEMENTS) for _ in range(6)]
        for raw, _ in bad:
            elements.insert(self.rng.randrange(len(elements) + 1), raw)
        data = (b"\xef\xbb\xbf" if bom else b"") + b"[\n  " + b",\n  ".join(elements) + b"\n]\n"
        self.add(name, gzip.compress(data) if compress else data, source)
        self.expect(source, len(records), [r for _, r in bad])

    def parquet(self, name, rows, source, kept, reasons, damage_last_group=False):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=max(1, len(rows) // 3))
        data = bytearray(buf.getvalue())
        if damage_last_group:
            meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
            column = meta.row_group(meta.num_row_groups - 1).column(0)
            start = column.dictionary_page_offset or column.data_page_offset
            data[start : start + 16] = b"\xff" * 16  # the page header: that row group cannot be decoded
        self.add(name, bytes(data), source)
        self.expect(source, kept, reasons)

    def build(self):
        en, ja = self.en, self.ja
        self.jsonl("lmsys.jsonl", [lmsys_record(p, i) for i, p in enumerate(en[:100])], "lmsys")
        self.jsonl("wildchat.jsonl.gz", [wildchat_record(p, i) for i, p in enumerate(ja[:60])], "wildchat", compress=True)
        self.jsonl("sharegpt.jsonl", [sharegpt_record(p, i) for i, p in enumerate(en[100:160])], "sharegpt")
        plain = [dict(p, id=f"plain{i}") for i, p in enumerate(en[160:260])] + [odd_but_valid(p, i) for i, p in enumerate(en[260:270])]
        self.jsonl("plain.jsonl", plain, "plain", bad_count=20)

        # The valid dk1 comes after a malformed dk1: the malformed one must not take its key.
        (self.root / "dupkey.jsonl").write_bytes(b'{"id": "dk1", "text": 5}\n{"id": "dk1", "text": "A valid prompt"}\n')
        self.inputs.append((str(self.root / "dupkey.jsonl"), "dupkey"))
        self.expect("dupkey", 1, ["malformed:non_string_content"])

        # gzip cut halfway: the complete lines before the cut are kept, the cut is one reject.
        whole = gzip.compress(b"".join(json.dumps(dict(p, id=f"cut{i}")).encode() + b"\n" for i, p in enumerate(en[270:370])))
        cut = whole[: len(whole) // 2]
        self.add("cut.jsonl.gz", cut, "cut")
        self.expect("cut", zlib.decompressobj(31).decompress(cut).count(b"\n"), ["malformed:unreadable_file"])
        self.add("notgzip.jsonl.gz", b'{"id": "x", "text": "plain bytes named .gz"}\n', "notgzip")
        self.expect("notgzip", 0, ["malformed:unreadable_file"])
        self.add("notgzip.json.gz", b"[1, 2]", "notgzipjson")
        self.expect("notgzipjson", 0, ["malformed:unreadable_file"])

        self.json_array("arena.json", [dict(p) for p in self.arena[:30]], "arena")
        self.json_array("bom.json", [dict(p, id=f"bom{i}") for i, p in enumerate(self.arena[30:50])], "bom", bom=True)
        self.json_array("lmsys_array.json.gz", [lmsys_record(p, i) for i, p in enumerate(en[370:400])], "lmsysarr", compress=True)
        # An array whose structure breaks at element 7: the seven before are kept.
        elements = [json.dumps(dict(p, id=f"brk{i}")) for i, p in enumerate(self.arena[50:60])]
        self.add("broken.json", ("[" + ", ".join(elements[:7]) + ', {"id": "brk7", "text": "no end' + "".join(elements[8:])).encode(), "broken")
        self.expect("broken", 7, ["malformed:unreadable_file"])

        seed = [dict(p, id=f"pq{i}") for i, p in enumerate(ja[60:90])]
        self.parquet("seed.parquet", seed, "seed", 30, [])
        # BIGINT ids here, STRING ids above: files are read one by one, so the types never meet.
        self.parquet("bigint_ids.parquet", [{"id": 1000 + i, "text": p["text"]} for i, p in enumerate(ja[90:100])], "bigint", 10, [])
        self.parquet("unexpected.parquet", [{"a": i, "b": "x"} for i in range(5)], "unexpected", 0, ["malformed:missing_text"] * 5)
        self.parquet("int_text.parquet", [{"id": f"it{i}", "text": i} for i in range(4)], "inttext", 0, ["malformed:non_string_content"] * 4)
        lmsys_pq = [{"conversation_id": f"lpq{i}", "conversation": [{"role": "user", "content": p["text"]}]} for i, p in enumerate(ja[100:120])]
        self.parquet("lmsys.parquet", lmsys_pq, "lmsyspq", 20, [])
        damaged = [dict(p, id=f"dmg{i}") for i, p in enumerate(en[:30])]
        self.parquet("damaged.parquet", damaged, "damaged", 20, ["malformed:unreadable_file"], damage_last_group=True)
        self.add("truncated.parquet", (self.root / "seed.parquet").read_bytes()[:-40], "truncpq")
        self.expect("truncpq", 0, ["malformed:unreadable_file"])
        return self

    def sets(self):
        body = ", ".join(f"{{path: '{path}', source: {source}}}" for path, source in self.inputs)
        return [f"ingest.inputs=[{body}]"]

    @property
    def rows_in(self):
        return sum(self.kept.values()) + sum(sum(c.values()) for c in self.reasons.values())


def counts(table, column):
    return Counter(r[column] for r in table.select(column).collect())


def test_fuzz_every_record_accounted_for(ctx_factory, tmp_path, shared_data):
    corpus = Corpus(tmp_path, shared_data).build()
    ctx = ctx_factory(*corpus.sets())
    result = run_stage(ctx, "ingest")

    expected_reasons = sum(corpus.reasons.values(), Counter())
    assert result.rows_in == corpus.rows_in == result.rows_out + result.rows_rejected
    assert result.rows_out == sum(corpus.kept.values())
    assert Counter(result.stats["rejected_by_reason"]) == expected_reasons
    assert len(expected_reasons) >= 10
    raw, rejected = ctx.store.read("prompts_raw"), ctx.store.read("prompts_rejected")
    assert raw.count() == result.rows_out and rejected.count() == result.rows_rejected
    assert +counts(raw, "source") == +corpus.kept
    assert counts(rejected, "source") == Counter({s: sum(c.values()) for s, c in corpus.reasons.items() if c})

    assert raw.filter("source = 'dupkey' AND source_id = 'dk1'").first().text == "A valid prompt"
    odd = raw.filter("source_id = 'odd3'").first()
    assert odd.source_lang is None and odd.source_model is None
    bom = raw.filter("source = 'bom'").collect()
    assert len(bom) == 20 and {r.record_index for r in bom} <= set(range(26))
    damage = {r.source: r for r in rejected.filter("reason = 'malformed:unreadable_file'").collect()}
    assert "truncated" in damage["cut"].detail and damage["cut"].input_file.endswith("cut.jsonl.gz")
    assert damage["cut"].record_index == corpus.kept["cut"] + 1
    assert "Parquet" in damage["damaged"].detail and damage["damaged"].record_index == 20
    assert damage["broken"].record_index == 7
    run = ctx.store.read("runs").filter(f"run_id = '{ctx.run_id}'").first()
    assert (run.status, run.rows_in, run.rows_rejected) == ("succeeded", result.rows_in, result.rows_rejected)


def cli_sets(tmp_path, inputs_set):
    return ["--conf", "conf/local.yaml", "--set", f"run.lake_root={tmp_path / 'lake'}", "--set", f"run.work_dir={tmp_path / 'work'}", "--set", inputs_set]


@pytest.mark.spark  # the CLI runs ingest on Spark in a subprocess
def test_fuzz_through_the_cli(tmp_path, shared_data):
    corpus = Corpus(tmp_path, shared_data).build()
    run = cli("ingest", *cli_sets(tmp_path, corpus.sets()[0]))
    assert run.returncode == 0, run.stderr[-3000:]
    stage = json.loads(run.stdout[run.stdout.index("{") :])["stages"][0]
    assert (stage["rows_in"], stage["rows_out"]) == (corpus.rows_in, sum(corpus.kept.values()))
    assert stage["rows_in"] == stage["rows_out"] + stage["rows_rejected"]


@pytest.mark.spark
def test_shared_prompts_plus_one_truncated_line(tmp_path, shared_data):
    shared = sorted((shared_data / "prompts").glob("*.jsonl"))
    lines = sum(1 for f in shared for line in f.read_bytes().splitlines() if line.strip())
    (tmp_path / "cut.jsonl").write_bytes(b'{"id":"t","text":"cut\n')
    inputs = f"ingest.inputs=[{{path: '{shared_data}/prompts/*.jsonl'}}, {{path: '{tmp_path}/cut.jsonl'}}]"
    run = cli("ingest", *cli_sets(tmp_path, inputs))
    assert run.returncode == 0, run.stderr[-3000:]
    stage = json.loads(run.stdout[run.stdout.index("{") :])["stages"][0]
    assert (stage["rows_in"], stage["rows_out"], stage["rows_rejected"]) == (lines + 1, lines, 1)

