# Shorthands for tasks.py, which needs only Python (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)

.PHONY: test demo setup lint
test:
	$(PYTHON) tasks.py test
demo:
	$(PYTHON) tasks.py demo
setup:
	$(PYTHON) tasks.py setup
lint: setup
	.venv/bin/ruff check avatar_lightning datamodules callbacks tests benchmarks tasks.py
