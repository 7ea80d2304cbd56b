#!/usr/bin/env bash
# Lay out a CUDA 13.0 toolkit from NVIDIA's pip wheels, enough to build the worker with
# `--features cuda` on a machine with no GPU and no system CUDA: nvcc (candle-kernels compiles its
# .cu files to PTX and a static lib with it; cudarc reads the CUDA version from `nvcc --version`),
# the headers those files include (runtime, crt, CCCL for cub/thrust/cuda::std), and the libraries
# candle asks cudarc to link (cudart, cublas, cublasLt, curand, nvrtc, and the driver's libcuda).
# Cached under $BACKLESS_CACHE (default ~/.cache/backless); prints `export` lines:
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo build --release -p backless-worker --features cuda --bin worker
#
# CUDA_COMPUTE_CAP (default 90, an H100) picks the GPU the kernels are built for, since there is no
# nvidia-smi to ask. Running the binary needs an NVIDIA driver (libcuda.so.1, 580 or newer for 13.0)
# and the toolkit's lib/ on LD_LIBRARY_PATH.
set -euo pipefail

log() { printf '%s\n' "$*" >&2; }

# 13.0 rather than the newest 13.x: nvcc's PTX needs a driver at least as new as the toolkit, so the
# oldest 13 asks the least of the GPU machine. Not 12.x: the -cu12 nvcc wheels ship ptxas and nvvm
# but no nvcc. cudarc 0.19 knows CUDA up to 13.4.
packages=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
cache="${BACKLESS_CACHE:-$HOME/.cache/backless}"
root="$cache/cuda-13.0"
wheels="$cache/cuda-wheels"

if [ ! -e "$root/.complete" ]; then
    log "laying out CUDA 13.0 from pip wheels in $root (about 700 MB of downloads)"
    mkdir -p "$wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "${packages[@]}" >&2
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for package in "${packages[@]}"; do
        # Wheel file names spell the package with underscores: nvidia_cuda_nvcc-13.0.88-py3-...whl
        name="${package%%==*}"
        wheel=$(ls "$wheels/${name//-/_}-${package##*==}-"*.whl)
        python3 -m zipfile -e "$wheel" "$root.tmp" >&2
    done
    # Every CUDA 13 wheel unpacks into nvidia/cu13/, already shaped like a CUDA root
    # (bin/nvcc, nvvm/bin/cicc, include/, lib/) and nvcc.profile finds its parts relative to bin/.
    mv "$root.tmp/nvidia/cu13" "$root.tmp/root"
    (
        cd "$root.tmp/root"
        # zipfile drops the executable bits.
        find bin nvvm/bin -type f ! -name nvcc.profile -exec chmod +x {} +
        # nvcc.profile adds -L lib64; the wheels ship only versioned sonames, the linker wants -lNAME.
        ln -s lib lib64
        for lib in cudart cublas cublasLt curand nvrtc; do
            ln -s "$(basename lib/lib$lib.so.*[0-9])" "lib/lib$lib.so"
        done
    )
    # libcuda.so comes with the driver, not with any wheel; cudarc links it (candle turns on its
    # dynamic-linking), so build a link-time stub like the toolkit's own lib/stubs/libcuda.so: every
    # driver function cuda.h declares, each returning CUDA_ERROR_STUB_LIBRARY (34). It is named
    # libcuda.so (not .so.1) and kept off LD_LIBRARY_PATH, so at run time the driver's library is used.
    mkdir -p "$root.tmp/root/lib/stubs"
    printf '#define __CUDA_API_VERSION_INTERNAL 1\n#include <cuda.h>\n' |
        gcc -E -P -x c -I "$root.tmp/root/include" - | tr '\n' ' ' |
        grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | grep -oE 'cu[A-Za-z0-9_]+' | sort -u |
        sed 's/.*/int &(void) { return 34; }/' |
        gcc -shared -fPIC -x c -o "$root.tmp/root/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 -
    rm -rf "$root"
    mv "$root.tmp/root" "$root"
    rm -rf "$root.tmp"
    touch "$root/.complete"
fi

# cudaforge (candle-kernels) finds nvcc on PATH or under CUDA_HOME; cudarc takes its link paths
# from CUDA_HOME / CUDA_PATH / CUDA_ROOT.
printf 'export %s=%q\n' \
    PATH "$root/bin:$PATH" \
    CUDA_HOME "$root" \
    CUDA_PATH "$root" \
    CUDA_ROOT "$root" \
    LD_LIBRARY_PATH "$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    CUDA_COMPUTE_CAP "${CUDA_COMPUTE_CAP:-90}"
