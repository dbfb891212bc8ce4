# The two set-up commands of README.md: `make demo` and `make test`.
# Each creates .venv on first use (CPU build of torch, pinned by constraints-cpu.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev]"
	touch $(STAMP)

# The tests also cover the optional executors (Ray, submitit) and the audit (faiss); `make demo` needs none of them.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev,ray,slurm,audit]"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cleanpipe run runs/demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
