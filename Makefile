# Set-up, tests and the main jobs. `make test` and `make train` work on a fresh clone.
PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# The torch to install: a pip requirement (version, wheel path or URL).
# The default takes the local CPU wheel; e.g. TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'.
TORCH      ?= torch==2.13.0
EXPERIMENT ?= vp_digits
SAMPLER    ?= pc
RUN        ?=
TASK       ?=
# Extra Hydra overrides for train / sample / evaluate, e.g. make train ARGS='trainer.steps=100'
ARGS       ?=
PYTEST_ARGS ?=
STAMP      := $(VENV)/.installed

# W&B runs offline unless WANDB_API_KEY is set (decided in sde/training/logging.py).
export HYDRA_FULL_ERROR ?= 0

.PHONY: install test test-slow test-gpu lint format smoke train sample evaluate bench-models bench-bf16 bench-samplers bench-schedules bench-data bench-conditional bench-distill bench-latent clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[dev]'
	$(PY) -c "import torch, sde; print('installed sde with torch', torch.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not slow and not gpu" -n 2 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m "slow and not gpu" $(PYTEST_ARGS)

test-gpu: install
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check sde tests benchmarks

# Sort imports and apply ruff's safe fixes (the code is formatted by hand to line-length 110).
format: install
	$(PY) -m ruff check --fix sde tests benchmarks

# Seconds: a few steps of a tiny network through the whole loop (conf/debug/fast.yaml).
smoke: install
	$(PY) -m sde.train experiment=$(EXPERIMENT) debug=fast $(ARGS)

train: install
	$(PY) -m sde.train experiment=$(EXPERIMENT) $(ARGS)

sample: install
	$(PY) -m sde.sample sampler=$(SAMPLER) $(if $(RUN),run=$(RUN),) $(if $(TASK),task=$(TASK),) $(ARGS)

evaluate: install
	$(PY) -m sde.evaluate $(if $(RUN),run=$(RUN),) $(ARGS)

bench-models: install
	$(PY) benchmarks/bench_models.py

bench-bf16: install
	$(PY) benchmarks/bench_models.py --quick --isa-sweep --threads 1 --clock process

bench-samplers: install   # the samplers on exact scores, the column per SDE (bench-schedules), the fewest-NFE table; RUN=<vp_digits run>: its digits row
	$(PY) benchmarks/bench_samplers.py
	$(PY) benchmarks/bench_schedules.py
	$(PY) benchmarks/bench_samplers.py --fewest --n 1000 --seeds 8
	$(if $(RUN),$(PY) benchmarks/bench_digits_samplers.py $(RUN))

bench-schedules: install
	$(PY) benchmarks/bench_schedules.py

bench-data: install
	$(PY) benchmarks/bench_data.py

bench-conditional: install
	$(PY) benchmarks/bench_conditional.py

bench-distill: install
	$(PY) benchmarks/bench_distill.py

bench-latent: install
	$(PY) benchmarks/bench_latent.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
