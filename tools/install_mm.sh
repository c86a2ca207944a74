#!/usr/bin/env bash
# Install the OpenMMLab stack used by detection/ and segmentation/:
# mmcv 2.1.0 with its compiled ops (built from PyPI's source release), mmengine, mmdet 3.3.0, mmsegmentation 1.2.2.
#
# Usage: bash tools/install_mm.sh            (run with the Python environment that already has torch)
#        bash tools/install_mm.sh --help     (this text; the script takes no other argument)
# Environment:
#   PYTHON            interpreter to install into (default: python)
#   FORCE_CUDA        1 builds the CUDA ops even when no GPU is visible (needs nvcc); 0 builds CPU ops only.
#                     Default: CUDA ops when torch sees a GPU, else CPU ops.
#   TORCH_CUDA_ARCH_LIST  GPU architectures for the CUDA build (default: the visible GPUs'), e.g. "8.0;9.0".
#   CUDA_HOME         the CUDA toolkit to compile with, when nvcc on PATH is not <CUDA_HOME>/bin/nvcc.
#   MAX_JOBS          parallel compile jobs (default: number of CPUs)
#   LOCALMAMBA_CACHE_DIR  cache root, shared with the compiled CPU kernels
#                     (default: ${XDG_CACHE_HOME:-~/.cache}/localmamba); built wheels go to wheels/ under it.
#
# Why a build: mmdet 3.3.0 and mmseg 1.2.2 require mmcv < 2.2, and PyPI has no mmcv 2.1.0 wheels for current torch,
# only its source. torch >= 2.14 headers need C++20, so the -std=c++14/-std=c++17 flags of mmcv's setup.py are raised.
# mmcv's setup.py and mmengine (to resolve 'mmdet::'/'mmseg::' base configs) import pkg_resources, which setuptools 81
# removed, so setuptools < 81 is installed. The wheel is cached per mmcv/torch/python/ops variant, so later runs
# install in seconds.
set -euo pipefail

if [[ $# -gt 0 ]]; then
    if [[ $# -eq 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
        sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"  # the comment block above
        exit 0
    fi
    echo "install_mm.sh: unexpected argument(s) $*: it takes none; settings come from environment variables" \
         "(bash tools/install_mm.sh --help)" >&2
    exit 2
fi

PYTHON=${PYTHON:-python}
MMCV_VERSION=2.1.0
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2
CACHE_ROOT=${LOCALMAMBA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/localmamba}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install_mm.sh: install torch first (pip install -e . installs it)" >&2
    exit 1
fi

read -r TORCH_VERSION PY_TAG CUDA_AVAILABLE TORCH_CUDA GPU_ARCHS < <("$PYTHON" - <<'EOF'
import sys, torch
archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
print(torch.__version__, f"cp{sys.version_info.major}{sys.version_info.minor}",
      int(torch.cuda.is_available()), torch.version.cuda or "none", ";".join(archs) or "all")
EOF
)
if [[ -z "${FORCE_CUDA:-}" ]]; then
    FORCE_CUDA=$CUDA_AVAILABLE
fi
if [[ "$FORCE_CUDA" == "1" ]]; then
    if [[ "$TORCH_CUDA" == "none" ]]; then
        echo "install_mm.sh: FORCE_CUDA=1 but this torch build has no CUDA" >&2
        exit 1
    fi
    # Without TORCH_CUDA_ARCH_LIST torch compiles for the visible GPUs (or its default list without one).
    ARCHS=${TORCH_CUDA_ARCH_LIST:-$GPU_ARCHS}
    VARIANT="cuda${TORCH_CUDA}_arch-${ARCHS//[^0-9a-zA-Z]/-}"
else
    VARIANT=cpu
fi
WHEEL_DIR="$CACHE_ROOT/wheels/mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION//+/_}_${PY_TAG}_${VARIANT}"

if compgen -G "$WHEEL_DIR/mmcv-${MMCV_VERSION}-*.whl" >/dev/null; then
    echo "install_mm.sh: reusing cached wheel in $WHEEL_DIR"
else
    echo "install_mm.sh: building mmcv ${MMCV_VERSION} (ops: ${VARIANT}) against torch ${TORCH_VERSION};" \
         "about 20 min of compilation on 2 free cores (CUDA ops: much longer)"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    (
        "$PYTHON" -m pip install --quiet --target "$WORK/buildtools" "setuptools>=64,<81" wheel ninja
        export PYTHONPATH="$WORK/buildtools${PYTHONPATH:+:$PYTHONPATH}"
        export PATH="$WORK/buildtools/bin:$PATH"
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
            "mmcv==${MMCV_VERSION}" -d "$WORK"
        tar -xzf "$WORK/mmcv-${MMCV_VERSION}.tar.gz" -C "$WORK"
        SRC="$WORK/mmcv-${MMCV_VERSION}"
        NEEDS_CXX20='import sys, torch; major, minor = map(int, torch.__version__.split(".")[:2]); '
        NEEDS_CXX20+='sys.exit((major, minor) < (2, 14))'
        if "$PYTHON" -c "$NEEDS_CXX20"; then
            sed -i -E 's/([-\/]std[=:])c\+\+1[47]/\1c++20/g' "$SRC/setup.py"
        fi
        # Python's compile flags with -g0 after them: no debug info, a faster build and a much smaller wheel.
        PY_CFLAGS=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_config_var('CFLAGS') or '')")
        CFLAGS="$PY_CFLAGS -g0 ${CFLAGS:-}" MAX_JOBS=${MAX_JOBS:-$(nproc)} MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA \
            "$PYTHON" -m pip wheel --no-deps --no-build-isolation "$SRC" -w "$WORK/dist"
    )
    mkdir -p "$WHEEL_DIR"
    WHEEL=$(basename "$WORK"/dist/mmcv-*.whl)
    cp "$WORK/dist/$WHEEL" "$WHEEL_DIR/.$WHEEL.part" && mv "$WHEEL_DIR/.$WHEEL.part" "$WHEEL_DIR/$WHEEL"
fi

"$PYTHON" -m pip install "$WHEEL_DIR"/mmcv-${MMCV_VERSION}-*.whl
"$PYTHON" -m pip install "setuptools<81" "mmengine>=0.10.3,<1" "mmdet==${MMDET_VERSION}" \
    "mmsegmentation==${MMSEG_VERSION}" pycocotools ftfy regex shapely scipy terminaltables prettytable
"$PYTHON" - <<'EOF'
import mmcv, mmdet, mmengine, mmseg, torch
from mmcv.ops import nms, RoIAlign
print(f"install_mm.sh: mmcv {mmcv.__version__} (ops ok), mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, torch {torch.__version__}")
EOF
