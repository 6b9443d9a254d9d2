#!/usr/bin/env bash
# Submit an instructlake stage, or the whole pipeline, to a GPU Spark cluster. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/spark-submit.sh <stage>|pipeline [--set key=value ...] [other instructlake options]

Builds the instructlake wheel from this checkout, then runs
  spark-submit [options] deploy/submit.py <stage>|pipeline --conf $INSTRUCTLAKE_CONF [options ...]
in client mode: the driver runs here, from this checkout and $PYSPARK_DRIVER_PYTHON (which must have
instructlake installed); executors get the code from the wheel (--py-files), Delta from --packages, the
GPU discovery script from --files, and run $INSTRUCTLAKE_CLUSTER_PYTHON, an environment with
instructlake's dependencies and vllm on every node. Kubernetes: deploy/k8s/sparkapplication.yaml.

  deploy/spark-submit.sh pipeline
  SPARK_MASTER=spark://head:7077 deploy/spark-submit.sh generate --set run.log_level=DEBUG

Environment (default):
  SPARK_SUBMIT                 spark-submit to run (spark-submit on PATH)
  SPARK_MASTER                 --master (yarn)
  INSTRUCTLAKE_CONF            config on top of conf/default.yaml (conf/cluster.yaml)
  INSTRUCTLAKE_CLUSTER_PYTHON  executors' python (/opt/instructlake/venv/bin/python)
  PYSPARK_DRIVER_PYTHON        driver's python (python3 on PATH)
  DELTA_VERSION                delta-spark version (4.4.0, setup.py's pin)
  SPARK_MINOR                  the cluster's Spark major.minor, part of Delta's artifact name (4.2)
  EXTRA_PACKAGES               more Maven coordinates, comma-separated; empty when the cluster has its
                               own S3 connector (org.apache.hadoop:hadoop-aws:3.5.0, for s3a://)
  NUM_EXECUTORS                executors (2)
  EXECUTOR_GPUS                GPUs per executor (1); also exported as INSTRUCTLAKE_EXECUTOR_GPUS, which
                               conf/cluster.yaml reads, since the session's settings win over --conf
  EXECUTOR_CORES               (8)
  EXECUTOR_MEMORY              JVM heap (16g)
  EXECUTOR_MEMORY_OVERHEAD     off-heap, where the Python workers and the vLLM engine live (48g)
  DRIVER_MEMORY                (8g)
  DIST_DIR                     where the wheel and the executors' zip are built (dist)
  IVY_DIR                      Ivy's cache and resolution dir for --packages (spark.jars.ivy): jars are
                               downloaded once and reused (.scratch/ivy/submit in this checkout)
  DRY_RUN=1                    print the commands instead of running them
conf/cluster.yaml reads INSTRUCTLAKE_LAKE_ROOT, INSTRUCTLAKE_INPUT and INSTRUCTLAKE_SCRATCH.
Other Spark settings (event log, history server, ...) come from $SPARK_CONF_DIR/spark-defaults.conf.
EOF
}

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit 0
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

SPARK_SUBMIT="${SPARK_SUBMIT:-spark-submit}"
SPARK_MASTER="${SPARK_MASTER:-yarn}"
INSTRUCTLAKE_CONF="${INSTRUCTLAKE_CONF:-conf/cluster.yaml}"
INSTRUCTLAKE_CLUSTER_PYTHON="${INSTRUCTLAKE_CLUSTER_PYTHON:-/opt/instructlake/venv/bin/python}"
PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$(command -v python3 || true)}"
DELTA_VERSION="${DELTA_VERSION:-4.4.0}"
SPARK_MINOR="${SPARK_MINOR:-4.2}"
EXTRA_PACKAGES="${EXTRA_PACKAGES-org.apache.hadoop:hadoop-aws:3.5.0}"
NUM_EXECUTORS="${NUM_EXECUTORS:-2}"
EXECUTOR_GPUS="${EXECUTOR_GPUS:-1}"
EXECUTOR_CORES="${EXECUTOR_CORES:-8}"
EXECUTOR_MEMORY="${EXECUTOR_MEMORY:-16g}"
EXECUTOR_MEMORY_OVERHEAD="${EXECUTOR_MEMORY_OVERHEAD:-48g}"
DRIVER_MEMORY="${DRIVER_MEMORY:-8g}"
DIST_DIR="${DIST_DIR:-dist}"
IVY_DIR="${IVY_DIR:-$repo/.scratch/ivy/submit}"
DRY_RUN="${DRY_RUN:-0}"
if [[ -z "$PYSPARK_DRIVER_PYTHON" ]]; then
  echo "spark-submit.sh: no python3 on PATH; set PYSPARK_DRIVER_PYTHON" >&2
  exit 2
fi
if [[ "$INSTRUCTLAKE_CLUSTER_PYTHON" != /* ]]; then
  # Executors start it from their own working directories, where a relative path finds nothing.
  echo "spark-submit.sh: INSTRUCTLAKE_CLUSTER_PYTHON must be an absolute path on every node (got $INSTRUCTLAKE_CLUSTER_PYTHON)" >&2
  exit 2
fi

run() {
  if [[ "$DRY_RUN" == "1" ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The wheel's files go to the executors as a .zip: Spark puts only .zip/.egg/.jar py-files on their
# Python path, and zipimport finds the `instructlake` namespace package only through directory entries,
# which wheels leave out.
repack='
import sys, zipfile
from pathlib import PurePosixPath
src, dst = sys.argv[1:]
with zipfile.ZipFile(src) as wheel, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
    names = [n for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")]
    for d in sorted({f"{p}/" for n in names for p in PurePosixPath(n).parents if p.name}):
        out.writestr(d, "")
    for n in names:
        out.writestr(n, wheel.read(n))
'
version="$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' setup.py)"
wheel="$DIST_DIR/instructlake-${version}-py3-none-any.whl"
pyfile="$DIST_DIR/instructlake-${version}-py3-none-any.zip"
run rm -f "$wheel" "$pyfile"
run "$PYSPARK_DRIVER_PYTHON" -m pip wheel --no-deps --quiet -w "$DIST_DIR" .
run "$PYSPARK_DRIVER_PYTHON" -c "$repack" "$wheel" "$pyfile"

packages="io.delta:delta-spark_${SPARK_MINOR}_2.13:${DELTA_VERSION}${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"
command="$1"
shift

# conf/cluster.yaml sets the same GPU settings when the session starts (and wins there); they are given
# here too so they hold from the first moment of the application. No default task GPU amount: the engine
# tasks of translate/generate ask for their GPUs through a stage-level ResourceProfile (generate.gpu),
# which Spark supports with dynamic allocation off on standalone, YARN and Kubernetes.
export PYSPARK_PYTHON="$INSTRUCTLAKE_CLUSTER_PYTHON" PYSPARK_DRIVER_PYTHON INSTRUCTLAKE_CLUSTER_PYTHON
export INSTRUCTLAKE_EXECUTOR_GPUS="$EXECUTOR_GPUS"
run "$SPARK_SUBMIT" \
  --master "$SPARK_MASTER" \
  --deploy-mode client \
  --name "instructlake-$command" \
  --packages "$packages" \
  --conf "spark.jars.ivy=$IVY_DIR" \
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
  --conf "spark.executor.resource.gpu.amount=$EXECUTOR_GPUS" \
  --conf spark.executor.resource.gpu.discoveryScript=./getGpusResources.sh \
  --conf spark.python.worker.reuse=true \
  --conf "spark.executorEnv.PYSPARK_PYTHON=$INSTRUCTLAKE_CLUSTER_PYTHON" \
  --conf "spark.executor.instances=$NUM_EXECUTORS" \
  --conf "spark.executor.cores=$EXECUTOR_CORES" \
  --conf "spark.executor.memory=$EXECUTOR_MEMORY" \
  --conf "spark.executor.memoryOverhead=$EXECUTOR_MEMORY_OVERHEAD" \
  --driver-memory "$DRIVER_MEMORY" \
  --files deploy/getGpusResources.sh \
  --py-files "$pyfile" \
  deploy/submit.py "$command" --conf "$INSTRUCTLAKE_CONF" "$@"
