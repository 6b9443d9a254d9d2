"""Config loading: defaults only in YAML, typed validation naming key and file, `--set` overrides,
environment interpolation, secrets redacted in snapshots, the LLM stages' shared block."""

import json

import pytest

from instructlake.jobs.config import REDACTED, ConfigError, load_config, redact, scrub
from tests.support.lake import REPO


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_load_and_validate():
    conf = load_config()
    assert conf.spark.mode == "local"
    assert conf.ingest.turns == "first"
    assert conf.tables.names["prompts_raw"] == "prompts_raw"


def test_unknown_key_names_key_and_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "spark:\n  mastr: local[1]\n")
    with pytest.raises(ConfigError) as e:
        load_config([bad])
    assert "spark.mastr: unknown key" in str(e.value)
    assert str(bad) in str(e.value)


def test_bad_value_names_key_and_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "ingest:\n  turns: some\n")
    with pytest.raises(ConfigError) as e:
        load_config([bad])
    assert "ingest.turns" in str(e.value) and str(bad) in str(e.value)


def test_bad_nested_list_item_names_file(tmp_path):
    bad = write(tmp_path, "bad.yaml", "ingest:\n  inputs:\n    - path: x.jsonl\n      format: xml\n")
    with pytest.raises(ConfigError) as e:
        load_config([bad])
    assert "ingest.inputs.0.format" in str(e.value) and str(bad) in str(e.value)


def test_set_overrides_with_yaml_types_and_later_wins(tmp_path):
    f = write(tmp_path, "o.yaml", "spark:\n  shuffle_partitions: 3\n")
    conf = load_config([f], ["spark.shuffle_partitions=7", "ingest.turns=all", "pipeline.stages=[ingest]"])
    assert conf.spark.shuffle_partitions == 7
    assert conf.ingest.turns == "all"
    assert load_config([f]).spark.shuffle_partitions == 3


def test_set_errors_name_the_set(tmp_path):
    with pytest.raises(ConfigError, match=r"spark.shuffle_partitions: .*\(from --set spark.shuffle_partitions\)"):
        load_config([], ["spark.shuffle_partitions=zero"])
    with pytest.raises(ConfigError, match=r"spark.nope: unknown key \(from --set spark.nope\)"):
        load_config([], ["spark.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config([], ["spark.master"])


def test_unknown_stage_rejected():
    with pytest.raises(ConfigError, match="unknown stage"):
        load_config([], ["pipeline.stages=[ingest, teleport]"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config([write(tmp_path, "x.yaml", "spark: [unclosed\n")])


def test_env_interpolation(monkeypatch):
    monkeypatch.setenv("IL_TEST_ROOT", "/data/lake")
    conf = load_config([], ["run.lake_root=${env:IL_TEST_ROOT}", "run.work_dir=${env:IL_UNSET_VAR:-fallback}"])
    assert conf.run.lake_root == "/data/lake"
    assert conf.run.work_dir == "fallback"


def test_snapshot_redacts_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecretvalue123")
    conf = load_config(
        [],
        ['delta.storage_options={"AWS_SECRET_ACCESS_KEY": "aws-secret-xyz", "AWS_REGION": "eu-west-1"}'],
    )
    assert conf.secrets["hf_token"] == "hf_supersecretvalue123"  # usable by the code...
    text = json.dumps(conf.snapshot())
    assert "hf_supersecretvalue123" not in text and "aws-secret-xyz" not in text  # ...never stored
    assert conf.snapshot()["delta"]["storage_options"]["AWS_REGION"] == "eu-west-1"
    assert scrub("failed with token hf_supersecretvalue123", conf) == f"failed with token {REDACTED}"


def test_redact_keeps_structure():
    tree = {"a": {"api_key": "k", "n": 1}, "secrets": {"x": "y", "empty": None}, "lst": [{"password": "p"}]}
    assert redact(tree) == {"a": {"api_key": REDACTED, "n": 1}, "secrets": {"x": REDACTED, "empty": None}, "lst": [{"password": REDACTED}]}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "conf").glob("*.yaml")))
def test_every_shipped_conf_file_validates(name):
    load_config([REPO / "conf" / name])


def test_set_quoted_segment_keeps_dots():
    conf = load_config([], ['spark.conf."spark.task.cpus"=2', "spark.conf.'spark.ui.enabled'=false"])
    assert conf.spark.conf == {"spark.task.cpus": "2", "spark.ui.enabled": "false"}
    with pytest.raises(ConfigError, match="empty key segment"):
        load_config([], ["spark..master=x"])


LLM_STAGES = ("translate", "generate", "judge", "reverse")


def test_llm_stages_inherit_the_shared_block_and_override_it():
    conf = load_config([], ["llm.batch_size=8", "generate.batch_size=16", "llm.gpu.task_cpus=4", "judge.gpu.per_task=2"])
    assert [getattr(conf, s).batch_size for s in LLM_STAGES] == [8, 16, 8, 8]
    assert [getattr(conf, s).gpu.task_cpus for s in LLM_STAGES] == [4, 4, 4, 4]  # nested blocks merge key by key
    assert [getattr(conf, s).gpu.per_task for s in LLM_STAGES] == [None, None, 2, None]
    assert set(conf.llm_stages()) == set(LLM_STAGES)
    # What a stage sets in default.yaml stays its own: the judge and translation are greedy.
    assert conf.judge.sampling.temperature == conf.translate.sampling.temperature == 0.0
    assert conf.generate.sampling.temperature is None and conf.judge.sampling.max_tokens == 512
    assert "llm" not in conf.snapshot()  # run records hold each stage's resolved block


def test_an_inherited_key_reports_where_it_was_set():
    with pytest.raises(ConfigError, match=r"generate\.tasks: .*\(from --set llm\.tasks\)"):
        load_config([], ["llm.tasks=0"])


def test_generate_models_each_inherit_the_stage_block(tmp_path):
    from types import SimpleNamespace

    from instructlake.jobs import generate

    sets = [
        "llm.batch_size=8", "generate.sampling.n=3", "generate.engine_args={enforce_eager: true}",
        "generate.models=[conf/models/tiny-local.yaml, {model_conf: conf/models/tiny-local-b.yaml, tasks: 1, "
        "sampling: {temperature: 0.2}, engine_args: {max_model_len: 512}, gpu: {per_task: 2}}]",
    ]  # fmt: skip
    conf = load_config([REPO / "conf" / "local.yaml"], sets)
    a, b = conf.generate.per_model()
    assert (a.model_conf, a.tasks, a.batch_size, a.sampling.n, a.models) == ("conf/models/tiny-local.yaml", 2, 8, 3, [])
    assert (b.model_conf, b.tasks, b.batch_size) == ("conf/models/tiny-local-b.yaml", 1, 8)
    assert (b.sampling.n, b.sampling.temperature, b.gpu.per_task, b.gpu.task_cpus) == (3, 0.2, 2, 1)  # merged key by key
    assert b.engine_args == {"enforce_eager": True, "max_model_len": 512}
    assert load_config([], []).generate.per_model() == [load_config([], []).generate]  # the one-model form

    with pytest.raises(ConfigError, match="with generate.models give each entry its own `model`"):
        load_config([], ["generate.model=/m/x", "generate.models=[conf/models/tiny-local.yaml]"])
    with pytest.raises(ConfigError, match=r"generate.models.0.nope: unknown key"):
        load_config([], ["generate.models=[{model_conf: a.yaml, nope: 1}]"])
    # Two entries recording one model name could not be told apart in responses, resume or export.
    same = load_config([], [f"run.work_dir={tmp_path}", "generate.models=[{model_conf: conf/models/tiny-local.yaml, model: /m/a}, "
                            "{model_conf: conf/models/tiny-local-b.yaml, model: /m/a}]"])  # fmt: skip
    with pytest.raises(ValueError, match=r"several entries record the model name \['/m/a'\]"):
        generate.build_tasks(SimpleNamespace(conf=same, run_id="r"))



@pytest.mark.parametrize("bad", ["../../x", "a/b", "a b", "..", "a..b", ".hidden", "-x", "x" * 129, "run:1", "rün", "a\\b", " x"])
def test_run_id_must_be_safe_in_file_names_app_ids_and_urls(bad):
    with pytest.raises(ConfigError, match=r"run\.run_id: .*\(from --set run\.run_id\)"):
        load_config([], [f"run.run_id={json.dumps(bad)}"])


def test_run_id_from_a_file_names_the_file_and_generated_ids_pass(tmp_path):
    from instructlake.jobs.runs import new_run_id

    bad = write(tmp_path, "bad.yaml", "run:\n  run_id: ../../x\n")
    with pytest.raises(ConfigError, match=rf"run\.run_id: .*\(from {bad}\)"):
        load_config([bad])
    for good in ("2026-01-01_backfill.2", "databricks-1234", "x" * 128, new_run_id()):
        assert load_config([], [f"run.run_id={good}"]).run.run_id == good
    assert load_config([], ["run.run_id="]).run.run_id is None  # empty, as a notebook's blank widget: a fresh id

    from instructlake.jobs.config import RUN_ID

    assert all(RUN_ID.fullmatch(new_run_id()) for _ in range(20))


def test_secrets_redacted_by_key_word_by_value_and_in_urls(monkeypatch):
    """Credentials set under any secret-looking key, taken from the environment, or written into a URL
    never reach the snapshot (runs.config) nor scrubbed text; non-secret keys keep their values."""
    from instructlake.jobs.runs import config_json

    monkeypatch.setenv("IL_TEST_SAS", "sv=2024-01-01&sig=AbCdEf0123456789")
    conf = load_config(
        [],
        [
            "delta.storage_options.azure_storage_account_key=acct-key-0001",
            "delta.storage_options.azure_storage_sas_key=${env:IL_TEST_SAS}",
            "delta.storage_options.google_service_account_key=gsa-key-0002",
            "delta.storage_options.AWS_SECRET_ACCESS_KEY=aws-secret-0003",
            "delta.storage_options.access_key=plain-access-0004",
            "delta.storage_options.AWS_REGION=eu-west-1",
            'spark.conf."spark.hadoop.fs.azure.account.key.myacct.dfs.core.windows.net"=fs-key-0005',
            'spark.conf."spark.hadoop.fs.s3a.secret.key"=s3a-secret-0006',
            "spark.executor_env.AZURE_CLIENT_CREDENTIAL=cred-0007",
            "spark.executor_env.HTTP_AUTH=auth-0008",
            "run.lake_root=s3a://AKIAEXAMPLE:s3cr3t-0009@bucket/lake",
            "export.path=https://user:hunter2-0010@host.example/out",
            "report.path=reports/${env:IL_TEST_SAS}",  # an environment value under a key that is no secret
            "run.work_dir=/scratch/acct-key-0001",  # a secret's value copied into another field
            "curate.decontaminate.benchmarks=[{name: b, path: 'abfss://container@acct.dfs.core.windows.net/b.jsonl'}]",
        ],
    )
    assert conf.delta.storage_options["azure_storage_account_key"] == "acct-key-0001"  # usable by the code...
    leaked = ["acct-key-0001", "AbCdEf0123456789", "gsa-key-0002", "aws-secret-0003", "plain-access-0004", "fs-key-0005",
              "s3a-secret-0006", "cred-0007", "auth-0008", "AKIAEXAMPLE", "s3cr3t-0009", "hunter2-0010"]  # fmt: skip
    for text in (json.dumps(conf.snapshot()), config_json(conf)):
        assert [s for s in leaked if s in text] == []  # ...never stored
    snap = conf.snapshot()
    assert snap["run"]["lake_root"] == f"s3a://{REDACTED}@bucket/lake"
    assert snap["export"]["path"] == f"https://{REDACTED}@host.example/out"
    assert snap["report"]["path"] == f"reports/{REDACTED}" and snap["run"]["work_dir"] == f"/scratch/{REDACTED}"
    # Not secrets: a region, a container in a URL's user part, keys that hold a secret word only as part of
    # another word (max_tokens, tokenizer, passage_template, require_checks_passed).
    assert snap["delta"]["storage_options"]["AWS_REGION"] == "eu-west-1"
    assert snap["curate"]["decontaminate"]["benchmarks"][0]["path"] == "abfss://container@acct.dfs.core.windows.net/b.jsonl"
    assert snap["judge"]["sampling"]["max_tokens"] == 512 and snap["curate"]["filters"]["length"]["max_tokens"] == 4096
    assert snap["curate"]["decontaminate"]["near_max_tokens"] == 26 and snap["export"]["require_checks_passed"] is True
    assert "tokenizer" in snap["curate"]["filters"]["length"] and snap["reverse"]["passage_template"] is None
    error = "cannot open s3a://AKIAEXAMPLE:s3cr3t-0009@bucket/x (sv=2024-01-01&sig=AbCdEf0123456789, key acct-key-0001)"
    assert scrub(error, conf) == f"cannot open s3a://{REDACTED}@bucket/x ({REDACTED}, key {REDACTED})"


@pytest.mark.parametrize(
    "key, secret",
    [
        ("azure_storage_account_key", True), ("azure_storage_sas_key", True), ("google_service_account_key", True),
        ("fs.azure.account.key.acct.dfs.core.windows.net", True), ("aws_secret_access_key", True), ("access_key", True),
        ("AZURE_STORAGE_SAS_TOKEN", True), ("hf_token", True), ("apiKey", True), ("sasToken", True), ("db_password", True),
        ("passwd", True), ("client_credential", True), ("signature", True), ("auth", True), ("x-api-key", True),
        ("max_tokens", False), ("tokenizer", False), ("keys", False), ("passage_template", False),
        ("require_checks_passed", False), ("near_max_tokens", False), ("AWS_REGION", False), ("monkeys", False),
    ],
)  # fmt: skip
def test_secret_key_rule(key, secret):
    assert redact({key: "v"}) == {key: REDACTED if secret else "v"}
