"""What the deployment tests share: the deploy dir, the model files, pins, and one dry run of spark-submit.sh (a fixture)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lake import REPO

DEPLOY = REPO / "deploy"


MODELS = REPO / "conf" / "models"


def setup_pin(name: str) -> str:
    return re.search(rf'"{name}==([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def hadoop_version() -> str:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (jar,) = jars.glob("hadoop-client-api-*.jar")
    return re.fullmatch(r"hadoop-client-api-(.+)\.jar", jar.name).group(1)


MODEL_FILES = sorted(MODELS.glob("*.yaml"))


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> dict:
    """deploy/spark-submit.sh run for real up to spark-submit, which is a fake that records its arguments."""
    tmp = tmp_path_factory.mktemp("submit")
    record = tmp / "args.json"
    fake = tmp / "spark-submit"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {**os.environ, "SPARK_SUBMIT": str(fake), "DIST_DIR": str(tmp / "dist")}
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    for name in ("DELTA_VERSION", "SPARK_MINOR", "EXTRA_PACKAGES", "INSTRUCTLAKE_CONF", "DRY_RUN"):
        env.pop(name, None)
    subprocess.run(
        [DEPLOY / "spark-submit.sh", "pipeline", "--set", "run.log_level=DEBUG"],
        env=env, cwd=tmp, check=True, capture_output=True, timeout=300,
    )
    return {"args": json.loads(record.read_text()), "dist": tmp / "dist"}


