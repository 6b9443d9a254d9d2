"""Driver side of the LLM stages (translate, generate, judge, reverse).

An LLM stage is: pick its inputs (`select.select_prompts`, or the stage's own selection), tag those already
done or given up (`select.triage`), then `job.LLMJob.run` on the rest, which spreads them over `tasks`
engine tasks and runs udfs.generation.engine_task in mapInPandas (under a GPU ResourceProfile when
`gpu.enabled`). What runs on the executors, the sinks included, lives in udfs (executors never import
this package). Each task commits its rows chunk by chunk during the task, through one of two sinks
(udfs.sinks):

- `direct` (delta-rs backend): the task commits each chunk itself into the Delta tables, exactly once
  per chunk (app transactions).
- `staged` (any backend; the only choice with delta-spark, whose writer exists only on the driver): the
  task writes each chunk as a Parquet file under `staging_dir/<table>/`, and the driver merges staged
  files into the tables on their keys after the job, whether it failed or not, and again at the start of
  the next run (`LLMJob.recover`), which picks up what a crashed driver left (`staging.commit_staged`:
  idempotent, so a file merged twice changes nothing).

Modules: `models` (model files -> the engine spec, generation configs, the engine task), `select`
(selection, prior errors, error status, triage), `staging` (where staged chunks go, merging them), `job`
(the engine job, its GPU profile, its stats).
"""
