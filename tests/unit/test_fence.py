"""Commits that hold by construction (udfs.rs_table, udfs.sinks), on real delta-rs tables without Spark:
a handle of an older fence epoch lands nothing, one app id commits once however many attempts race, and a
chunk counts as done only once its main table holds it."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from instructlake.udfs.rs_table import FENCE_APP, Fenced, RsTable, fence_epoch
from instructlake.udfs.sinks import DeltaSink, StagingSink
from tests.support.race import race

SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])


def table(tmp_path, name="t", fence=None) -> RsTable:
    uri = str(tmp_path / name)
    DeltaTable.create(uri, schema=SCHEMA, mode="ignore")
    return RsTable(uri, SCHEMA, {}, retries=50, fence=fence)


def rows(t: RsTable) -> list[tuple]:
    return sorted((r["k"], r["v"]) for r in t.open().to_pyarrow_table().to_pylist())


def data(*keys: str, v: int = 1) -> pa.Table:
    return pa.table({"k": list(keys), "v": [v] * len(keys)}, schema=SCHEMA)


def test_a_handle_of_an_older_epoch_lands_nothing(tmp_path):
    plain = table(tmp_path)
    first = RsTable(plain.uri, SCHEMA, {}, 50, fence=plain.fence_epoch())  # epoch 0: never fenced
    assert first.append(data("a"), "chunk-0")
    second_epoch = plain.take_fence()  # another run takes the table over
    assert second_epoch == 1 and fence_epoch(plain.open().transaction_version(FENCE_APP)) == 1
    version = plain.open().version()
    for commit in (
        lambda: first.append(data("b"), "chunk-1"),
        lambda: first.merge(data("c"), ("k",), "chunk-2"),
        lambda: first.delete(data("a"), ("k",), "chunk-3"),
        lambda: first.replace(data("a", v=9), ("k",), "chunk-4"),
    ):
        with pytest.raises(Fenced, match="epoch 0, the table is epoch 1"):
            commit()
    assert plain.open().version() == version and rows(plain) == [("a", 1)]
    second = RsTable(plain.uri, SCHEMA, {}, 50, fence=second_epoch)
    assert second.append(data("b"), "chunk-1") and rows(plain) == [("a", 1), ("b", 1)]
    assert plain.take_fence() == 2  # epochs only grow


def test_an_older_epoch_racing_the_takeover_never_lands(tmp_path):
    """Commits of epoch 0 racing a takeover: each lands before it or fails, none after it."""
    plain = table(tmp_path)
    stale = RsTable(plain.uri, SCHEMA, {}, 50, fence=0)
    taken_at: list[int] = []

    def take_over():
        plain.take_fence()
        taken_at.append(plain.open().version())

    landed, refused = race(lambda i: stale.append(data(f"k{i}"), f"chunk-{i}"), 8, Fenced, during=take_over)
    taken_at = taken_at[0]
    assert len(landed) + len(refused) == 8
    after = [h for h in plain.open().history() if h["version"] > taken_at]
    assert after == [], after  # nothing committed after the fence moved
    assert rows(plain) == sorted((f"k{i}", 1) for i in landed)


def test_one_app_id_commits_once_however_many_attempts_race(tmp_path):
    """Retried or speculative task attempts of one chunk: the app id's check and the commit are decided on
    one snapshot, so exactly one lands and the others report it already committed."""
    t = table(tmp_path, fence=0)
    results, go = [], threading.Barrier(6)

    def attempt():
        go.wait()
        results.append(t.append(data("a", "b"), "chunk-0"))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False] * 5 + [True]
    assert rows(t) == [("a", 1), ("b", 1)]


class FailingMain(RsTable):
    """A main table whose commit dies once (the task killed between the two tables' commits)."""

    def append(self, data, app_id=None):
        if not getattr(self, "_failed", False):
            object.__setattr__(self, "_failed", True)
            raise KeyboardInterrupt("killed")
        return super().append(data, app_id)


def test_a_chunk_is_done_only_once_its_main_table_holds_it(tmp_path):
    main = table(tmp_path, "responses", fence=0)
    errors = table(tmp_path, "generation_errors", fence=0)
    killed = FailingMain(main.uri, SCHEMA, {}, 50, fence=0)
    sink = DeltaSink({"responses": killed, "generation_errors": errors}, {"responses": None, "generation_errors": ("k",)}, ("responses", "generation_errors"), "generate:r1:n1")
    chunk = {"responses": [{"k": "r1", "v": 1}], "generation_errors": [{"k": "e1", "v": 1}]}
    with pytest.raises(KeyboardInterrupt):
        sink.commit("0-0", chunk)
    assert rows(errors) == [("e1", 1)] and rows(main) == []  # errors first, then the kill
    assert not sink.done("0-0")  # so the retried attempt redoes the chunk ...
    assert sink.commit("0-0", chunk) and sink.done("0-0")
    assert rows(errors) == [("e1", 1)] and rows(main) == [("r1", 1)]  # ... and nothing doubles
    assert not sink.commit("0-0", chunk)
    empty = {"responses": [], "generation_errors": [{"k": "e2", "v": 1}]}  # every request failed
    assert sink.commit("0-1", empty) and sink.done("0-1")  # the main table still records the chunk


def test_a_staged_chunk_is_done_once_its_main_file_is_there(tmp_path):
    sink = StagingSink(str(tmp_path / "staging"), {"responses": SCHEMA, "generation_errors": SCHEMA}, ("responses", "generation_errors"), "generate-r1-n1")
    assert not sink.done("0-0")
    sink.commit("0-0", {"responses": [], "generation_errors": [{"k": "e1", "v": 1}]})
    assert sink.done("0-0")
    assert (tmp_path / "staging" / "responses" / "generate-r1-n1-0-0.parquet").is_file()


class DoneSink:
    """Holds the chunks of `done` already (committed by an earlier attempt); records what is committed."""

    def __init__(self, *done: str):
        self.held, self.committed = set(done), []

    def done(self, chunk_key):
        return chunk_key in self.held

    def commit(self, chunk_key, rows):
        self.committed.append((chunk_key, sorted(r["prompt_id"] for r in rows["responses"])))
        return True


def test_a_first_attempt_skips_the_chunks_already_committed():
    """A stage resubmitted after a lost shuffle runs its tasks again as attempt 0: chunks that an attempt of
    the earlier stage attempt committed are skipped, not generated again."""
    import pandas as pd

    from instructlake.udfs import engine as E
    from instructlake.udfs import generation as G

    spec = {"backend": "scripted", "model": "m", "engine_args": {"rules": [{"match": ".", "reply": "ok"}]}}
    task = G.LLMTask("respond", "m", spec, E.SamplingConfig(max_tokens=4), {"model": "m"}, "r1", 2, 2, 30.0)
    ids = ["p0", "p1", "p2", "p3"]
    frame = pd.DataFrame(dict(prompt_id=ids, origin_prompt_id=ids, task="respond", lang="en", text="Hi", attempt=1))
    sink = DoneSink("0-0")
    summaries = pd.concat(G.run_partition(iter([frame]), task, sink, partition=0, attempt=0))
    assert list(summaries["status"]) == ["skipped", "committed"]
    assert sink.committed == [("0-1", ["p2", "p3"])]
