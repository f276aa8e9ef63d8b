# Two commands on a fresh machine: `make demo` and `make test` (TensorFlow; JAX is installed too,
# for the tests that save on one backend and load on the other, and the JAX distribution test).
# Each creates or refreshes .venv (re-installing only when pyproject.toml changes), then runs.
# `make test-jax` / `make test-torch` run the suite on the other Keras backends, each in its own
# venv without TensorFlow (so nothing there can lean on it); see README "Backends". CI (.ci/run)
# runs all three; PyTorch only where its CPU wheel lies in /opt/wheels (see .venv-% below).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow
# The JAX run in CI: the modules that exercise what differs per backend (layers, models, saving,
# generation, native export + validation, distribution, runtime); `make test-jax JAX_TESTS=tests`
# runs everything (~22 min on 2 shared cores; TensorFlow-only tests skip themselves).
JAX_TESTS ?= tests/test_backends.py tests/test_distributed_jax.py tests/test_layers_numerics.py \
	tests/test_layers_saving.py tests/test_layers_validation.py tests/test_layers_training.py \
	tests/test_masks.py tests/test_models.py tests/test_presets.py tests/test_native_layers.py \
	tests/test_native_cache.py tests/test_decoding.py tests/test_validate.py tests/test_runtime.py \
	tests/test_visualize.py tests/test_bad_input.py tests/test_training.py tests/test_precision.py \
	tests/test_modern_layers.py tests/test_lora_quantize.py tests/test_native_projections.py
PYTEST_FLAGS ?= -q -n 2 --dist loadfile

.PHONY: venv demo test test-slow test-jax test-torch test-runtime bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) (TensorFlow and friends: a few minutes the first time) ..."
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[tensorflow,jax,tracing,export,deploy,examples,dev,bench]'
	touch $(STAMP)

# A venv per other backend: Keras + that backend + export + examples (plots) + dev; no TensorFlow.
# PyTorch: when the CPU wheel lies in /opt/wheels (pip's find-links on the CI machines), it is
# installed first, so that the [torch] extra (torch>=2.6) is already met and pip does not fetch
# PyPI's default build (~3 GB of CUDA libraries); elsewhere the extra installs PyPI's torch.
# The PyTorch venv has JAX too (151 MB, no TensorFlow): the test that saves a `.keras` file on
# PyTorch and loads it on another backend needs a second one.
VENV_EXTRAS_jax := jax
VENV_EXTRAS_torch := torch,jax
TORCH_CPU_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
.venv-%/.installed: pyproject.toml
	test -x .venv-$*/bin/python || $(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	$(if $(and $(filter torch,$*),$(TORCH_CPU_WHEEL)),.venv-$*/bin/python -m pip install --quiet '$(TORCH_CPU_WHEEL)')
	.venv-$*/bin/python -m pip install --quiet -e '.[$(VENV_EXTRAS_$*),export,examples,dev]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS)

test-jax: .venv-jax/.installed
	KERAS_BACKEND=jax .venv-jax/bin/python -m pytest $(PYTEST_FLAGS) $(JAX_TESTS)

# The whole suite on PyTorch (5.0 min on 2 cores, 11.3 min under heavy load from other jobs;
# TensorFlow-only tests skip themselves).
TORCH_TESTS ?= tests
test-torch: .venv-torch/.installed
	KERAS_BACKEND=torch .venv-torch/bin/python -m pytest $(PYTEST_FLAGS) $(TORCH_TESTS)

# The [runtime] install (numpy + onnxruntime only) in a fresh venv, serving a folder written here.
test-runtime: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_runtime_install.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .venv-jax .venv-torch build dist *.egg-info .pytest_cache artifacts
