"""The model files' engine_args are vLLM's own EngineArgs fields (this imports vllm, hence the engine tier)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.support.deploy import (
    MODEL_FILES,
)


@pytest.fixture(scope="module")
def vllm_engine_args() -> dict:
    """EngineArgs field names and quantization methods of the installed vLLM, read in a subprocess
    (importing vllm takes ~10 s and configures its host process; no engine is built)."""
    probe = (
        "import dataclasses, json\n"
        "from vllm.engine.arg_utils import EngineArgs\n"
        "from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS\n"
        "print(json.dumps({'fields': [f.name for f in dataclasses.fields(EngineArgs)],"
        " 'quantization': list(QUANTIZATION_METHODS)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if "No module named 'vllm'" in proc.stderr:
            pytest.skip("vllm is not installed (pip install .[cpu] or .[vllm])")
        raise AssertionError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_engine_args_are_vllm_engine_args(path, vllm_engine_args):
    spec = yaml.safe_load(path.read_text())
    if spec["backend"] == "scripted":  # its engine_args are its rules, not vLLM's
        assert spec["engine_args"]["rules"]
        return
    args = spec["engine_args"]
    unknown = set(args) - set(vllm_engine_args["fields"])
    assert not unknown, f"not vllm EngineArgs fields: {sorted(unknown)}"
    if args.get("quantization") is not None:
        assert args["quantization"] in vllm_engine_args["quantization"]

