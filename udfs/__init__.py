"""Executor-side pure functions over pandas/Arrow batches.

Nothing here imports the driver side (instructlake.jobs), and nothing imports vllm or torch
until an engine is actually built.
"""
