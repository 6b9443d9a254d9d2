#!/usr/bin/env bash
# A stand-in for deploy/getGpusResources.sh on machines without a GPU (the test machines): the standalone
# workers of tests/support/standalone.py run it as their spark.worker.resource.gpu.discoveryScript and "have" the
# addresses in INSTRUCTLAKE_FAKE_GPUS (comma-separated), different per worker, as Spark's ResourceInformation
# JSON. Nothing here touches a device: Spark only schedules the addresses.
set -euo pipefail
: "${INSTRUCTLAKE_FAKE_GPUS:?set INSTRUCTLAKE_FAKE_GPUS, e.g. 0,1}"
addresses=""
IFS=, read -ra fake <<< "$INSTRUCTLAKE_FAKE_GPUS"
for a in "${fake[@]}"; do
  addresses+="${addresses:+, }\"$a\""
done
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
