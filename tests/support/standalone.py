"""A real Spark standalone cluster on 127.0.0.1 for tests: one master and N workers, each its own JVM.

The daemons come from the pyspark install (its bin/spark-class), so the cluster runs exactly the Spark the
driver has. Each worker runs in a process group of its own (start_new_session): its executor and the
executor's Python workers are its children there, so `kill_worker` takes a whole node down at once, as
losing a machine would. Each worker offers `gpus_per_worker` GPUs through tests/support/fake_gpus.sh with
addresses of its own (worker 0: 0,1; worker 1: 2,3): there is no GPU on the test machines, and Spark only
schedules the addresses, so the stage-level GPU profile and its bookkeeping run for real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
FAKE_GPUS = Path(__file__).with_name("fake_gpus.sh")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Daemon:
    name: str
    log: Path
    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon's process group: the JVM and everything it started."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@dataclass
class StandaloneCluster:
    root: Path
    workers: int = 2
    cores_per_worker: int = 2
    memory_per_worker: str = "3g"
    gpus_per_worker: int = 2
    master_port: int = field(default_factory=free_port)
    master_ui_port: int = field(default_factory=free_port)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _env(self, **extra: str) -> dict[str, str]:
        conf_dir = self.root / "conf"  # empty: no spark-env.sh or defaults from elsewhere apply
        conf_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
        env.update(
            SPARK_HOME=str(SPARK_HOME), SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1",
            SPARK_DAEMON_MEMORY="512m", SPARK_DAEMON_JAVA_OPTS="-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m", **extra,
        )  # fmt: skip
        return env

    def _start(self, name: str, args: list[str], env: dict[str, str], ready: str) -> Daemon:
        daemon = self.daemons.get(name) or Daemon(name, self.root / "logs" / f"{name}.log")
        daemon.log.parent.mkdir(parents=True, exist_ok=True)
        offset = daemon.log.stat().st_size if daemon.log.exists() else 0  # a restart appends to the log
        with open(daemon.log, "ab") as out:
            daemon.proc = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.daemons[name] = daemon
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready not in daemon.log.read_bytes()[offset:].decode(errors="replace"):
            if not daemon.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.logs()}")
            time.sleep(0.5)
        return daemon

    def start(self) -> StandaloneCluster:
        self._start(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.master_port),
             "--webui-port", str(self.master_ui_port)],
            self._env(),
            "I have been elected leader",
        )  # fmt: skip
        for i in range(self.workers):
            self.start_worker(i)
        return self

    def worker_gpus(self, i: int) -> list[str]:
        return [str(i * self.gpus_per_worker + g) for g in range(self.gpus_per_worker)]

    def start_worker(self, i: int) -> Daemon:
        opts = (
            f"-Dspark.worker.resource.gpu.amount={self.gpus_per_worker} "
            f"-Dspark.worker.resource.gpu.discoveryScript={FAKE_GPUS}"
        )
        env = self._env(SPARK_WORKER_OPTS=opts, INSTRUCTLAKE_FAKE_GPUS=",".join(self.worker_gpus(i)))
        work = self.root / f"worker-{i}"
        return self._start(
            f"worker-{i}",
            ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1", "--port", str(free_port()),
             "--webui-port", str(free_port()), "--cores", str(self.cores_per_worker),
             "--memory", self.memory_per_worker, "--work-dir", str(work)],
            env,
            "Successfully registered with master",
        )  # fmt: skip

    def kill_worker(self, i: int) -> None:
        self.daemons[f"worker-{i}"].kill()

    def restart_dead_workers(self) -> None:
        for i in range(self.workers):
            if not self.daemons[f"worker-{i}"].alive():
                self.start_worker(i)

    def state(self) -> dict:
        """The master's JSON view: workers (with their resources), active and completed applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.master_ui_port}/json/", timeout=10) as r:
            return json.load(r)

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until no application is active and every worker is alive with all its cores free again."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.state()
            alive = [w for w in s["workers"] if w["state"] == "ALIVE"]
            if not s["activeapps"] and len(alive) == self.workers and all(w["coresused"] == 0 for w in alive):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster still busy after {timeout_s:.0f}s: {json.dumps(s)[:2000]}")
            time.sleep(1.0)

    def executor_logs(self) -> list[Path]:
        return sorted(self.root.glob("worker-*/app-*/*/std*"))

    def logs(self, lines: int = 40) -> str:
        """The tail of every daemon's and executor's log, for assertion messages."""
        paths = [d.log for d in self.daemons.values()] + self.executor_logs()
        return "\n".join(f"==== {p.relative_to(self.root)}\n{tail(p, lines)}" for p in paths)

    def stop(self) -> None:
        for name in sorted(self.daemons, reverse=True):  # workers first, then the master
            self.daemons[name].kill()
