# The two commands of the README. Both create .venv on first use (scripts/env.sh) and reuse it after.
.PHONY: env run test

env:
	@scripts/env.sh

# the main job on the embedded default: a sweep of 8 HAM trials on a local Ray (synthetic data, a
# tiny CNN, CPU is fine); each run goes to a new folder runs/smoke-<time>
run: env
	.venv/bin/hamsweep run search_spaces/smoke.yaml

# the whole test suite: first ruff (lint, then the format check: seconds, and a style slip fails
# before 20 minutes of tests), then pytest with a local SLURM for the launcher's tests:
# cluster/local/slurm.sh starts it (installing its Debian packages with apt-get the first time:
# root), runs pytest with SLURM_CONF exported, and stops it afterwards whatever pytest's outcome,
# exiting with pytest's code
test: env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	cluster/local/slurm.sh run .venv/bin/python -m pytest
