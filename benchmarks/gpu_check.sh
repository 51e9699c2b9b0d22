#!/usr/bin/env bash
# The GPU check in one command: sets up imports from what this machine has, then runs
# benchmarks/gpu_check.py with the same arguments (see docs/gpu.md).
#
#   bash benchmarks/gpu_check.sh --out OUT            # on a CUDA machine, < 8 minutes
#   bash benchmarks/gpu_check.sh --out OUT --dry-run  # anywhere: every step up to the first CUDA call
#
# Nothing is downloaded. The Python used is $PYTHON, else the repository's .venv, else python3.
# Packages that machine lacks can come along as wheels in .gpu_carry/wheels (made by
# benchmarks/gpu_carry.sh on a machine with PyPI): they are installed offline into a private
# folder put first on the import path, so the machine's own packages are left as they are.
# tunesmith itself is imported from this checkout's src/ (no install needed).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="${TUNESMITH_GPU_CARRY:-$repo/.gpu_carry}"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py="$(command -v python3)"
fi

site=""
if compgen -G "$carry/wheels/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/tunesmith-gpu-site"
    if [[ ! -f "$site/.installed" ]]; then
        echo "gpu_check.sh: installing $(ls "$carry"/wheels/*.whl | wc -l) carried wheels into $site"
        # A wheel for another Python fails the whole install: go on without them, and the
        # check's package report says what is missing.
        if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$carry"/wheels/*.whl; then
            touch "$site/.installed"
        else
            echo "gpu_check.sh: the carried wheels did not install; going on without them" >&2
            site=""
        fi
    fi
fi

export PYTHONPATH="$repo/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export TUNESMITH_GPU_CARRY="$carry" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
cd "$repo"
echo "gpu_check.sh: python $("$py" -c 'import sys; print(sys.version.split()[0])') at $py"
exec "$py" benchmarks/gpu_check.py "$@"
