# nnunet-dinomix developer commands. `make setup` once, then `make demo` or `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup test test-unit test-fast demo benchmark clean-venv

setup: $(VENV)/.installed

# PyPI's torch (a CUDA build; it runs on CPU too) is what `pip install nnunetv2` gives every user, and the only
# torch for which torchvision, and so timm (DINOv3), imports. The local CPU-only torch wheel would save ~4 GB but
# breaks `import timm`. See README "Installation".
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

test-fast: setup
	$(PY) -m pytest -m "not e2e"

demo: setup
	$(VENV)/bin/dinomix_demo

clean-venv:
	rm -rf $(VENV)
