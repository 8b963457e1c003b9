#!/usr/bin/env bash
# The wheels a bare GPU machine without network lacks to run this package (the GPU check, training), downloaded
# here, for its Python (default 3.12) on manylinux x86-64.
#
#   scripts/gpu_wheels.sh DIR [PYTHON_VERSION]        e.g. scripts/gpu_wheels.sh .whl
#
# The machine is assumed to have PRESENT below (torch, torchvision, numpy, OpenCV, scikit-image, ...: the image of
# the GPU machines this project borrows, see docs/gpu.md); WHEELS are fetched, at the versions installed in the
# Python that runs this script (the tested ones) where it has them. basicsr 1.4.2 is published as a source archive
# only: it is built here into a pure-Python wheel (its setup.py imports torch, so this Python needs torch).
# The script prints the one line that installs the set on the machine, and the size of the folder (what travels to
# the machine must stay under 64 MiB, the working tree included).
set -euo pipefail

DIR=${1:?usage: scripts/gpu_wheels.sh DIR [PYTHON_VERSION]}
PYVER=${2:-3.12}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

# what the package imports, and what those need, that the GPU image lacks (tests/test_gpu_check.py checks the lists)
WHEELS=(basicsr lmdb open_clip_torch ftfy wcwidth mmengine addict yapf platformdirs termcolor)
# what the GPU image already has, of what the package and the wheels above need
PRESENT=(torch torchvision numpy opencv-python opencv-python-headless scikit-image scipy pillow pyyaml matplotlib tqdm regex timm huggingface-hub safetensors rich requests einops tensorboard packaging setuptools)

version() {  # the installed version of a distribution in $PY, or nothing
    "$PY" -c "import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass" "$1"
}

mkdir -p "$DIR"
BASICSR=$(version basicsr)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation "basicsr==${BASICSR:-1.4.2}" -w "$DIR"

SPECS=()
for name in "${WHEELS[@]}"; do
    [ "$name" = basicsr ] && continue
    v=$(version "$name")
    SPECS+=("$name${v:+==$v}")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DIR" "${SPECS[@]}"

echo "wheels in $DIR ($(du -sh "$DIR" | cut -f1)):"
ls "$DIR"
echo
echo "On the machine, from the repository root (the folder carried as $DIR):"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $DIR/*.whl && export PYTHONPATH=/tmp/site:\$PWD"
