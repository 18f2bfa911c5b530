# The two commands: `make demo` runs regcred end to end on a local control plane,
# `make test` runs the whole test suite (what .ci/run runs).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo lint typecheck unit controlplane node-deps clean manifests bench compat helm image

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check operator tests scripts bench

# mypy --strict on operator/regcred, tests/support and scripts (settings in pyproject.toml, [tool.mypy]);
# then the test modules as strictly, except that tests and fixtures may go unannotated and a
# helper may return the untyped client's or json's Any (docs/design.md). Their own cache: other
# flags would make each run recheck the other's modules.
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls \
		--no-warn-return-any --cache-dir .mypy_cache/tests tests/unit tests/integration

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

# Debian packages of the test node and registry (containerd, runc, CNI plugins,
# docker-registry, busybox-static) and of the image build (mmdebstrap, buildah): installed
# when missing if root, else named.
node-deps:
	python3 scripts/nodedeps.py

test: lint typecheck node-deps
	$(PY) -m pytest tests -q

controlplane: $(VENV)/.installed
	$(PY) scripts/controlplane.py build

# regcred's image from the Dockerfile, daemonless, into ~/.cache/regcred/image (docs/image.md).
image:
	python3 scripts/image.py build

# helm from $PATH, else built from the helm.sh/helm/v4 Go module into ~/.cache/regcred/helm.
helm: $(VENV)/.installed
	$(PY) scripts/helm.py path

# manifests/ and the chart's crds/ rendered from charts/regcred (tests fail when they differ).
manifests: $(VENV)/.installed
	$(PY) scripts/render_manifests.py

# The integration suite on the oldest supported Kubernetes and on the default one;
# COMPAT_ARGS go to pytest, e.g. make compat COMPAT_ARGS='-m "not node"'.
compat: $(VENV)/.installed
	$(PY) scripts/compat.py -- $(COMPAT_ARGS)

demo: $(VENV)/.installed node-deps
	$(PY) scripts/demo.py

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info operator/*.egg-info
