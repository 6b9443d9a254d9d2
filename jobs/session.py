"""SparkSession for the three ways instructlake runs, and the choice of Delta backend.

local: we build a local[*] session (the embedded default). cluster: spark-submit already decided master
and resources; we only add our settings. databricks: the active session is used as it is.
The Delta backend is delta-spark when its classes load in the JVM, else embedded delta-rs; the probe is a
single py4j class lookup, so it answers in milliseconds. A local session gets delta-spark's jars from
delta.jars or, with delta.backend=spark, from Maven Central (resolved once into an Ivy cache, with a timeout).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from instructlake.jobs.config import Config

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

# Resolution runs in a child JVM (pyspark's own gateway launcher, so the same spark-submit and Ivy as the
# session) that exits right after: a session cannot be given a timeout, a child process can.
_RESOLVE = """
import sys
from pyspark import SparkConf
from pyspark.java_gateway import launch_gateway
launch_gateway(SparkConf().set("spark.jars.packages", sys.argv[1]).set("spark.jars.ivy", sys.argv[2])).shutdown()
"""


def worker_env(conf: Config) -> dict[str, str]:
    """Environment every executor Python worker needs: this interpreter (a venv's pandas, pyarrow,
    instructlake), a scratch dir for engine caches, plus whatever the config adds."""
    scratch = str(Path(conf.run.work_dir).resolve())
    env = {"PYSPARK_PYTHON": sys.executable, "INSTRUCTLAKE_WORK_DIR": scratch}
    env.update(conf.spark.executor_env)
    return env


def _resolution_error(log_text: str) -> str:
    """Ivy's verdict (the unresolved dependency, a refused download) out of spark-submit's output."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    verdict = [line for line in lines if "unresolved dependency" in line or "Server access error" in line or "UnknownHost" in line]
    return (verdict or lines or ["no output"])[-1]


def resolve_packages(packages: list[str], ivy_dir: str | Path, timeout_s: float) -> list[str]:
    """The jars of these Maven coordinates (with their dependencies), resolved once into an Ivy cache of
    their own under ivy_dir and reused from there with no network. Fails with a clear error, never hangs."""
    digest = hashlib.sha1(",".join(sorted(packages)).encode()).hexdigest()[:12]
    home = Path(ivy_dir).expanduser().resolve() / digest
    done = home / "resolved.txt"  # written last: a killed resolution leaves none and is redone
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent first runs (tests, a cluster's driver) resolve once
        if not done.is_file():
            log.info("resolving %s from Maven into %s", ",".join(packages), home)
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", _RESOLVE, ",".join(packages), str(home)],
                    capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
                )  # fmt: skip
                failure = None if proc.returncode == 0 else _resolution_error(proc.stderr or proc.stdout)
            except subprocess.TimeoutExpired:
                failure = f"no answer within delta.resolve_timeout_s={timeout_s:g}s"
            jars = sorted(str(j) for j in (home / "jars").glob("*.jar"))
            if failure or not jars:
                raise RuntimeError(
                    f"could not resolve {','.join(packages)} from Maven Central into {home}: {failure or 'no jars'}\n"
                    "Give the jars by path (delta.jars), or use delta.backend=rs (embedded delta-rs)."
                )
            done.write_text("\n".join(jars) + "\n")
    return done.read_text().split()


def local_delta_jars(conf: Config) -> list[str]:
    """Jars for a local session: delta.jars as given, else (backend spark) delta.packages from Maven.
    backend auto without delta.jars stays on embedded delta-rs: no download unless asked for."""
    if conf.delta.backend == "rs":
        return []
    jars = [str(Path(j).expanduser().resolve()) for j in conf.delta.jars]
    missing = [j for j in jars if not Path(j).is_file()]
    if missing:
        raise FileNotFoundError(f"delta.jars: not found: {missing}")
    if not jars and conf.delta.backend == "spark":
        ivy = conf.delta.ivy_dir or str(Path(conf.run.work_dir) / "ivy")
        jars = resolve_packages(conf.delta.packages, ivy, conf.delta.resolve_timeout_s)
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
                # C1 alone fills the default code cache once Delta's classes load, and then compiles nothing.
                + (" -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m" if conf.spark.fast_jvm_start else ""),
            }
        )
        jars = local_delta_jars(conf)
        if jars:
            settings["spark.jars"] = ",".join(jars)
            settings["spark.sql.extensions"] = DELTA_EXTENSION
            settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
            # Delta replays its log in 50 partitions and VACUUM lists files in up to 10,000 tasks by
            # default: on a few local cores that is ~10 s per new snapshot and ~30 s per VACUUM.
            settings["spark.databricks.delta.snapshotPartitions"] = str(conf.spark.shuffle_partitions)
            settings["spark.sql.sources.parallelPartitionDiscovery.parallelism"] = str(conf.spark.shuffle_partitions)
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
