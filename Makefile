# MedQuant leaderboard — developer commands. `make run` and `make test` are the two set-up commands.
VENV ?= .venv
PY := $(VENV)/bin/python
HARNESS := $(VENV)/bin/harness
DEMO ?= demo
# nnU-Net v2's network builder, installed without its dependencies: it requires timm (for its
# vision-transformer variants, not the U-Nets imported here), which pulls torchvision and with it
# a CUDA build of torch over the pinned CPU one. Its U-Nets need only torch and numpy.
DNA_VERSION := 0.4.4

.PHONY: venv run demo test test-fast lint format benchmark demo-models demo-nnunet

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	$(VENV)/bin/pip install --quiet --no-deps 'dynamic-network-architectures==$(DNA_VERSION)'
	touch $@

## Demo data (phantom dataset + shipped models), SQLite database, demo tracks whose baselines a
## Celery worker (started by `serve`, broker: SQLAlchemy on SQLite) computes, site at :8000
run: venv demo
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py seed_demo --demo $(DEMO)
	OMP_NUM_THREADS=1 $(PY) manage.py serve 127.0.0.1:8000

demo: venv
	test -f $(DEMO)/dataset/dataset.json -a -d $(DEMO)/models -a -d $(DEMO)/sources || $(HARNESS) demo --out $(DEMO)

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest --durations=40

## The suite without Docker, the browser, live services or training (minutes, not the full run)
test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not docker and not browser and not services and not training"

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## BENCHMARK_ARGS: extra options (the CI smoke run, tests/test_benchmarks.py, passes --cases 1)
benchmark: venv demo
	$(PY) benchmarks/harness_overhead.py --demo $(DEMO) $(BENCHMARK_ARGS)

## Retrain the shipped demo checkpoints with the settings recorded in their model.json
demo-models: venv
	$(HARNESS) make-phantoms --out $(DEMO)/dataset --cases 28 --seed 0
	for m in unet segresnet unetr; do \
	  $(HARNESS) train --dataset $(DEMO)/dataset --spec harness/models/demo_models/$$m \
	    --out harness/models/demo_models/$$m || exit 1; \
	done

## The shipped nnU-Net v2 demo folder: a PlainConvUNet trained on the phantoms' train split
demo-nnunet: venv
	$(HARNESS) make-phantoms --out $(DEMO)/dataset --cases 28 --seed 0
	$(PY) -m harness.models.demo_nnunet --dataset $(DEMO)/dataset \
	  --out harness/models/demo_sources/nnunet_phantom
