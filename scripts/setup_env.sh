#!/usr/bin/env bash
# Set up mmvim in a virtual environment inside the repository (.venv).
#
# Idempotent: every step first checks whether what it installs is already
# importable at the pinned version and skips it if so, so a second run takes
# seconds. The slow step on a fresh CPU machine is mmcv 2.1.0 with ops, which
# has no wheel for this torch and builds from source (~20 min on 2 cores);
# pip keeps the built wheel in its cache, so later environments reuse it.
#
# Environment knobs:
#   VENV=path            where the environment lives (default: <repo>/.venv)
#   PYTHON=python3       interpreter used to create it
#   MMVIM_EXTRAS=dev     extras of mmvim to install (e.g. "dev,cuda" on a GPU machine)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${MMVIM_EXTRAS:-dev}"

TORCH_PIN="2.13.0"
MMENGINE_PIN="0.10.7"
MMCV_PIN="2.1.0"
MMDET_PIN="3.3.0"
MMSEG_PIN="1.2.2"
OPENMIM_PIN="0.3.9"
SETUPTOOLS_RANGE="setuptools>=77,<82"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)

# True when `python -c CODE` succeeds inside the environment.
has() { "$PY" -c "$1" >/dev/null 2>&1; }

# Build tooling. setuptools<82 keeps pkg_resources, which the mmcv sdist needs
# to build and mmengine needs at run time to resolve mmseg::/mmdet:: configs.
if ! has "import setuptools, ninja, psutil, wheel; v=tuple(map(int, setuptools.__version__.split('.')[:2])); assert (77,0)<=v<(82,0)"; then
  log "installing build tooling ($SETUPTOOLS_RANGE, ninja, psutil, wheel)"
  "${PIP[@]}" "$SETUPTOOLS_RANGE" ninja psutil wheel
fi

# torch: keep whatever torch is already there (e.g. a user's CUDA build);
# on a bare machine pin the CPU build (an unpinned torch pulls GBs of CUDA).
if has "import torch"; then
  log "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed: keeping it"
else
  log "installing torch==$TORCH_PIN"
  "${PIP[@]}" "torch==$TORCH_PIN"
fi

if ! has "import mmengine; assert mmengine.__version__ == '$MMENGINE_PIN'"; then
  log "installing mmengine==$MMENGINE_PIN"
  "${PIP[@]}" "mmengine==$MMENGINE_PIN"
fi

# mmcv with compiled ops (nms, RoIAlign, ...) built against the installed torch.
if ! has "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_PIN'"; then
  log "installing mmcv==$MMCV_PIN with ops (builds from source when pip has no cached wheel: ~20 min on 2 cores)"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" --no-build-isolation "mmcv==$MMCV_PIN"
fi

if ! has "import mmdet, mmseg, ftfy, regex; assert mmdet.__version__ == '$MMDET_PIN' and mmseg.__version__ == '$MMSEG_PIN'"; then
  log "installing mmdet==$MMDET_PIN mmsegmentation==$MMSEG_PIN"
  "${PIP[@]}" "mmdet==$MMDET_PIN" "mmsegmentation==$MMSEG_PIN" ftfy regex
fi

# mmvim itself, editable. Its pins are already satisfied above, so this only
# adds the extras; --no-build-isolation keeps pip from fetching a build torch.
# This also compiles mmvim's C++ CPU scan (mmvim._ext, about a minute on 2
# cores) when a C++ compiler is present; without one mmvim still installs and
# runs the pure-PyTorch scan. Reinstalled when setup.py or the C++ sources
# change, or when a compiler has appeared since a build without one.
# editable_mode=compat puts the checkout on sys.path with a .pth line (as
# `setup.py develop` did) instead of setuptools' import hook, so that the
# link for mim below cannot hide the package.
STAMP="$VENV/.mmvim-installed-$EXTRAS"
CXX_NOW="$(command -v "${CXX:-c++}" 2>/dev/null || true)"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
need_install=0
# mmvim must import from outside the checkout (python -c from inside it would
# find ./mmvim even with no install) and be this checkout's.
installed_here() {
  (cd / && "$PY" -c "import os, sys, mmvim; sys.exit(os.path.realpath(mmvim.__file__) != os.path.realpath(sys.argv[1]))" "$ROOT/mmvim/__init__.py") >/dev/null 2>&1
}
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ] || [ "$ROOT/mmvim/config_names.py" -nt "$STAMP" ] || ! installed_here \
   || ! grep -qsxF "$(cd "$ROOT" && pwd -P)" "$SITE"/__editable__.mmvim-*.pth; then
  need_install=1
elif [ -n "$(find "$ROOT/mmvim/csrc" -newer "$STAMP" -print -quit 2>/dev/null)" ]; then
  need_install=1
elif grep -qx 'ext=0 cxx=' "$STAMP" 2>/dev/null && [ -n "$CXX_NOW" ] && [ "${MMVIM_NO_EXT:-0}" != 1 ]; then
  need_install=1
fi
if [ "$need_install" = 1 ]; then
  log "installing mmvim (editable) with extras [$EXTRAS], building its C++ CPU scan"
  "${PIP[@]}" --no-build-isolation --config-settings editable_mode=compat \
    -e "$ROOT[$EXTRAS]"
  if (cd "$ROOT" && has "import mmvim._ext"); then
    log "C++ CPU selective scan built (mmvim._ext)"
    echo "ext=1 cxx=$CXX_NOW" > "$STAMP"
  else
    # pip hides the build's output: build once more, in place, to show why
    (cd "$ROOT" && "$PY" setup.py -q build_ext --inplace 2>&1 | tail -n 15) || true
    log "WARNING: the C++ CPU selective scan (mmvim._ext) was not built (reason above); mmvim is installed and runs its pure-PyTorch scan on CPU"
    echo "ext=0 cxx=$CXX_NOW" > "$STAMP"
  fi
  # the same kernels as an onnxruntime custom-op library (docs/deploy.md)
  if [ -f "$ROOT/mmvim/libmmvim_ort_ops.so" ]; then
    log "onnxruntime custom-op library built (mmvim/libmmvim_ort_ops.so: runs ONNX files exported with --scan-op mmvim)"
  else
    log "NOTE: the onnxruntime custom-op library (mmvim/libmmvim_ort_ops.so) was not built; ONNX export and onnxruntime work with the default standard-operator scan, files exported with --scan-op mmvim need the library"
  fi
fi

# `mim` finds an installed package's configs, tools and model-index.yml in
# <site-packages>/mmvim/.mim; an editable install has no folder there, so
# link it to the checkout's mmvim/.mim (setup.py makes that one). The folder
# has no __init__.py: with the checkout on sys.path (compat mode above)
# Python imports the checkout's package and never this namespace portion.
# pip does not know the link: `pip uninstall mmvim` leaves it behind.
if [ "$(readlink "$SITE/mmvim/.mim" 2>/dev/null)" != "$ROOT/mmvim/.mim" ]; then
  mkdir -p "$SITE/mmvim"
  ln -sfn "$ROOT/mmvim/.mim" "$SITE/mmvim/.mim"
fi
if ! installed_here; then
  rm -rf "$SITE/mmvim"
  log "ERROR: after linking $SITE/mmvim/.mim for mim, Python no longer imports this checkout's mmvim; link removed. Report this with: $PY -c 'import mmvim; print(mmvim.__file__)'"
  exit 1
fi

# openmim (`mim search / train / test mmvim`) with the dev and mim extras,
# WITHOUT its dependencies: its opendatalab -> openxlab chain would downgrade
# setuptools to 60.2 (and requests, rich); the dependencies mim really
# imports come with the extras (see MIM_REQUIRES in setup.py).
case ",$EXTRAS," in
  *,dev,*|*,mim,*)
    if ! has "import importlib.metadata as m; assert m.version('openmim') == '$OPENMIM_PIN'"; then
      log "installing openmim==$OPENMIM_PIN without its dependencies (setup.py: MIM_REQUIRES)"
      "${PIP[@]}" --no-deps "openmim==$OPENMIM_PIN"
    fi
    ;;
esac

log "environment ready: $("$PY" -c 'import torch, mmcv, mmdet, mmseg, mmengine; print(f"torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")')"
