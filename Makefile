# The README's commands: `make demo` and `make test` each work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.core-installed
TRAIN := $(VENV)/.train-installed
DIGITS := examples/digits
OUT := $(DIGITS)/out

.PHONY: venv demo test test-fast test-slow ops bench clean

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# torch (CPU wheel) and scikit-learn: only for training examples and the slow test tier.
$(TRAIN): $(CORE)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,train]'
	touch $@

venv: $(CORE)

# The native AmosGate kernel; without a compiler or headers everything still runs through the function form.
ops: $(CORE)
	@$(MAKE) --no-print-directory -C custom_ops || echo "notice: native op not built; converted models run through the function form"

demo: $(CORE) ops
	@mkdir -p $(OUT)
	$(BIN)/amos-onnx convert $(DIGITS)/digits_cnn.onnx $(OUT)/digits_spiking.onnx --calib $(DIGITS)/digits_train.npz
	$(BIN)/amos-onnx validate $(DIGITS)/digits_cnn.onnx $(OUT)/digits_spiking.onnx --data $(DIGITS)/digits_test.npz

test-fast: $(CORE) ops
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(TRAIN) ops
	$(BIN)/python -m pytest -q -m slow

test: test-fast test-slow

bench: $(TRAIN) ops
	$(BIN)/python benchmarks/digits_activations.py

clean:
	rm -rf $(VENV) $(OUT) custom_ops/build amos_onnx/_native
