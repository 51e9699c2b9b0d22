#!/usr/bin/env bash
# Prepare .gpu_carry/ for a GPU machine that cannot reach PyPI (run here, where pip works):
#   wheels/   the packages tunesmith's GPU check needs that such a machine's image lacks, at the
#             versions this venv has (so the GPU runs what CI tests), for CPython 3.12 x86-64;
#   smollm2/  the embedded SmolLM2-135M-Instruct's config and tokenizer, no weights (its GGUF
#             is 98 MB, over what one device call carries; gpu_check builds random weights).
# gpu_check.sh installs the wheels offline into a private folder. See docs/gpu.md.
#
#   bash benchmarks/gpu_carry.sh            # then: run(..., carry=[".gpu_carry"])
#   PACKAGES="pyarrow" bash benchmarks/gpu_carry.sh   # carry more (names; versions from here)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
out="${TUNESMITH_GPU_CARRY:-$repo/.gpu_carry}"
limit_mib=60  # a device call carries 64 MiB with the working tree (~2 MiB)
# Not in the 'cuda' image's package list (docs/gpu.md); peft and typing-extensions are pinned
# to this venv's versions because tunesmith's tuners and pydantic need recent ones.
default="bitsandbytes trl datasets dill multiprocess gguf pydantic pydantic-core annotated-types
typing-inspection typing-extensions platformdirs datasketch rouge-score nltk defusedxml peft"
names="$default ${PACKAGES:-}"
if "$py" -c "import liger_kernel" 2>/dev/null; then names="$names liger-kernel"; fi

rm -rf "$out/wheels" && mkdir -p "$out/wheels"
pins=$("$py" - $names <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"gpu_carry.sh: {name} is not installed in this venv; install it first")
EOF
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for pin in $pins; do
    # A package published only as source (rouge-score) is pure Python: build its wheel here.
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$out/wheels" "$pin" 2>/dev/null \
        || "$py" -m pip wheel -q --no-deps -w "$out/wheels" "$pin"
done
"$py" "$repo/benchmarks/gpu_models.py" "$out" >/dev/null
size_mib=$(du -sm "$out" | cut -f1)
echo "gpu_carry.sh: $(ls "$out/wheels" | wc -l) wheels + smollm2 tokenizer in $out: ${size_mib} MiB"
ls "$out/wheels"
if (( size_mib > limit_mib )); then
    echo "gpu_carry.sh: over ${limit_mib} MiB; carry fewer packages" >&2
    exit 1
fi
