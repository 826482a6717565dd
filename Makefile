# The course's commands. `make lab` opens the course, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Install stamps, remade when pyproject.toml changes (a torch already in the venv is kept):
# course_lib with the [lab] extra (JupyterLab, nbgrader), and with [lab,dev] (pytest too).
LAB_INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-dev
export PATH := $(abspath $(BIN)):$(PATH)
# JupyterLab refuses to start as root (containers, some cloud machines) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# lab_config/ hides nbgrader's instructor tools (Formgrader, Create Assignment, Course List) from students, for
# this JupyterLab only: nothing in the environment is changed. Instructors run `jupyter lab` without it.
LAB_CONFIG_PATH := $(abspath lab_config)$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))

# The tests install the [triton] extra too where Triton has wheels (Linux), so that lesson 08's
# kernel is tested in Triton's CPU interpreter; elsewhere those tests are skipped.
comma := ,
TEST_EXTRAS := lab,dev$(if $(filter Linux,$(shell uname -s)),$(comma)triton)

.PHONY: lab test test-gpu release bench grade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(LAB_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[lab]"
	touch $@

# [lab,dev] includes [lab]: its stamp is renewed too.
$(TEST_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[$(TEST_EXTRAS)]"
	touch $@ $(LAB_INSTALLED)

# Students work in work/, a copy of notebooks/: each lesson is copied once, never overwritten,
# so `git pull` and `make release` leave answers alone.
lab: $(LAB_INSTALLED)
	@mkdir -p work
	@for lesson in notebooks/*/; do \
		name=$$(basename "$$lesson"); \
		if [ ! -e "work/$$name" ]; then cp -R "$$lesson" "work/$$name"; echo "copied $$name into work/"; fi; \
	done
	JUPYTER_CONFIG_PATH="$(LAB_CONFIG_PATH)" $(BIN)/jupyter lab work $(ROOT_FLAG) $(LAB_ARGS)

test: $(TEST_INSTALLED)
	$(BIN)/python -m pytest

# The GPU tests alone (marked `gpu`: float16/bfloat16, SDPA's backends pinned, the Triton kernel);
# each is skipped without a CUDA GPU.
test-gpu: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -m gpu -rs

# Regenerate every release notebook from its solution with nbgrader.
release: $(LAB_INSTALLED)
	@for lesson in solutions/*/; do \
		$(BIN)/nbgrader generate_assignment "$$(basename "$$lesson")" --force || exit 1; \
	done

# Benchmarks (course_lib/bench/): ratios printed, results saved under bench_results/.
# `make bench BENCH=name` runs one; COURSE_DEVICE=cpu|cuda chooses the device.
bench: $(TEST_INSTALLED)
	$(BIN)/python -m course_lib.bench $(BENCH)

# Autograde every submission of ASSIGNMENT in parallel (sandboxed, resumable): `make grade ASSIGNMENT=05_scaled_dot_product WORKERS=2`.
WORKERS ?= 2
grade: $(LAB_INSTALLED)
	$(BIN)/python -m course_lib.grading.batch $(ASSIGNMENT) --workers $(WORKERS)

# Never removes gradebook.db: it holds the grades.
clean:
	rm -rf .pytest_cache build
