#!/usr/bin/env bash
# The test run of CI and of a newcomer, from any folder: sets up once what the tests need (the Python environment
# of scripts/lib.sh, Debian's chromium, Node.js and the npm reader @playcanvas/splat-transform), runs the linters
# (ruff check, ruff format --check, and pyright as pyproject's [tool.pyright] says: basic, over fsd_gs/; any finding
# stops the run), checks the wheel from outside the checkout, then runs the whole suite. A test that needs one of
# these tools fails rather than skips here (FSD_GS_REQUIRE_TOOLS=1, tests/tool_skips.py); only the CUDA tests skip
# on a CPU machine.
# Arguments go to pytest (e.g. tests/test_config.py -k preset).
#   bash /path/to/checkout/scripts/test.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SPLAT_TRANSFORM_VERSION=2.7.1
SPLAT_PREFIX="$HOME/.cache/fsd_gs/splat-transform"  # where tests/test_export.py looks

ensure_test_tools() {
  local need=()
  if [ -z "${FSD_GS_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1
  then need+=(chromium); fi
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  local manifest="$SPLAT_PREFIX/node_modules/@playcanvas/splat-transform/package.json"
  if [ "$(node -p "require('$manifest').version" 2>/dev/null)" != "$SPLAT_TRANSFORM_VERSION" ]; then
    say "npm install @playcanvas/splat-transform@$SPLAT_TRANSFORM_VERSION into $SPLAT_PREFIX"
    npm install --no-fund --no-audit --loglevel=error --prefix "$SPLAT_PREFIX" "@playcanvas/splat-transform@$SPLAT_TRANSFORM_VERSION" >&2
  fi
}

lint() {  # ruff and pyright gate the suite: what they find is listed, then one "error:" line, and the run stops
  local bin="$FSD_GS_VENV/bin"
  say "ruff check, ruff format --check, pyright"
  "$bin/ruff" check --quiet . || { say "error: ruff check found the problems above (ruff check --fix fixes some)"; exit 1; }
  "$bin/ruff" format --check . || { say "error: the files above are not formatted: run ruff format on them"; exit 1; }
  # The pyright wheel carries pyright's npm package and runs it with the node on PATH (from ensure_test_tools).
  export PYRIGHT_PYTHON_IGNORE_WARNINGS=1  # no "a newer pyright exists" lines: the lock pins it
  "$bin/pyright" --version >/dev/null 2>&1 ||
    { say "error: pyright does not start (is node on PATH?): $("$bin/pyright" --version 2>&1 | tail -n 1)"; exit 1; }
  "$bin/pyright" --pythonpath "$bin/python" || { say "error: pyright found the type errors above in fsd_gs/"; exit 1; }
}

wheel_check() {  # build the wheel, install it alone into its own venv ($FSD_GS_WHEEL_VENV, kept for the next call:
  # the locked dependencies stay, the wheel is reinstalled), run it from a folder outside the checkout
  local venv=${FSD_GS_WHEEL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fsd_gs/wheel-venv} tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/src"
  if git -C "$FSD_GS_ROOT" rev-parse --git-dir >/dev/null 2>&1; then  # the checkout's own files, not its build outputs
    (cd "$FSD_GS_ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null)
  else
    tar -C "$FSD_GS_ROOT" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./outputs --exclude='*.egg-info' -cf - .
  fi | tar -C "$tmp/src" -xf -
  "$FSD_GS_VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" "$tmp/src"
  new_venv "$venv"
  if [ "$(cat "$venv/.fsd_gs-locked" 2>/dev/null)" != "$(lock_digest)" ]; then
    install_locked "$venv"
    lock_digest > "$venv/.fsd_gs-locked"
  fi
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$tmp"/fsd_gs-*.whl
  (
    cd "$tmp"
    local package
    package=$("$venv/bin/python" -c "import fsd_gs, os; print(os.path.dirname(fsd_gs.__file__))")
    case "$package" in "$FSD_GS_ROOT"/*) say "error: the wheel venv imports fsd_gs from the checkout ($package)"; exit 1;; esac
    OMP_NUM_THREADS=1 "$venv/bin/python" -m fsd_gs.train --model shapes --prompt "a red mushroom" --steps 5 \
      --output.turntable-views 2 --output-dir "$tmp/out" | tail -n 1 > last_line
    test -f "$(cat last_line)/model.ply"
    "$venv/bin/python" -m fsd_gs.train --config shapes-sds --help > /dev/null
    "$venv/bin/python" -m viewer --help > /dev/null
    say "wheel check passed: fsd_gs from $package, presets from $("$venv/bin/python" -c 'from fsd_gs.config import presets_dir; print(presets_dir())')"
  )
  rm -rf "$tmp"
}

ensure_env
ensure_test_tools
cd "$FSD_GS_ROOT"
lint
wheel_check
export FSD_GS_REQUIRE_TOOLS=1
exec "$FSD_GS_VENV/bin/python" -m pytest -q "$@"
