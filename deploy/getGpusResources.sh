#!/usr/bin/env bash
# Spark GPU discovery script (spark.{driver,executor,worker}.resource.gpu.discoveryScript): prints the GPUs
# this container can see in Spark's ResourceInformation JSON, the same output as Spark's own
# examples/src/main/scripts/getGpusResources.sh:
#   {"name": "gpu", "addresses": ["0", "1"]}
# Fails (non-zero, nothing printed) when nvidia-smi fails, so an executor without a working GPU does not
# start instead of starting with none.
set -euo pipefail

indices="$(nvidia-smi --query-gpu=index --format=csv,noheader)"
addresses=""
while IFS= read -r index; do
  index="${index//[[:space:]]/}"
  if [[ -z "$index" ]]; then
    continue
  fi
  if [[ ! "$index" =~ ^[0-9]+$ ]]; then
    echo "getGpusResources.sh: unexpected GPU index from nvidia-smi: $index" >&2
    exit 1
  fi
  addresses+="${addresses:+, }\"$index\""
done <<< "$indices"

printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
