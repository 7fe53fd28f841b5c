# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

.PHONY: install demo test bench docs cli-docs mutation clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel on machines without a GPU (lies on disk here); CUDA build where one is present.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,spark]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	bash examples/demo.sh $(DEMO)

bench: $(STAMP)
	$(PY) benchmarks/paper_repro/run.py

# The documentation site (docs/, nav in mkdocs.yml) into site/; --strict turns a broken link into an error.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# docs/cli.md, every command and option, generated from the typer app (tests/test_docs.py checks it).
cli-docs: $(STAMP)
	$(VENV)/bin/typer cli.py utils docs --name causalrm --title "CLI reference" --output docs/cli.md

# Mutation testing (issue 22): a benchmark, not part of `make test` (about an hour on 2 cores).
mutation: $(STAMP)
	nice -n 15 $(PY) benchmarks/mutation/run.py

clean:
	rm -rf $(DEMO) .pytest_cache site
