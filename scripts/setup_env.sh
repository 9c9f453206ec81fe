#!/usr/bin/env bash
# Idempotent set-up of everything streamdp needs, on a machine with nothing on it.
#
# Two layers, because the full stack is ~8 GB and a copy per clone fills the disk:
#   1. a heavy "base" virtualenv in a per-user cache, keyed by a hash of the pinned requirements
#      and this script: a fresh clone with unchanged pins reuses it, any change builds a new one;
#   2. a light per-checkout `.venv` that sees the base through a .pth file and holds only the
#      editable install of this checkout (so two clones never import each other's code).
# A machine whose Python already has a CUDA build of torch (a robot's onboard GPU) keeps it: the
# base then inherits system site-packages and the torch lines of the pin set are skipped.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${STREAMDP_PYTHON:-$(command -v python3.11 || command -v python3)}
cache=${STREAMDP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamdp}
log() { printf '[setup] %s\n' "$*" >&2; }

# --- system libraries: ffmpeg (torchcodec video decoding), EGL/OSMesa (MuJoCo headless) -------
need_apt=()
ldconfig -p | grep -q 'libavcodec\.so' || need_apt+=(ffmpeg)
ldconfig -p | grep -q 'libEGL\.so' || need_apt+=(libegl1)
ldconfig -p | grep -q 'libOSMesa\.so' || need_apt+=(libosmesa6)
ldconfig -p | grep -q 'libGL\.so' || need_apt+=(libgl1)
if ((${#need_apt[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing system packages: ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "WARNING: missing system packages (${need_apt[*]}); install them with your package manager"
  fi
fi

# --- does this Python already bring a CUDA torch? -----------------------------------------------
host_cuda=0
if "$py" -c 'import torch,sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' 2>/dev/null; then
  host_cuda=1
fi


# --- layer 1: the cached base environment (built once per pin set, under a lock) ----------------
base=$(bash scripts/build_base_env.sh "$py" "$host_cuda" "$cache")

# --- layer 2: the per-checkout venv with this checkout installed in editable mode --------------
if [[ ! -f .venv/.streamdp-base ]] || [[ $(cat .venv/.streamdp-base) != "$base" ]] || [[ ! -x .venv/bin/python ]]; then
  log "creating .venv on top of $base"
  rm -rf .venv
  # --without-pip: the base's pinned pip/setuptools must not be shadowed by ensurepip's old ones.
  "$base/bin/python" -m venv --without-pip .venv
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path) so the base's own .pth files are processed too.
  echo "import site; site.addsitedir('$base_site')" >"$site/zz_streamdp_base.pth"
  echo "$base" >.venv/.streamdp-base
fi
stamp=.venv/.streamdp-installed
if [[ ! -f $stamp ]] || [[ setup.py -nt $stamp ]] || [[ setup.cfg -nt $stamp ]] || [[ package.xml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  touch "$stamp"
fi
log "ready: $(.venv/bin/python -c 'import torch, streamdp.policy; print("torch", torch.__version__)')"
