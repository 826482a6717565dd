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

.PHONY: lab test test-gpu release lesson-times bench grade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first, and only where the venv has none (an installed torch is left alone, as CI's
# local CPU build is): on Linux without an NVIDIA GPU, the CPU build from PyTorch's CPU wheel index
# (PyPI's Linux torch is a CUDA build of several GB); elsewhere PyPI's (CUDA on Linux, the macOS build).
# Choose with `make lab TORCH_INDEX=<index URL>` (e.g. https://download.pytorch.org/whl/cu126), or
# `TORCH_INDEX=` for PyPI's. UNAME and NVIDIA_SMI are there for the tests.
UNAME ?= $(shell uname -s)
NVIDIA_SMI ?= nvidia-smi
NVIDIA_GPU := $(shell $(NVIDIA_SMI) -L 2>/dev/null | grep -q '^GPU' && echo yes)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(filter Linux,$(UNAME)),$(if $(NVIDIA_GPU),,$(TORCH_CPU_INDEX)))
INSTALL_TORCH = if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') is installed: kept"; \
	else \
		$(BIN)/python -m pip install torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi

$(LAB_INSTALLED): pyproject.toml | $(BIN)/python
	@$(INSTALL_TORCH)
	$(BIN)/python -m pip install -e ".[lab]"
	touch $@

# [lab,dev] includes [lab]: its stamp is renewed too.
$(TEST_INSTALLED): pyproject.toml | $(BIN)/python
	@$(INSTALL_TORCH)
	$(BIN)/python -m pip install -e ".[$(TEST_EXTRAS)]"
	touch $@ $(LAB_INSTALLED)

# Students work in work/, a copy of notebooks/: each lesson is copied once, never overwritten,
# so `git pull` and `make release` leave answers alone; a lesson whose release in notebooks/ is newer
# than the student's copy is named, with how to take it (course_lib/work.py).
# The first import of torch and matplotlib (its font cache) happens here, not in the first Validate.
lab: $(LAB_INSTALLED)
	@$(BIN)/python -m course_lib.work notebooks work
	@$(BIN)/python -c "import matplotlib.pyplot, course_lib.grading"
	JUPYTER_CONFIG_PATH="$(LAB_CONFIG_PATH)" $(BIN)/jupyter lab work $(ROOT_FLAG) $(LAB_ARGS)

test: $(TEST_INSTALLED)
	$(BIN)/python -m pytest

# The GPU tests alone (marked `gpu`: float16/bfloat16, SDPA's backends pinned, the Triton kernel);
# each is skipped without a CUDA GPU.
test-gpu: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -m gpu -rs

# Every lesson of solutions/: its set-up cells (Colab link, set-up cell) and metadata written from
# pyproject.toml's version and repository, its release regenerated with nbgrader, the release
# normalised (course_lib/release.py). `make release LESSONS=05_scaled_dot_product` for one.
release: $(LAB_INSTALLED)
	$(BIN)/python -m course_lib.release $(LESSONS)

# Every lesson's solution run from the built wheel in a fresh venv (tests/e2e/test_clean_room.py);
# the CPU times it measured are then shipped in course_lib/data/lesson_times.json.
lesson-times: $(TEST_INSTALLED)
	$(BIN)/python -m pytest tests/e2e/test_clean_room.py -q
	$(BIN)/python -m course_lib.release --record-times build/clean_room_times.json

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
