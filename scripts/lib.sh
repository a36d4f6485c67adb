# shellcheck shell=bash
# Sourced by scripts/run_shapes.sh and scripts/test.sh (and so run by scripts/newcomer_check.sh): makes (once) the Python
# environment they need. Every step first checks whether its result is already there, so a second call
# installs nothing.
#
#   FSD_GS_VENV    the environment (default: .venv in the checkout; any existing venv or conda env works and
#                  keeps the torch it has when that torch is a CUDA build)
#   FSD_GS_BASE_PYTHON  the python3 that creates a new venv (default: python3 on PATH)

FSD_GS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FSD_GS_VENV=${FSD_GS_VENV:-$FSD_GS_ROOT/.venv}
FSD_GS_TORCH=torch==2.13.0  # the CPU build where pip's find-links or index offer it (see README, "Install")
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

say() { echo "[fsd_gs] $*" >&2; }

as_root() {  # as_root CMD...: run as root (directly, or through sudo)
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "error: '$*' needs root or sudo"; return 1
  fi
}

apt_install() {  # apt_install PKG...: Debian packages (one apt-get update per script run)
  say "apt-get install $*"
  if [ -z "${FSD_GS_APT_UPDATED:-}" ]; then as_root apt-get update -qq; FSD_GS_APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

cuda_torch() {  # cuda_torch PYTHON: true when PYTHON imports a torch built with CUDA (the user's own: kept)
  "$1" -c "import sys, torch; sys.exit(torch.version.cuda is None)" >/dev/null 2>&1
}

lock_digest() {  # what an environment was installed from: the lock, pyproject.toml and the checkout's path
  { cat "$FSD_GS_ROOT/requirements.lock" "$FSD_GS_ROOT/pyproject.toml"; echo "$FSD_GS_ROOT"; } | sha256sum | cut -d' ' -f1
}

new_venv() {  # new_venv DIR: a venv at DIR unless one is there (a CUDA torch of the base python stays visible)
  [ -x "$1/bin/python" ] && return
  local base=${FSD_GS_BASE_PYTHON:-python3} flags=()
  command -v "$base" >/dev/null 2>&1 || apt_install python3
  "$base" -c "import ensurepip, venv" >/dev/null 2>&1 || apt_install python3-venv
  cuda_torch "$base" && flags=(--system-site-packages)
  say "creating $1"
  "$base" -m venv "${flags[@]}" "$1"
}

install_locked() {  # install_locked DIR: torch (unless a CUDA torch is there) and requirements.lock into the venv DIR
  local py="$1/bin/python"
  if cuda_torch "$py"; then
    say "keeping $("$py" -c 'import torch; print(torch.__version__)') (CUDA) in $1"
  else
    "$py" -m pip install -q "$FSD_GS_TORCH"
  fi
  "$py" -m pip install -q -r "$FSD_GS_ROOT/requirements.lock"
}

ensure_env() {  # the checkout installed (editable) with the locked dependencies into $FSD_GS_VENV
  local stamp="$FSD_GS_VENV/.fsd_gs-installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(lock_digest)" ] && "$FSD_GS_VENV/bin/python" -c "import fsd_gs, torch" 2>/dev/null
  then
    say "using $FSD_GS_VENV (set up already)"
    return
  fi
  local start=$SECONDS
  new_venv "$FSD_GS_VENV"
  install_locked "$FSD_GS_VENV"
  "$FSD_GS_VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$FSD_GS_ROOT"
  lock_digest > "$stamp"
  say "set up $FSD_GS_VENV in $((SECONDS - start)) s"
}
