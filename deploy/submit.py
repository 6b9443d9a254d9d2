"""spark-submit's entry script: hands its arguments to the instructlake CLI.

    spark-submit [options] deploy/submit.py <stage>|pipeline --conf conf/cluster.yaml [--set key=value ...]

spark-submit needs a Python file as the application; this one runs `instructlake.jobs.cli.main`, which
builds the session in the mode the config names (cluster: spark-submit already chose master and
resources) and exits with the CLI's status (2 for a bad config, before any Spark work).

The instructlake wheel given to `--py-files` (as a .zip: Spark adds only .zip/.egg/.jar py-files to the
executors' Python path) is for the executors, but spark-submit also puts it on the driver's PYTHONPATH,
ahead of the installed package. The driver reads conf/*.yaml beside its package
(jobs/config.py), which a zip cannot serve, so the driver imports the installed package (the checkout,
or the image's install) and leaves the wheel to the executors. Both subpackages are imported before the
SparkContext starts, since starting it puts the wheel back on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _is_instructlake_wheel(entry: str) -> bool:
    name = Path(entry).name
    return name.startswith("instructlake-") and name.endswith((".whl", ".zip"))


def main() -> int:
    sys.path[:] = [p for p in sys.path if not _is_instructlake_wheel(p)]
    import instructlake.udfs  # noqa: F401  (bound to the installed package now, not to the wheel later)
    from instructlake.jobs.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
