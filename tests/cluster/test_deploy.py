"""deploy/spark-submit.sh for real: it builds the wheel and the executors' zip (a fake spark-submit records
the command), and the zip imports on a bare interpreter. The rest of the deployment surfaces are
tests/unit/test_deploy.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy import (
    hadoop_version,
    setup_pin,
)


def _delta_package() -> str:
    """The Maven coordinate delta-spark's own pip helper would ask for with the installed pyspark."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = configure_spark_with_delta_pip(SparkSession.Builder())  # a fresh builder: no session, no Ivy
    return builder._options["spark.jars.packages"]


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.cluster  # deploy/spark-submit.sh builds the wheel and its zip
def test_spark_submit_command(submitted):
    args = submitted["args"]
    options = args[: args.index("deploy/submit.py")]
    confs = dict(a.split("=", 1) for a, flag in zip(options[1:], options) if flag == "--conf")
    assert _option(args, "--deploy-mode") == "client"
    delta, s3a = _option(args, "--packages").split(",")
    assert delta == _delta_package() and delta.endswith(":" + setup_pin("delta-spark"))
    assert s3a == f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    assert confs["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert confs["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert confs["spark.executor.resource.gpu.amount"] == "1" and "spark.task.resource.gpu.amount" not in confs
    assert confs["spark.executor.resource.gpu.discoveryScript"] == "./getGpusResources.sh"
    assert confs["spark.python.worker.reuse"] == "true"
    assert _option(args, "--files") == "deploy/getGpusResources.sh"
    assert args[args.index("deploy/submit.py") :] == [
        "deploy/submit.py", "pipeline", "--conf", "conf/cluster.yaml", "--set", "run.log_level=DEBUG",
    ]


@pytest.mark.cluster
def test_spark_submit_ships_an_importable_zip_of_the_wheel(submitted):
    pyfile = Path(_option(submitted["args"], "--py-files"))
    assert pyfile.suffix == ".zip" and pyfile.is_file()  # Spark adds only .zip/.egg/.jar to executors' path
    # -S: no site-packages, so the import can only come from the zip, as on an executor without instructlake.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import instructlake.jobs, instructlake.udfs.text as t; print(t.__file__)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe, pyfile], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(str(pyfile))

