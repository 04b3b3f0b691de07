#!/usr/bin/env bash
# The wheelhouse that scripts/gpu_check.sh installs from on a GPU machine without network: built here,
# from this checkout's .venv (`make setup`), carried there in the working tree's ignored .gpu-wheels/.
#
#   scripts/make_gpu_wheelhouse.sh [DIR] [--all]      (DIR default .gpu-wheels; ~25 MiB for the H200)
#
#   DIR/*.whl        retool's runtime closure (hf, train and dev extras) at the versions this .venv
#                    runs, as CPython 3.12 x86-64 wheels (GPU_PYTHON=3.11 etc. for another Python),
#                    less torch and less what the GPU machine's image already has: by default the
#                    packages of this workplace's `nvidia-h200` image (H200_HAS below); --all keeps
#                    those too except torch, the CUDA stack and the big scientific wheels (numpy,
#                    scipy, pandas, pyarrow, matplotlib, tensorboard: ~48 MiB, for a bare PyTorch box)
#   DIR/tokenizer/   the SmolLM2 tokenizer (49,152 tokens, its chat template), taken from the embedded
#                    model this machine already converted: no download
#   DIR/sys/         bwrap, prlimit and the shared libraries they and pyseccomp load (libseccomp...),
#                    copied from this machine, for a GPU machine without them (installed only if missing)
#
# gpu_check.sh installs only the wheels of distributions the GPU's Python lacks, so an existing
# transformers or accelerate there is kept. The working tree and the carried folder together must stay
# under the device tool's 64 MiB: this prints the folder's size.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.gpu-wheels
PROFILE=h200
for arg in "$@"; do
    case "$arg" in
        --all) PROFILE=all ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) DIR="$arg" ;;
    esac
done
PY=${PYTHON:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON:-3.12}
[ -x "$PY" ] || { echo "no $PY: run 'make setup' first (the closure is read from its installed packages)" >&2; exit 1; }

# what the nvidia-h200 image holds of retool's closure (read off its package list, 2026-11)
H200_HAS="absl-py accelerate annotated-doc anyio certifi charset-normalizer click contourpy cycler filelock
fonttools fsspec grpcio h11 hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 kiwisolver markdown
markdown-it-py markupsafe matplotlib mdurl mpmath networkx numpy packaging pandas peft pillow pluggy protobuf
psutil pyarrow pygments pyparsing pytest pytest-timeout python-dateutil pyyaml regex requests rich safetensors
scipy setuptools shellingham sympy tensorboard tensorboard-data-server tokenizers torch tqdm transformers typer
typing-extensions typing-inspection urllib3 werkzeug xxhash"
# never carried: torch and what comes with it, the biggest scientific wheels, docker (its tests need an engine)
NEVER="torch triton nvidia-* numpy scipy pandas pyarrow matplotlib contourpy kiwisolver fonttools pillow cycler
pyparsing tensorboard tensorboard-data-server grpcio protobuf absl-py markdown werkzeug sympy mpmath networkx
setuptools jinja2 markupsafe filelock fsspec typing-extensions tzdata docker"
SKIP="$NEVER"
[ "$PROFILE" = h200 ] && SKIP="$NEVER $H200_HAS"

rm -rf "$DIR"
mkdir -p "$DIR/sys"
REQS="$DIR/requirements.txt"
"$PY" - "$SKIP" "$GPU_PYTHON" >"$REQS" <<'EOF'
import fnmatch, importlib.metadata as md, re, sys
from packaging.requirements import Requirement

skip = sys.argv[1].split()
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
env = {"python_version": sys.argv[2], "python_full_version": sys.argv[2] + ".0", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix"}
seen = {}

def walk(name, extras):
    dist = md.distribution(name)
    key = canon(dist.metadata["Name"])
    if key in seen and extras <= seen[key][1]:
        return
    seen[key] = (dist.version, seen.get(key, (None, set()))[1] | extras)
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            continue
        walk(req.name, set(req.extras))

walk("retool", {"hf", "train", "dev"})
for key, (version, _) in sorted(seen.items()):
    if key != "retool" and not any(fnmatch.fnmatch(key, pattern) for pattern in skip):
        print(f"{key}=={version.split('+')[0]}")
EOF
echo "==> $(wc -l <"$REQS") wheels for CPython $GPU_PYTHON ($PROFILE profile)"
tags=()
for t in manylinux_2_{17,24,26,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64 any; do
    tags+=(--platform "$t")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    "${tags[@]}" -d "$DIR" -r "$REQS"

echo "==> the SmolLM2 tokenizer"
"$PY" -c "import sys; from retool.models import load_tokenizer; load_tokenizer('smollm2-135m-instruct').save_pretrained(sys.argv[1])" \
    "$DIR/tokenizer" >/dev/null

echo "==> bwrap, prlimit and their libraries"
for tool in bwrap prlimit; do
    path=$(command -v "$tool") || { echo "   (no $tool here: not carried)"; continue; }
    cp -L "$path" "$DIR/sys/$tool"
    ldd "$path" | awk '/=> \//{print $3}' | while read -r lib; do
        case "$(basename "$lib")" in libc.so*|libm.so*|ld-linux*) ;; *) cp -L "$lib" "$DIR/sys/" ;; esac
    done
done
seccomp=$(ldconfig -p | awk '/libseccomp\.so\.2 .*x86-64/{print $NF; exit}')
[ -n "$seccomp" ] && cp -L "$seccomp" "$DIR/sys/libseccomp.so.2"

echo "==> $DIR: $(du -sh "$DIR" | cut -f1) ($(ls "$DIR"/*.whl | wc -l) wheels); carry it: run(carry=[\"$DIR\"])"
