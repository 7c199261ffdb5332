# The two commands of the README. Both create .venv on first use (scripts/env.sh) and reuse it after.
.PHONY: env run test

env:
	@scripts/env.sh

# the main job on the embedded default: one HAM trial on synthetic data, a tiny CNN, CPU is fine
run: env
	.venv/bin/hamsweep train search_spaces/smoke.yaml

# the whole test suite
test: env
	.venv/bin/python -m pytest
