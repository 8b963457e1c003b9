# make demo   fresh clone -> venv, demo LMDBs, trained demo model, PSNR/SSIM table   (METHOD=symunet by default)
# make test   the test suite (CI runs this through .ci/run)
# make test-fast   the suite without the end-to-end (slow-marked) tests: the inner loop, a few minutes
# make install   only create/refresh the venv
PYTHON ?= python3
VENV ?= .venv
METHOD ?= symunet
PY := $(VENV)/bin/python
STAMP := $(VENV)/.allinone-installed
# torch first, then basicsr without build isolation (its setup.py imports torch), then this package.
TORCH_PKGS ?= torch torchvision

.PHONY: install demo demo-data test test-fast clean-demo

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install $(TORCH_PKGS)
	$(PY) -m pip install --no-build-isolation 'basicsr>=1.4.2,<1.5'
	$(PY) -m pip install --no-build-isolation -e '.[test]'
	touch $(STAMP)

demo-data: $(STAMP)
	$(PY) datasets_prep/make_demo_data.py --out datasets/demo

demo: demo-data
	$(PY) -m allinone_basicsr.train -opt options/demo/train_$(METHOD)_demo.yml
	$(PY) -m allinone_basicsr.test -opt options/demo/test_$(METHOD)_demo.yml

test: $(STAMP)
	$(PY) -m pytest tests -q

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m 'not slow'

clean-demo:
	rm -rf datasets/demo experiments/*_demo* results/*_demo*
