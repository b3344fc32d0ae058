# bt-transfer: `make help` lists the targets and the variables they read.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= $(shell command -v python3.11 || command -v python3)#  interpreter that creates the virtual environment (3.11 tested; 3.10-3.13 expected to work)
VENV    ?= .venv#                the environment every target runs in
SYSTEM_SITE ?= 0#                1: let .venv see system packages (e.g. a full Detectron2 built from GitHub)
GPUS    ?= $(shell $(PY) -c 'import torch; print(max(torch.cuda.device_count(), 1))' 2>/dev/null || echo 1)#  processes per machine: the GPUs torch sees (CUDA_VISIBLE_DEVICES), at least 1
DATA    ?= datasets/imagenet#    ImageFolder root with train/ and val/
EPOCHS  ?= 1000#                 pretraining epochs (paper: 1000)
BATCH   ?= 2048#                 global pretraining batch (paper: 2048)
WEIGHTS ?= runs/pretrain/resnet50.pth#  backbone to evaluate (any format bt_transfer.convert reads)
SEEDS   ?= 1 2 3 4 5#            detection seeds; the report gives mean and std over them
PERCENT ?= 1#                    semi-supervised subset: 1 or 10
LABEL   ?= $(notdir $(WEIGHTS))#   how the report names the benchmarked checkpoint
OUT     ?=#                      output folder (default: runs/<target>)
ARGS    ?=#                      extra arguments passed to the target's command

PY := $(VENV)/bin/python
TORCHRUN = $(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS)
STAMP := $(VENV)/.bt-transfer-setup

.PHONY: help setup test demo gpu-check pretrain benchmark transfer-voc transfer-coco linear semisup tables bench bench-gpu

help: ## list targets and variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "variables (make VAR=value):"
	@grep -E '^[A-Z_]+ +\?=' $(MAKEFILE_LIST) | sed -E 's/ *\?= */ = /; s/# +/    # /; s/^/  /'

setup: $(STAMP) ## create .venv: torch, then Detectron2 (pure-Python build unless one is importable), then this project

# pip < 26.3: later pips refuse to download the Detectron2 sdist from PyPI (its metadata names a direct URL in an
# extra; see third_party/detectron2/build.py). Re-run only when what it installs changes; each step also skips work already done. Each step prints one line; its
# output goes to $(SETUP_LOGS)/<step>.log and is shown only when the step fails.
SETUP_LOGS := .cache/setup
PIP := $(PY) -m pip --disable-pip-version-check
STEP = step() { echo "== $$2"; mkdir -p $(SETUP_LOGS); log=$(SETUP_LOGS)/$$1.log; \
  if ! (eval "$$3") >$$log 2>&1; then cat $$log; echo "make setup: step '$$1' failed; its output is above and in $$log" >&2; exit 1; fi; }; step

$(STAMP): pyproject.toml third_party/detectron2/build.py third_party/detectron2/_C.py
	@$(STEP) venv "venv $(VENV)" '{ test -x $(PY) || $(PYTHON) -m venv $(if $(filter 1,$(SYSTEM_SITE)),--system-site-packages) $(VENV); } \
	  && $(PIP) install --upgrade "pip>=24,<26.3" "setuptools>=77" wheel'
	@$(STEP) torch "torch 2.14.1 / torchvision 0.29.1" '$(PIP) install torch==2.14.1 torchvision==0.29.1'
	@if found=$$($(PY) -c 'import detectron2; print(detectron2.__version__, "at", detectron2.__path__[0])' 2>/dev/null); then \
	  echo "== detectron2 $$found (already importable: kept)"; \
	else \
	  $(STEP) detectron2 "detectron2 0.6 (pure-Python build)" \
	    'wheel=$$($(PY) third_party/detectron2/build.py --cache .cache/detectron2) && $(PIP) install "$$wheel"'; \
	fi
	@$(STEP) bt-transfer "bt-transfer (editable)" '$(PIP) install -e .'
	@touch $@

test: setup ## run the test suite (CPU, under 20 minutes on 2 cores)
	$(PY) -m pytest tests $(ARGS)

demo: setup ## the whole suite end to end on generated data, on CPU: report in runs/demo/tables/
	$(PY) -m bt_transfer.demo --out $(or $(OUT),runs/demo) $(ARGS)

pretrain: setup ## Barlow Twins pretraining (paper defaults); resumes from OUT/checkpoint.pth
	$(TORCHRUN) -m pretrain.train --data $(DATA)/train --epochs $(EPOCHS) --batch-size $(BATCH) \
	  --out $(or $(OUT),runs/pretrain) $(ARGS)

benchmark: setup ## every task of Tables 1, 2 and 4 for WEIGHTS, then the report (ARGS="--plan", "--slurm ...")
	$(PY) -m bt_transfer.benchmark --weights $(WEIGHTS) --label "$(LABEL)" --data $(DATA) --seeds $(SEEDS) \
	  --gpus $(GPUS) $(if $(OUT),--out $(OUT)) $(ARGS)

transfer-voc: setup ## Faster R-CNN R50-C4 on VOC07+12, 24k iterations, one run per seed
	$(PY) -m bt_transfer.transfer voc --weights $(WEIGHTS) --seeds $(SEEDS) --num-gpus $(GPUS) \
	  --out $(or $(OUT),runs/transfer-voc) $(ARGS)

transfer-coco: setup ## Mask R-CNN R50-C4 on COCO, 1x schedule, one run per seed
	$(PY) -m bt_transfer.transfer coco --weights $(WEIGHTS) --seeds $(SEEDS) --num-gpus $(GPUS) \
	  --out $(or $(OUT),runs/transfer-coco) $(ARGS)

linear: setup ## ImageNet linear evaluation of WEIGHTS (100 epochs)
	$(TORCHRUN) -m pretrain.evaluate --mode linear --weights $(WEIGHTS) --data $(DATA) \
	  --out $(or $(OUT),runs/linear) $(ARGS)

semisup: setup ## ImageNet semi-supervised fine-tuning on PERCENT% of the labels (20 epochs)
	$(TORCHRUN) -m pretrain.evaluate --mode semisup --percent $(PERCENT) --weights $(WEIGHTS) --data $(DATA) \
	  --out $(or $(OUT),runs/semisup-$(PERCENT)) $(ARGS)

tables: setup ## rebuild tables/ from every result.json under runs/
	$(PY) -m bt_transfer.report --results runs --out $(or $(OUT),tables) $(ARGS)

bench: setup ## speed and memory benchmarks, ours against the reference, side by side
	$(PY) -m bench $(ARGS)

gpu-check: setup ## every CUDA path through its real command on generated data (< 8 minutes): one table, exit status
	$(PY) -m bench.gpu_check --out $(or $(OUT),runs/gpu-check)

bench-gpu: setup ## all benchmarks on a CUDA machine (under 5 minutes): images/s per GPU at 224 px
	PY=$(PY) OUT=$(or $(OUT),runs/bench-gpu) bash bench/gpu.sh $(ARGS)
