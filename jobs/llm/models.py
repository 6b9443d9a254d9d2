"""Model files (conf/models/*.yaml) and what a stage's block makes of them: the resolved model, the engine
spec, the generation config that identifies outputs, and the engine task (udfs.generation.LLMTask)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from instructlake.jobs.config import CONF_DIR, Backend, Config, LLMStageConf
from instructlake.udfs import generation as G
from instructlake.udfs import kinds as K
from instructlake.udfs.engine import SamplingConfig

log = logging.getLogger(__name__)


class SamplingFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(ge=1)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_tokens: int | None = Field(ge=1)
    seed: int


class ModelFile(BaseModel):
    """conf/models/*.yaml: one model's engine arguments and sampling defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str  # hub id or path; with `build`, a path relative to run.work_dir
    name: str | None = None  # recorded in rows (responses.model, ids); default: `model` as written
    build: Literal["tiny-chat"] | None = None  # build this local model there on first use (udfs.tiny_model)
    build_seed: int = 0  # its weights' seed: another seed, another model
    backend: Backend = "vllm"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingFile
    chat_template: str | None = None  # a template string or a path to a .jinja file


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str  # what the engine loads
    backend: str
    engine_args: dict[str, Any]
    sampling: SamplingConfig
    chat_template: str | None


def find_conf_file(path: str) -> Path:
    """A path as given (absolute, or from the working dir), else relative to the repo or the conf dir."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [p, CONF_DIR.parent / p, CONF_DIR / p]
    if not p.is_absolute() and len(p.parts) > 1 and p.parts[0] == "conf":  # conf/models/x.yaml, conf packaged
        candidates.append(CONF_DIR / Path(*p.parts[1:]))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"model config {path!r} not found (looked in the working dir and {CONF_DIR.parent})")


def _ensure_tiny_model(out: Path, seed: int) -> None:
    from instructlake.udfs.tiny_model import is_built

    if is_built(out, seed):
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs sharing a work dir build it once
        if is_built(out, seed):
            return
        # A subprocess, so the driver never imports torch/transformers for it.
        log.info("building the tiny local chat model in %s", out)
        proc = subprocess.run(
            [sys.executable, "-m", "instructlake.udfs.tiny_model", str(out), "--seed", str(seed)], capture_output=True, text=True, timeout=600
        )
        if proc.returncode:
            raise RuntimeError(f"building the tiny model failed:\n{proc.stderr[-3000:]}")


def _read_template(value: str | None) -> str | None:
    if value and "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text(encoding="utf-8")
    return value


def resolve_model(llm: LLMStageConf, conf: Config) -> ResolvedModel:
    """The stage's model: its model file, then the stage's overrides (model, backend, engine_args,
    sampling, chat_template); builds the tiny local model on first use."""
    file = find_conf_file(llm.model_conf)
    mf = ModelFile.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    model = llm.model or mf.model
    name = llm.model or mf.name or mf.model
    path = Path(model).expanduser()
    if mf.build and not llm.model:
        path = path if path.is_absolute() else Path(conf.run.work_dir) / path
        _ensure_tiny_model(path, mf.build_seed)
        resolved = str(path.resolve())
    else:
        resolved = str(path.resolve()) if path.exists() else model  # a local dir, else a hub id
    overrides = {k: v for k, v in llm.sampling.model_dump().items() if v is not None}
    sampling = SamplingConfig(**{**mf.sampling.model_dump(), **overrides})
    return ResolvedModel(
        name=name,
        path=resolved,
        backend=llm.backend or mf.backend,
        engine_args={**mf.engine_args, **llm.engine_args},
        sampling=sampling,
        chat_template=_read_template(llm.chat_template or mf.chat_template),
    )


def engine_spec(model: ResolvedModel, llm: LLMStageConf, conf: Config) -> dict[str, Any]:
    env = {}
    if token := conf.secrets.get("hf_token"):
        env["HF_TOKEN"] = token  # gated models on clusters that reach the hub
    return dict(
        backend=model.backend,
        model=model.path,
        device=llm.device,
        engine_args=dict(model.engine_args),
        chat_template=model.chat_template,
        cpu_threads=llm.cpu_threads,
        env=env,
        scratch_dir=str(Path(conf.run.work_dir).resolve() / "engine"),
    )


def digest(text: str | None) -> str | None:
    """A short stable id of a template (chat or prompt) for generation configs."""
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def base_gen_config(model: ResolvedModel, **extra: Any) -> dict[str, Any]:
    """What identifies an output besides the prompt (and the row's task): model, sampling, template."""
    s = model.sampling
    template = digest(model.chat_template)
    return dict(
        model=model.name, n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
        chat_template=template, **extra,
    )  # fmt: skip


def llm_task(ctx: Any, llm: LLMStageConf, model: ResolvedModel, kind: str, **fields: Any) -> G.LLMTask:
    """The engine task of an LLM stage: what every stage takes from its config and model, plus the
    stage's own `fields` (gen_config, system_prompt, template, target_lang). A kind with one output per
    input (all but respond) takes one sample."""
    if not K.kind(kind).per_sample and model.sampling.n != 1:
        stage = next((name for name, block in ctx.conf.llm_stages().items() if block is llm), kind)
        raise ValueError(f"{stage}.sampling.n must be 1 (one {kind} output per input), got {model.sampling.n}")
    return G.LLMTask(
        kind=kind,
        model=model.name,
        engine=engine_spec(model, llm, ctx.conf),
        sampling=model.sampling,
        run_id=ctx.run_id,
        chat_template=model.chat_template,
        batch_size=llm.batch_size,
        chunk_rows=llm.chunk_rows,
        inflight_chunks=llm.inflight_chunks,
        progress_interval_s=llm.progress_interval_s,
        **fields,
    )
