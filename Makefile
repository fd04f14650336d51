# kuryr developer commands. See README.md.
VENV ?= .venv
PYTHON ?= python3
KURYR := $(VENV)/bin/kuryr

.PHONY: setup demo demo-down test lint unit image image-save clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,openstack]' 2>&1 | grep -v 'is ignored' || true
	$(VENV)/bin/python -c 'import kuryr, pytest, mypy' 
	touch $@

## setup: a virtualenv in .venv with kuryr (editable), the test tools and the openstack client
setup: $(VENV)/.installed

## demo: the main job: local Neutron cloud up; two sandboxes, Docker and podman containers on
##       one Neutron network, pinging (DEMO_WITH=docker,podman|none; default: those installed)
demo: setup
	$(KURYR) cloud up
	$(KURYR) demo up $(if $(DEMO_WITH),--with $(DEMO_WITH))

demo-down: setup
	$(KURYR) demo down

## lint: ruff, mypy (strict on src/) and the import-linter layer contract
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## test: lint, then every test (unit, linux, cloud; brings the local cloud up if needed)
test: lint
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

## unit: the tests that need neither root nor a cloud
unit: setup
	$(VENV)/bin/pytest -ra tests/unit

## image: the container image of the controller and daemon, localhost/kuryr:<version>, built
##        with podman and no registry (deploy/image/build.sh; base cached in
##        /var/lib/kuryr/image-cache; needs podman and mmdebstrap)
image: setup
	PYTHON=$(VENV)/bin/python deploy/image/build.sh

## image-save: the image and a docker archive of it, dist/kuryr-image-<version>.tar, to load
##             into a cluster's nodes or push to its registry (IMAGE_FORMAT=oci-archive)
IMAGE_FORMAT ?= docker-archive
image-save: setup
	PYTHON=$(VENV)/bin/python deploy/image/build.sh --format $(IMAGE_FORMAT) --save \
	    dist/kuryr-image-$$($(VENV)/bin/python -c 'import kuryr; print(kuryr.__version__)').tar

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
