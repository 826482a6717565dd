# The course's commands. `make lab` opens the course, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
# JupyterLab refuses to start as root (containers, some cloud machines) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test release clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled only when pyproject.toml changes. A torch already in the venv is kept.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

# Students work in work/, a copy of notebooks/: each lesson is copied once, never overwritten,
# so `git pull` and `make release` leave answers alone.
lab: $(INSTALLED)
	@mkdir -p work
	@for lesson in notebooks/*/; do \
		name=$$(basename "$$lesson"); \
		if [ ! -e "work/$$name" ]; then cp -R "$$lesson" "work/$$name"; echo "copied $$name into work/"; fi; \
	done
	$(BIN)/jupyter lab work $(ROOT_FLAG) $(LAB_ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Regenerate every release notebook from its solution with nbgrader.
release: $(INSTALLED)
	@for lesson in solutions/*/; do \
		$(BIN)/nbgrader generate_assignment "$$(basename "$$lesson")" --force || exit 1; \
	done

# Never removes gradebook.db: it holds the grades.
clean:
	rm -rf .pytest_cache build
