"""The LLM stages' Spark plumbing without an engine: the selection is stable across partitionings, and
the GPU resource profile plan of the engine job."""

from __future__ import annotations

from instructlake.jobs.llm import job as llm_job
from instructlake.jobs.llm import select as llm_select
from instructlake.udfs.text import prompt_id


def test_selection_is_stable_across_partitionings(spark):
    df = spark.createDataFrame([(prompt_id(str(i)), str(i), "en" if i % 3 else "ja") for i in range(300)], "prompt_id string, text string, lang string")
    picks = [
        {r.prompt_id for r in llm_select.sample(df.repartition(k), ["en"], 0.5, 40, 7).collect()} for k in (1, 5, 9)
    ]
    assert picks[0] == picks[1] == picks[2] and len(picks[0]) == 40
    assert {r.prompt_id for r in llm_select.sample(df, ["en"], 0.5, 40, 8).collect()} != picks[0]  # the seed matters


def test_gpu_resource_profile_plan(spark):
    from instructlake.jobs.config import GpuConf

    off = GpuConf(enabled=False, per_task=None, task_cpus=1, executor_gpus=0, executor_cores=None, executor_memory=None,
                  executor_memory_overhead=None, discovery_script=None, vendor=None)  # fmt: skip
    assert llm_job.gpu_profile(off, {"tensor_parallel_size": 4}) is None  # CPU: no profile at all
    on = off.model_copy(update={"enabled": True, "task_cpus": 4})
    profile = llm_job.gpu_profile(on, {"tensor_parallel_size": 4})
    assert profile.taskResources["gpu"].amount == 4 and profile.taskResources["cpus"].amount == 4
    assert profile.executorResources == {}  # task requests only: runs on the application's GPU executors
    own = on.model_copy(update={"executor_gpus": 8, "executor_cores": 16, "discovery_script": "./getGpusResources.sh"})
    profile = llm_job.gpu_profile(own, {"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    assert profile.taskResources["gpu"].amount == 4
    assert profile.executorResources["gpu"].amount == 8 and profile.executorResources["cores"].amount == 16
    assert llm_job.gpus_per_task(on.model_copy(update={"per_task": 1}), {"tensor_parallel_size": 8}) == 1

