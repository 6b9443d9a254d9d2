"""SparkSession for the three ways instructlake runs, and the choice of Delta backend.

local: we build a local[*] session (the embedded default). cluster: spark-submit already decided master
and resources; we only add our settings. databricks: the active session is used as it is.
The Delta backend is delta-spark when its classes load in the JVM, else embedded delta-rs; the probe is a
single py4j class lookup, so it answers in milliseconds and cannot hang on a Maven download.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from instructlake.jobs.config import Config

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# Where a previous `configure_spark_with_delta_pip` (on a machine that reached Maven) leaves the jars.
_IVY_JAR_GLOBS = ("~/.ivy2*/jars/io.delta_delta-spark_*.jar", "~/.ivy2*/jars/io.delta_delta-storage-*.jar")


def worker_env(conf: Config) -> dict[str, str]:
    """Environment every executor Python worker needs: this interpreter (a venv's pandas, pyarrow,
    instructlake), a scratch dir for engine caches, plus whatever the config adds."""
    scratch = str(Path(conf.run.work_dir).resolve())
    env = {"PYSPARK_PYTHON": sys.executable, "INSTRUCTLAKE_WORK_DIR": scratch}
    env.update(conf.spark.executor_env)
    return env


def _local_delta_jars(conf: Config) -> list[str]:
    if conf.delta.backend == "rs":
        return []
    jars = [str(Path(j).expanduser().resolve()) for j in conf.delta.jars]
    if not jars:
        jars = sorted(j for pattern in _IVY_JAR_GLOBS for j in glob.glob(os.path.expanduser(pattern)))
    missing = [j for j in jars if not Path(j).is_file()]
    if missing:
        raise FileNotFoundError(f"delta.jars: not found: {missing}")
    return jars


def build_session(conf: Config) -> SparkSession:
    """The session for conf.spark.mode, with Arrow on and the worker Python pinned."""
    if conf.spark.mode == "databricks":
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        for key, value in conf.spark.conf.items():
            spark.conf.set(key, value)
        return spark

    env = worker_env(conf)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = env["PYSPARK_PYTHON"]
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

    builder = SparkSession.builder.appName(conf.spark.app_name)
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(conf.spark.shuffle_partitions),
        "spark.python.worker.reuse": "true",  # keeps one engine / fastText model per Python worker
        "spark.executorEnv.PYSPARK_PYTHON": env["PYSPARK_PYTHON"],
    }
    settings.update({f"spark.executorEnv.{k}": v for k, v in env.items()})
    if conf.spark.mode == "local":
        builder = builder.master(conf.spark.master)
        settings.update(
            {
                "spark.driver.memory": conf.spark.driver_memory,
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.warehouse.dir": str(Path(conf.run.work_dir, "warehouse").resolve()),
                "spark.driver.extraJavaOptions": f"-Dderby.system.home={Path(conf.run.work_dir).resolve()}"
                + (" -XX:TieredStopAtLevel=1" if conf.spark.fast_jvm_start else ""),
            }
        )
        jars = _local_delta_jars(conf)
        if jars:
            settings["spark.jars"] = ",".join(jars)
            settings["spark.sql.extensions"] = DELTA_EXTENSION
            settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    settings.update(conf.spark.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN" if conf.run.log_level != "DEBUG" else "INFO")
    return spark


def delta_spark_usable(spark: SparkSession) -> bool:
    """True when Delta's classes are in this JVM and its SQL extension is configured on the session."""
    if "delta" not in spark.conf.get("spark.sql.extensions", "").lower():
        return False
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect (Databricks serverless): Delta is built in there
        return True
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(DELTA_EXTENSION, False, loader)
        return True
    except Exception:  # py4j wraps ClassNotFoundException
        return False


def choose_backend(spark: SparkSession, conf: Config) -> str:
    """'spark' (delta-spark) or 'rs' (embedded delta-rs) per conf.delta.backend."""
    if conf.delta.backend == "rs":
        return "rs"
    usable = conf.spark.mode == "databricks" or delta_spark_usable(spark)
    if conf.delta.backend == "spark" and not usable:
        raise RuntimeError(
            "delta.backend=spark but the delta-spark jars are not on the classpath: pass them with "
            "--packages/--jars (cluster) or delta.jars (local), or use delta.backend=auto"
        )
    backend = "spark" if usable else "rs"
    log.info("delta backend: %s", backend)
    return backend
