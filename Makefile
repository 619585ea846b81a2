# atp — every target creates and reuses the local virtual environment (.venv) on first use.
#
# Why torch is installed first and pinned: segmentation-models-pytorch and timm import torchvision,
# and the CPU-only torch wheel a package index offers first has no torchvision that imports beside it.
# torch 2.14.1 + torchvision 0.29.1 (CUDA builds, which also run on a CPU) is a pair that works;
# installing them before the package keeps pip from picking a mismatched pair. Do not pin above this pair
# (the CI machine's pip constraint caps torch there); pyproject.toml's ranges stop at it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atp-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast test-cluster demo ladder lint bench rehearse clean-outputs

install: $(STAMP)

# Re-running any target on an existing .venv reinstalls nothing: the stamp is newer than pyproject.toml.
# A new .venv needs about 6.2 GB, mostly the CUDA build of torch (docs/benchmarks.md); pip keeps no cache
# copy of the wheels (--no-cache-dir), so that is also the peak. Too little disk stops here, named.
VENV_NEEDS_GB ?= 7
$(STAMP): pyproject.toml
	@test -x $(PY) || { mkdir -p $(VENV) && free_gb=$$(df -Pk $(VENV) | awk 'NR==2 {print int($$4 / 1048576)}') && \
	  if [ "$$free_gb" -lt $(VENV_NEEDS_GB) ]; then \
	    echo "make: $(VENV) needs about $(VENV_NEEDS_GB) GB of free disk; its file system has $$free_gb GB." \
	      "Free space there, or put the environment on a larger disk: make VENV=/path/to/venv ..." >&2; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir $(TORCH_PINS)
	$(PY) -m pip install --quiet --no-cache-dir -e '.[dev,slurm]'
	touch $(STAMP)

# Two pytest-xdist workers, one core each (tests/conftest.py gives each its share of the threads); a test file
# stays on one worker, so its module fixtures are built once. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The SLURM scenarios (tests/cluster, docs/cluster.md): .venv has the slurm extra (every target installs it);
# through the tests, slurm-wlm + munge (apt-get, root) and a one-node SLURM (scripts/slurm_local.sh) that it
# stops again.
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster --basetemp=/tmp/atp-test-cluster tests/cluster

demo: $(STAMP)
	$(PY) -m atp.demo

# Every toy shift family × seeds 76 and 1: one shared source model per seed, then AdaBN → Align → Teach →
# Propagate per family and the baselines TENT, SHOT-IM and self-training (docs/results.md); two jobs at once, one
# thread each; resumable (re-running skips finished runs). About two hours: start it as
# `nohup make ladder > ladder.out &` (its time: docs/results.md). Left out to keep it there, each added by
# re-running into the same folder (finished runs are shared): ATP's ablations on `toy`, seed 76
# (LADDER_ARGS="--jobs 2 --ablation-families toy --no-oracle"), the target oracles of seed 76 (drop --no-oracle),
# the ablations on every development family (LADDER_ARGS="--jobs 2", the CLI's default).
LADDER_ARGS ?= --jobs 2 --ablations none --no-oracle
ladder: $(STAMP)
	$(PY) -m atp.ladder $(LADDER_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests scripts

# The like-for-like configuration docs/benchmarks.md quotes (`python -m atp.bench --quick` is the smoke test,
# which judges nothing).
bench: $(STAMP)
	$(PY) -m atp.bench --model mitb0_lite --crop 128 --batch 2 --json outputs/bench.json

# The paper recipe rehearsed at full size on this CPU (docs/benchmarks.md#full-size-rehearsal): MiT-B5, batch 2, two
# steps per stage of both chains through the user's own commands on toy scenes at the real image sizes; writes
# outputs/rehearse/rehearsal.{json,md}. It needs about 14 GB of RAM and 40 minutes or more on 2 cores (figures there).
rehearse: $(STAMP)
	$(PY) -m atp.rehearse --model mitb5

clean-outputs:
	rm -rf outputs multirun
