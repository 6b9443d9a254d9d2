"""The delta-spark backend: the same store contract as the embedded one, in a JVM that has the Delta jars.

No Maven here, so the jars are usually absent and these tests skip with the reason. Where the jars exist
(INSTRUCTLAKE_DELTA_JARS=/p/delta-spark_2.13-X.jar,/p/delta-storage-X.jar, or an Ivy cache from a machine
that reached Maven) they run for real in a subprocess, since a JVM's classpath is fixed at start.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from instructlake.jobs.session import _IVY_JAR_GLOBS

from .conftest import REPO

JARS = [j for j in os.environ.get("INSTRUCTLAKE_DELTA_JARS", "").split(",") if j] or sorted(
    j for pattern in _IVY_JAR_GLOBS for j in glob.glob(os.path.expanduser(pattern))
)
pytestmark = [
    pytest.mark.delta_spark,
    pytest.mark.skipif(
        not JARS,
        reason="delta-spark jars absent (no Maven Central here); set INSTRUCTLAKE_DELTA_JARS to run these",
    ),
]

SCRIPT = r"""
import datetime as dt, json, sys
from instructlake.jobs.config import load_config
from instructlake.jobs.runs import Context, run_stage
from instructlake.jobs.tables import SCHEMAS
lake, jars, data = sys.argv[1], sys.argv[2], sys.argv[3]
conf = load_config(["conf/local.yaml"], [f"run.lake_root={lake}", "delta.backend=spark", f"delta.jars=[{jars}]",
                    f"run.work_dir={lake}/work", f"ingest.inputs=[{{path: '{data}'}}]"])
ctx = Context.create(conf)
now = dt.datetime.now(dt.timezone.utc)
rows = [dict(source="s", source_id=str(i), turn=0, text=f"t{i}", source_lang="en", moderation_flagged=False,
             redacted=False, source_model=None, layout="plain", input_file="f", record_index=i, run_id="r1",
             created_at=now) for i in range(200)]
df = ctx.spark.createDataFrame(rows, SCHEMAS["prompts_raw"]).repartition(4)
out = {"backend": ctx.store.backend}
out["append"] = ctx.store.append(df, "prompts_raw", run_id="r1", stage="t")
out["append_again"] = ctx.store.append(df, "prompts_raw", run_id="r1", stage="t")
v = ctx.store.version("prompts_raw")
m = ctx.store.merge(df, "prompts_raw", run_id="r2", stage="t")
out["merge_again"] = [m.inserted, m.updated]
out["version_unchanged"] = ctx.store.version("prompts_raw") == v
out["count"] = ctx.store.read("prompts_raw").count()
r1 = run_stage(ctx, "ingest"); r2 = run_stage(Context.create(conf, spark=ctx.spark), "ingest")
out["ingest"] = [r1.rows_in, r1.rows_out, r2.stats["prompts_raw"]["inserted"]]
for i in range(3):  # more small files, then compaction and a vacuum of what no version needs
    ctx.store.append(df.limit(10 * (i + 1)), "prompts_raw", run_id="r3", stage="t", chunk=str(i))
mconf = conf.model_copy(update={"maintain": conf.maintain.model_copy(update={"tables": ["prompts_raw"], "retention_hours": 0})})
m = run_stage(Context.create(mconf, spark=ctx.spark), "maintain").stats["tables"]["prompts_raw"]
out["maintain"] = [m["before"]["rows"], m["after"]["rows"], m["before"]["files"] > m["after"]["files"], m["after"]["files"]]
print("RESULT " + json.dumps(out))
"""


def test_delta_spark_backend_matches_contract(tmp_path, shared_data):
    data = shared_data / "prompts" / "en_self_instruct_seed_tasks.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "lake"), ",".join(JARS), str(data)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stderr[-4000:]
    out = json.loads(line[7:])
    assert out["backend"] == "spark"
    assert (out["append"], out["append_again"]) == (200, 0)
    assert out["merge_again"] == [0, 0] and out["version_unchanged"]
    assert out["count"] == 200
    assert out["ingest"] == [175, 175, 0]
    assert out["maintain"] == [435, 435, True, 1]  # 200 + 175 + 10 + 20 + 30 rows, in one file after compaction
