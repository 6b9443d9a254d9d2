"""Judge rows without an engine: scores parsed from fixed judge outputs (unparseable ones kept), the
judgements table's contract and defaults."""

from __future__ import annotations

import pandas as pd

from instructlake.jobs.runs import STAGES
from instructlake.jobs.tables import KEYS, SCHEMAS
from instructlake.udfs import generation as G
from instructlake.udfs.prompts import JUDGE_SYSTEM, judge_messages
from tests.support.lake import REPO


def test_judge_rows_parse_scores_and_keep_unparseable_judgements():
    # No template given: a judge task uses JUDGE_TEMPLATE (never the translate template).
    task = G.LLMTask("judge", "judge-m", {"backend": "vllm"}, G.E.SamplingConfig(max_tokens=64), {"model": "judge-m"},
                     "run1", 8, 8, 30.0, system_prompt=JUDGE_SYSTEM)  # fmt: skip
    frame = pd.DataFrame(
        dict(prompt_id=["r1", "r2", "r3", "r4"], origin_prompt_id=["p1", "p1", "p2", "p2"], task="judge", lang="en",
             text=["What is 2+2?"] * 4, answer=["4", "5", "four", "x"], attempt=1)
    )  # fmt: skip
    requests = G.requests_for(task, frame)
    assert [r.key for r in requests] == ["r1", "r2", "r3", "r4"]
    assert requests[1].messages == judge_messages("What is 2+2?", "5")
    assert requests[0].sampling.temperature == 0.0 and requests[0].sampling.n == 1
    outputs = ["Correct and concise. Rating: [[9]]", 'Wrong. Format: "Rating: [[5]]". Mine: [[1.5]]', "Fine, I guess. 7/10"]
    results = [G.E.Result(k, [t], ["stop"], 200, [12], 0.1) for k, t in zip(["r1", "r2", "r3"], outputs)]
    results.append(G.E.Result.failed("r4", "InjectedFault", "boom"))
    rows = G.rows_for(task, frame, results, "vllm-x", 4096)
    assert set(rows) == {"judgements", "generation_errors"} and task.table == "judgements"
    got = {r["response_id"]: r for r in rows["judgements"]}
    assert [got[k]["score"] for k in ("r1", "r2", "r3")] == [9.0, 1.5, None]
    assert got["r3"]["rationale"] == "Fine, I guess. 7/10"  # unparseable: kept, score null
    assert got["r1"]["prompt_id"] == "p1" and got["r1"]["judge_model"] == "judge-m"
    assert got["r1"]["gen_config_id"] == task.config_id("judge") and got["r1"]["completion_tokens"] == 12
    [err] = rows["generation_errors"]
    assert (err["input_id"], err["task"], err["model"], err["error_class"]) == ("r4", "judge", "judge-m", "InjectedFault")
    assert err["max_model_len"] == 4096 and set(err) == set(SCHEMAS["generation_errors"].fieldNames())
    assert set(rows["judgements"][0]) == set(SCHEMAS["judgements"].fieldNames())


def test_contract_registration_and_defaults():
    from instructlake.jobs.config import load_config

    order = list(STAGES)
    assert order.index("generate") < order.index("judge") < order.index("export")
    assert order.index("judge") < order.index("quality")
    assert KEYS["judgements"] == ("response_id", "judge_model")
    assert SCHEMAS["judgements"]["score"].dataType.simpleString() == "double" and SCHEMAS["judgements"]["score"].nullable
    conf = load_config([REPO / "conf" / "local.yaml"])
    assert "judge" not in conf.pipeline.stages  # the tiny random model writes no parseable scores
    assert conf.tables.names["judgements"] == "judgements"
    s = conf.judge.sampling
    assert (s.n, s.temperature, s.max_tokens) == (1, 0.0, 512) and conf.judge.template is None
    assert conf.export.min_score is None and conf.export.judge_model is None

