#!/usr/bin/env bash
# Downloads into .whl/ (repo root, git-ignored) the Python 3.12 x86-64 wheels that the H200
# machine's image lacks (/work/.library/device/KINDS.md) and this package imports: the data
# stack (grain, tensorflow-datasets, array_record and their needs), ml-collections and
# tensorboardX. Everything else (jax 0.11 + CUDA plugin, flax, optax, orbax, numpy, scipy,
# pillow, absl, etils, protobuf, pyarrow, psutil, ...) is there already. Versions: the ones
# this repo is tested with here. benchmarks/gpu/run.sh installs them with --no-deps.
#
#   bash benchmarks/gpu/wheels.sh          # prints the total size; run once per checkout
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}

# Wheels (not sdists) for the device's Python: no compiler there, no network.
WHEELS=(
  grain==0.2.18 portpicker==1.6.0                       # grain (portpicker: its prefetch)
  tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1
  simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2   # tfds' imports
  ml-collections==1.1.0 tensorboardX==2.6.5
)
# promise (imported by tfds' download manager) exists only as an sdist: it is pure Python,
# so a wheel built here runs there.
SDIST_ONLY=(promise==2.3)
# googleapis-common-protos' generated code needs protobuf >= 6.33.5 at run time; run.sh
# installs this one only where the image's protobuf is older.
PROTOBUF=protobuf==7.36.2

git check-ignore -q .whl || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir -p .whl/protobuf
PLATFORMS=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
download() {  # DIR SPEC...; pip's notes on unused local index folders filtered out
  local dir=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$dir" "$@" 2> >(grep -v "is ignored" >&2)
}
download .whl "${WHEELS[@]}"
download .whl/protobuf "$PROTOBUF"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "${SDIST_ONLY[@]}" 2>/dev/null ||
  "$PY" -m pip wheel -q --no-deps -w .whl "${SDIST_ONLY[@]}"
(cd .whl && ls -1 ./*.whl protobuf/*.whl)
echo "total: $(du -sh .whl | cut -f1) in $(find .whl -type f -name '*.whl' | wc -l) wheels" \
  "(the device's 64 MiB transfer limit holds them and the repo: $(git ls-files -z | du -ch \
  --files0-from=- | tail -1 | cut -f1) tracked)"
