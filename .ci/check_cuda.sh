#!/usr/bin/env bash
# Compile-check every CUDA source for sm_80 and sm_90 with plain nvcc (no torch headers needed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in csrc/cuda/*.cu; do
  for arch in sm_80 sm_90; do
    nvcc -std=c++17 -O3 -arch="$arch" -I csrc -c "$src" -o "$out/$(basename "$src" .cu).$arch.o"
    echo "nvcc $arch: $src ok"
  done
done
