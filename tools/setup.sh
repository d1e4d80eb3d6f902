#!/usr/bin/env bash
# One-time set-up of a development environment in .venv on a fresh machine (Debian, Python 3.11).
# Environment-specific steps (CPU torch wheel, torchvision shim, Debian Fashion-MNIST) live HERE,
# never in the library.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || $PY -m venv .venv
PIP=".venv/bin/python -m pip"
C="-c tools/constraints.txt"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
$PIP install -q $C torchvision==0.28.0 --no-deps
$PIP install -q $C -e '.[dev]'
# torchvision shim, only where its compiled ops cannot load (see tools/tv_shim.py)
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp tools/tv_shim.py "$SITE/_ltat_tv_shim.py"
echo "import _ltat_tv_shim" > "$SITE/_ltat_tv_shim.pth"
.venv/bin/python -c "import torchvision, fastai.vision.all" 
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true   # this venv's kernel, for jupyter/nbconvert
# Fashion-MNIST (the only real image data reachable here) from Debian, when apt is usable
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
   echo "note: could not install dataset-fashion-mnist; 'ltat demo' needs it (or --path)"
fi
echo "environment ready: .venv"
