"""Typed configuration: conf/default.yaml, then override files, then `--set key=value`.

Every knob has its default in conf/default.yaml (the models below declare types, not defaults, so the
YAML is the one place a default lives). Loading validates the merged tree and reports a bad or unknown
key by its dotted path and the file (or `--set`) that supplied it.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from instructlake.udfs.engine import check_backend
from instructlake.udfs.records import BATCH_BYTES, MAX_FILE_BYTES

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
if not (CONF_DIR / "default.yaml").exists():  # installed non-editable: conf ships beside the package
    CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_FILE = CONF_DIR / "default.yaml"

# A key is secret when one of its words is a credential word. Words: the key split at `.`, `_`, `-` and
# every other non-alphanumeric, and at camelCase humps (apiKey, sasToken), case-folded. Credential words:
# token, secret, password, passwd, passphrase, key, credential(s), signature, alone or closing a compound
# (apikey, accountkey, sastoken), and sas, auth, oauth. Whole words only, so a word that merely contains one
# names no credential: max_tokens and near_max_tokens (counts), tokenizer, keys, passage_template,
# require_checks_passed keep their values. The rule errs on the safe side: a structural key built on the
# word `key` (sort_key, key_columns; none in conf/default.yaml) would be hidden from the snapshot, which
# costs a line of a run record; a credential under a key the rule missed would be stored in the lake.
_SECRET_WORD = re.compile(r"[a-z]*(?:token|secret|password|passwd|passphrase|key|credentials?|signature)|sas|o?auth")
_KEY_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
# Credentials in a URL's user part (s3a://KEY:SECRET@bucket, https://user:pass@host). Only a user part
# with a password: abfss://container@account... and wasbs:// name the container there, no secret.
_URL_CREDENTIALS = re.compile(r"""\b([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:"']*:[^@\s"']*?@""")
REDACTED = "***REDACTED***"
SAFE_RETENTION_HOURS = 168  # Delta's default: below it a VACUUM may delete files a running writer still commits
# Run ids name files (report-<id>.html, staged chunk files), Delta transaction app ids and URLs: a letter or
# digit, then letters, digits, `.`, `_`, `-` (no `/`, no `..`, no whitespace), 128 characters at most.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration problem, always naming the key and where it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LeaseConf(_Section):
    wait_s: float = Field(ge=0)
    ttl_s: float = Field(gt=0)
    heartbeat_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> LeaseConf:
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be at most ttl_s / 2 ({self.ttl_s / 2}): a lease would lapse between renewals")
        return self


def check_run_id(run_id: str) -> str:
    """`run_id`, if it is safe wherever a run id goes (RUN_ID, no `..`); else ValueError."""
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(
            f"{run_id!r} is no run id: run ids name files, Delta app ids and URLs, so 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, no '..'"
        )
    return run_id


def _run_id(v: Any) -> Any:
    if v is None or v == "":  # null or empty (a notebook's blank widget): a fresh id per invocation
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    return check_run_id(v) if isinstance(v, str) else v


class RunConf(_Section):
    lake_root: str
    run_id: Annotated[str | None, BeforeValidator(_run_id)]
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    work_dir: str
    lease: LeaseConf


class SparkConf(_Section):
    mode: Literal["local", "cluster", "databricks"]
    master: str
    app_name: str
    shuffle_partitions: int = Field(ge=1)
    driver_memory: str
    fast_jvm_start: bool
    conf: dict[str, str]
    executor_env: dict[str, str]

    @field_validator("conf", "executor_env", mode="before")
    @classmethod
    def _as_strings(cls, v: Any) -> Any:
        """Spark settings and env values are strings; YAML gives `2` and `false`, Spark wants "2" and "false"."""
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x)) if isinstance(x, (bool, int, float)) else x for k, x in v.items()}
        return v


class DeltaConf(_Section):
    backend: Literal["auto", "spark", "rs"]
    jars: list[str]
    packages: list[str]
    ivy_dir: str | None
    resolve_timeout_s: float = Field(gt=0)
    commit_retries: int = Field(ge=0)
    storage_options: dict[str, str]


class TablesConf(_Section):
    catalog: str | None
    schema_: str | None = Field(alias="schema")
    names: dict[str, str]


class InputConf(_Section):
    path: str
    format: Literal["auto", "jsonl", "json", "parquet"] = "auto"
    layout: Literal["auto", "lmsys", "wildchat", "plain"] = "auto"
    source: str | None = None


class IngestConf(_Section):
    inputs: list[InputConf] = Field(min_length=1)
    turns: Literal["first", "all"]
    partitions: int = Field(ge=0)
    max_record_bytes: int = Field(ge=1, le=BATCH_BYTES)
    max_file_bytes: int = Field(ge=1, le=MAX_FILE_BYTES)


# YAML 1.1 reads a bare `off` as false: take it as the word it was meant to be.
Action = Annotated[Literal["drop", "flag", "off"], BeforeValidator(lambda v: "off" if v is False else v)]
# An engine backend: a registered name (udfs.engine.BACKENDS) or an import path `package.module:factory`.
Backend = Annotated[str, AfterValidator(check_backend)]
PiiKind = Literal["email", "phone", "ipv4", "ipv6", "credit_card", "secret"]


class LengthFilterConf(_Section):
    enabled: bool
    min_chars: int = Field(ge=0)
    max_chars: int | None = Field(ge=1)
    tokenizer: str | None
    max_tokens: int = Field(ge=1)


class PiiFilterConf(_Section):
    redacted: Action
    detected: Action
    kinds: list[PiiKind]


class TemplateFilterConf(_Section):
    action: Action
    max_count: int = Field(ge=1)
    mask_names: bool


class FiltersConf(_Section):
    ui_residue: Annotated[Literal["strip", "off"], BeforeValidator(lambda v: "off" if v is False else v)]
    empty: bool
    length: LengthFilterConf
    moderation: Action
    pii: PiiFilterConf
    template: TemplateFilterConf


class DedupConf(_Section):
    max_source_ids: int = Field(ge=1)


class NearDedupConf(_Section):
    enabled: bool
    threshold: float = Field(gt=0, le=1)
    num_perm: int = Field(ge=2, le=1024)
    bands: int | None = Field(ge=1)
    rows: int | None = Field(ge=1)
    ngram: int = Field(ge=1)
    char_ngram: int = Field(ge=1)
    char_bands: int = Field(ge=1)
    char_rows: int = Field(ge=1)
    char_min_bands: int = Field(ge=1)
    short_chars: int = Field(ge=0)
    short_edit_ratio: float = Field(gt=0, le=1)
    shingle_mode: Literal["auto", "word", "char"]
    seed: int
    verify: Literal["shingles", "signature"]
    max_bucket_pairs: int = Field(ge=1)
    max_iterations: int = Field(ge=1)
    checkpoint_dir: str | None

    @model_validator(mode="after")
    def _bands_fit(self) -> NearDedupConf:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (derived from threshold and num_perm)")
        if self.bands and self.rows and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.char_bands * self.char_rows > self.num_perm:
            raise ValueError(f"char_bands * char_rows = {self.char_bands * self.char_rows} exceeds num_perm = {self.num_perm}")
        if self.char_min_bands > self.char_bands:
            raise ValueError(f"char_min_bands = {self.char_min_bands} exceeds char_bands = {self.char_bands}")
        return self


class LangidConf(_Section):
    model: str | None
    threshold: float = Field(ge=0, le=1)
    max_chars: int = Field(ge=1)
    lower_caps: bool
    langs: list[str]
    und: Literal["keep", "reject"]
    unspaced_below: float = Field(ge=0, le=1)
    candidates: list[str]
    candidates_k: int = Field(ge=1)


class BenchmarkConf(_Section):
    name: str = Field(pattern=r"^[^:\s]+$")  # the middle of contaminated:<name>:<item id>
    path: str
    format: Literal["jsonl", "parquet"] = "jsonl"
    id_field: str = "id"
    text_field: str = "text"


class DecontaminateConf(_Section):
    action: Literal["drop", "flag", "off"]
    benchmarks: list[BenchmarkConf]
    ngram: int = Field(ge=1)
    char_ngram: int = Field(ge=1)
    min_ngrams: int = Field(ge=1)
    near_max_tokens: int = Field(ge=0)
    near_containment: float = Field(gt=0, le=1)
    char_near_containment: float = Field(gt=0, le=1)
    max_postings: int = Field(ge=1)
    translations: bool


class CurateConf(_Section):
    partitions: int = Field(ge=0)
    filters: FiltersConf
    dedup: DedupConf
    decontaminate: DecontaminateConf
    near_dedup: NearDedupConf
    langid: LangidConf


class QualityConf(_Section):
    repetition_threshold: float = Field(gt=0, le=1)
    repetition_run_chars: int = Field(ge=10)
    lang_min_words: int = Field(ge=0)
    lang_threshold: float = Field(ge=0, le=1)
    langid_model: str | None
    gate: list[Literal["empty", "truncated", "repetition", "wrong_language", "refusal", "self_identification", "pii_leak"]]
    fail_on_expectation: bool
    expectations: dict[str, list[dict[str, Any]]]

    @field_validator("expectations")
    @classmethod
    def _known_expectations(cls, v: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        for table, specs in v.items():
            for i, spec in enumerate(specs):
                if set(spec) - {"type", "kwargs"} or not isinstance(spec.get("type"), str):
                    raise ValueError(f"{table}[{i}]: each expectation is {{type: expect_..., kwargs: {{...}}}}")
                if not spec["type"].startswith("expect_"):
                    raise ValueError(f"{table}[{i}]: {spec['type']!r} is not a Great Expectations expectation name")
        return v


class CardConf(_Section):
    enabled: bool
    pretty_name: str | None
    licenses: dict[str, str]


class ExportConf(_Section):
    path: str
    format: Literal["jsonl", "parquet"]
    select: Literal["all", "first_ok", "best"]
    min_score: float | None = Field(ge=0, le=10)
    judge_model: str | None
    drop_truncated: bool
    tasks: list[str]
    include_system_prompt: bool
    files_per_lang: int = Field(ge=1)
    require_checks_passed: bool
    card: CardConf


class ReportConf(_Section):
    path: str
    top_n: int = Field(ge=1)


class MaintainConf(_Section):
    tables: list[str]
    dedup: bool
    compact: bool
    target_file_mb: int = Field(ge=1)
    vacuum: bool
    force: bool  # before retention_hours: its check reads it
    retention_hours: int = Field(ge=0)
    staging: bool

    @field_validator("retention_hours")
    @classmethod
    def _safe_retention(cls, v: int, info: ValidationInfo) -> int:
        if v < SAFE_RETENTION_HOURS and not info.data.get("force"):
            raise ValueError(
                f"{v} is under {SAFE_RETENTION_HOURS} hours, Delta's safe minimum: a VACUUM could delete files a concurrent writer "
                "is still committing; set maintain.force: true if no other run writes the tables (runs and leases keep 168 hours still)"
            )
        return v

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, v: list[str]) -> list[str]:
        from instructlake.jobs.tables import SCHEMAS

        unknown = [t for t in v if t not in SCHEMAS]
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known: {sorted(SCHEMAS)}")
        return v


class SamplingOverrides(_Section):
    """null: the model file's value."""

    n: int | None = Field(ge=1)
    temperature: float | None = Field(ge=0)
    top_p: float | None = Field(gt=0, le=1)
    max_tokens: int | None = Field(ge=1)
    seed: int | None


class GpuConf(_Section):
    enabled: bool
    per_task: int | None = Field(ge=1)
    task_cpus: int = Field(ge=1)
    executor_gpus: int = Field(ge=0)
    executor_cores: int | None = Field(ge=1)
    executor_memory: str | None
    executor_memory_overhead: str | None
    discovery_script: str | None
    vendor: str | None


class LLMStageConf(_Section):
    """What translate and generate share: the model, the prompt selection, the engine job."""

    model_conf: str
    model: str | None
    backend: Backend | None
    engine_args: dict[str, Any]
    chat_template: str | None
    sampling: SamplingOverrides
    device: Literal["auto", "cpu", "cuda"]
    cpu_threads: int = Field(ge=1)
    input: Literal["auto", "prompts", "prompts_raw"]
    langs: list[str]
    limit: int | None = Field(ge=0)
    fraction: float = Field(gt=0, le=1)
    sample_seed: int
    tasks: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    chunk_rows: int = Field(ge=1)
    inflight_chunks: int = Field(ge=1)
    commit: Literal["auto", "direct", "staged"]
    staging_dir: str | None
    max_attempts: int = Field(ge=1)
    progress_interval_s: float = Field(gt=0)
    gpu: GpuConf


class TranslateConf(LLMStageConf):
    target_lang: str
    template: str | None


class ModelChoice(_Section):
    """One entry of `generate.models`: a model file and what differs for that model; a key left out is
    the stage's (generate over llm)."""

    model_conf: str
    model: str | None = None
    backend: Backend | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)  # merged over the stage's
    chat_template: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)  # SamplingOverrides keys, over the stage's
    tasks: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    gpu: dict[str, Any] = Field(default_factory=dict)  # GpuConf keys, over the stage's


def _model_choice(v: Any) -> Any:
    return {"model_conf": v} if isinstance(v, str) else v


class GenerateConf(LLMStageConf):
    source: Literal["prompts", "translations", "both"]
    system_prompt: str | None
    translation_model: str | None
    translation_finish_reasons: list[str]
    models: list[Annotated[ModelChoice, BeforeValidator(_model_choice)]]

    @model_validator(mode="after")
    def _one_model_form(self) -> GenerateConf:
        if self.models and self.model:
            raise ValueError("generate.model overrides the one model of model_conf; with generate.models give each entry its own `model`")
        return self

    def per_model(self) -> list[GenerateConf]:
        """One block per model, each with a single model (models: []): the entries of `models` over this
        block, or this block itself. Names must differ: responses, resume and export are keyed by model."""
        if not self.models:
            return [self]
        base = self.model_dump(by_alias=True, exclude={"models"})
        return [GenerateConf.model_validate({**_over(base, c.model_dump(exclude_none=True)), "models": []}) for c in self.models]


class JudgeConf(LLMStageConf):
    input: Literal["responses"]  # type: ignore[assignment]  # the judge reads responses, never prompts
    response_tasks: list[str]
    response_models: list[str]
    template: str | None
    system_prompt: str | None


class ReverseConf(LLMStageConf):
    sources: list[str]
    passage_template: str | None
    instruct_template: str | None
    score_template: str | None
    score_system_prompt: str | None
    back_template: str | None
    min_score: float | None = Field(ge=0, le=10)
    finish_reasons: list[str]


class PipelineConf(_Section):
    stages: list[str]


class Config(_Section):
    run: RunConf
    spark: SparkConf
    delta: DeltaConf
    tables: TablesConf
    secrets: dict[str, str | None]
    ingest: IngestConf
    curate: CurateConf
    translate: TranslateConf
    generate: GenerateConf
    judge: JudgeConf
    reverse: ReverseConf
    quality: QualityConf
    export: ExportConf
    report: ReportConf
    maintain: MaintainConf
    pipeline: PipelineConf
    _env_values: tuple[str, ...] = PrivateAttr(default=())  # what ${env:...} references took from the environment

    @field_validator("pipeline")
    @classmethod
    def _known_stages(cls, v: PipelineConf) -> PipelineConf:
        from instructlake.jobs.runs import STAGES

        unknown = [s for s in v.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(STAGES)}")
        return v

    def llm_stages(self) -> dict[str, LLMStageConf]:
        """Every LLM stage's block by stage name, found by type: a new LLM stage is covered by whatever
        iterates this (maintain's staging sweep) without being listed there."""
        return {name: v for name in type(self).model_fields if isinstance(v := getattr(self, name), LLMStageConf)}

    def snapshot(self) -> dict[str, Any]:
        """The config as plain data, safe for logs and tables: every value under a secret key (or under
        `secrets:`) redacted, credentials in URLs redacted, and every secret value (those, and whatever came
        from the environment) scrubbed wherever else it appears."""
        values = secret_values(self)
        return _scrub_tree(redact(self.model_dump(by_alias=True)), values)


def secret_key(key: Any) -> bool:
    """Whether a config key names a credential (the rule: _SECRET_WORD above)."""
    return str(key) == "secrets" or any(_SECRET_WORD.fullmatch(w.lower()) for w in _KEY_WORD.findall(str(key)))


def redact(tree: Any, secret: bool = False) -> Any:
    """Replace every value under a secret-looking key (or under `secrets:`) with a marker."""
    if isinstance(tree, dict):
        return {k: redact(v, secret or secret_key(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v, secret) for v in tree]
    return REDACTED if secret and tree not in (None, "") else tree


def secret_values(conf: Config) -> list[str]:
    """Every configured value that `redact` would hide, and every value an ${env:...} reference took from
    the environment (so free text such as errors, and other fields, can be scrubbed of them). Values
    shorter than 4 characters are left alone, and environment values under 8 unless under a secret key:
    scrubbing `1` or `main` would cut common words out of every record, and no credential is that short."""
    found: list[str] = [v for v in conf._env_values if len(v) >= 8]

    def walk(tree: Any, secret: bool) -> None:
        if isinstance(tree, dict):
            for k, v in tree.items():
                walk(v, secret or secret_key(k))
        elif isinstance(tree, list):
            for v in tree:
                walk(v, secret)
        elif secret and isinstance(tree, str) and len(tree) >= 4:
            found.append(tree)

    walk(conf.model_dump(by_alias=True), False)
    return sorted(set(found), key=len, reverse=True)


def _scrub_text(text: str, values: list[str]) -> str:
    text = _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", text)
    for value in values:  # longest first: a secret that holds another is replaced whole
        text = text.replace(value, REDACTED)
    return text


def _scrub_tree(tree: Any, values: list[str]) -> Any:
    if isinstance(tree, dict):
        return {k: _scrub_tree(v, values) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_scrub_tree(v, values) for v in tree]
    return _scrub_text(tree, values) if isinstance(tree, str) and tree != REDACTED else tree


def scrub(text: str, conf: Config) -> str:
    """Free text (an error, a log line) without the config's secret values and without URL credentials."""
    return _scrub_text(text, secret_values(conf))


def _interpolate_env(value: Any, taken: list[str]) -> Any:
    """${env:NAME} and ${env:NAME:-fallback} replaced; each value taken from the environment is added to
    `taken` (a fallback is written in the config, in clear, and is not)."""

    def lookup(m: re.Match) -> str:
        if m.group(1) in os.environ:
            taken.append(os.environ[m.group(1)])
            return os.environ[m.group(1)]
        return m.group(2) or ""

    if isinstance(value, str):
        return _ENV_REF.sub(lookup, value)
    if isinstance(value, dict):
        return {k: _interpolate_env(v, taken) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_env(v, taken) for v in value]
    return value


def _merge(base: dict, override: dict, origin: str, provenance: dict[str, str], prefix: str = "") -> dict:
    """Deep-merge `override` into `base`; dicts merge, everything else (lists included) replaces."""
    out = dict(base)
    for key, value in override.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value, origin, provenance, path + ".")
        else:
            out[key] = copy.deepcopy(value)
            for stale in [p for p in provenance if p.startswith(path + ".")]:
                del provenance[stale]
            _record(value, origin, provenance, path)
    return out


def _record(value: Any, origin: str, provenance: dict[str, str], path: str) -> None:
    provenance[path] = origin
    if isinstance(value, dict):
        for k, v in value.items():
            _record(v, origin, provenance, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _record(v, origin, provenance, f"{path}.{i}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _split_assignment(item: str) -> tuple[str, str]:
    """Split at the first `=` outside quotes (a quoted key segment may hold '=')."""
    quote = None
    for i, ch in enumerate(item):
        if ch in "\"'":
            quote = None if quote == ch else quote or ch
        elif ch == "=" and quote is None:
            return item[:i], item[i + 1 :]
    raise ConfigError(f"--set {item!r}: expected key=value")


def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], yaml-parsed value)."""
    key, raw = _split_assignment(item)
    # A quoted segment keeps its dots: spark.conf."spark.task.cpus"=2
    parts = [p.strip("\"'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', key.strip())]
    if not parts or not all(parts) or ".." in key:
        raise ConfigError(f"--set {item!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_config(files: list[str | Path] | None = None, sets: list[str] | None = None) -> Config:
    """default.yaml <- each file in `files` <- each `--set` item, validated."""
    provenance: dict[str, str] = {}
    tree = _merge({}, _read_yaml(DEFAULT_FILE), str(DEFAULT_FILE), provenance)
    for f in files or []:
        path = Path(f)
        tree = _merge(tree, _read_yaml(path), str(path), provenance)
    for item in sets or []:
        parts, value = parse_set(item)
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        tree = _merge(tree, nested, f"--set {'.'.join(parts)}", provenance)
    tree = _inherit_llm(tree, provenance)
    taken: list[str] = []
    try:
        conf = Config.model_validate(_interpolate_env(tree, taken))
    except ValidationError as e:
        raise ConfigError(_explain(e, provenance)) from None
    conf._env_values = tuple(taken)
    return conf


def _inherit_llm(tree: dict, provenance: dict[str, str]) -> dict:
    """Each LLM stage's block = the shared `llm` block with the stage's own keys over it (dicts merge
    key by key), after every file and --set: `--set llm.batch_size=8` reaches every stage that does not
    set its own. Keys a stage inherits report the llm key's origin in errors."""
    shared = tree.pop("llm", None) or {}
    out = dict(tree)
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, LLMStageConf):
            out[name] = _over(shared, tree.get(name) or {})
            for path in [p for p in provenance if p.startswith("llm.")]:
                provenance.setdefault(f"{name}.{path[4:]}", provenance[path])
    return out


def _over(base: dict, own: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in own.items():
        out[k] = _over(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _explain(error: ValidationError, provenance: dict[str, str]) -> str:
    lines = ["invalid configuration:"]
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        origin = next(
            (provenance[".".join(loc[:i])] for i in range(len(loc), 0, -1) if ".".join(loc[:i]) in provenance),
            "defaults (missing from every file)",
        )
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing":
            msg = f"required key missing (add it to {DEFAULT_FILE.name})"
        lines.append(f"  {key}: {msg} (from {origin})")
    return "\n".join(lines)
