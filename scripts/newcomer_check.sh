#!/usr/bin/env bash
# A newcomer's first hour, scripted: README's two commands in a fresh venv from a temporary folder outside the
# checkout, each one twice (the second call must reuse what the first installed), then the bad-input table of
# scripts/bad_inputs.py when this checkout has it; prints a table (command, expected, got).
#
#   bash scripts/newcomer_check.sh
#   NEWCOMER_VENV=/tmp/nc-venv bash scripts/newcomer_check.sh   # reuse (or keep) that venv: minutes faster
#   NEWCOMER_FULL=1 bash scripts/newcomer_check.sh              # README's 600 steps and the whole suite (slow)
#
# By default the shapes job runs 60 steps and the test command runs the tests of the set-up itself (the wheel check,
# the browser and splat-transform tests, presets and skips), so the check fits in about 10 minutes on 2 cores; CI
# runs the whole suite through the same command. Exit code 1 when a row is not as expected.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d -t fsd_gs_newcomer.XXXXXX)
export FSD_GS_VENV=${NEWCOMER_VENV:-$WORK/venv}
export FSD_GS_WHEEL_VENV=${NEWCOMER_VENV:+$NEWCOMER_VENV-wheel}
FSD_GS_WHEEL_VENV=${FSD_GS_WHEEL_VENV:-$WORK/wheel-venv}
if [ "${NEWCOMER_FULL:-0}" = 1 ]; then
  RUN_ARGS=() TEST_ARGS=() TEST_AGAIN=()
else  # one splat-transform test, one Chromium test, the packaging and skip tests; the second call only the skip tests
  RUN_ARGS=(--steps 60) TEST_AGAIN=(tests/test_tool_skips.py)
  TEST_ARGS=(tests/test_tool_skips.py tests/test_packaging.py tests/test_export.py::test_splat_transform_reads_our_ply_compressed_ply_and_splat
             tests/test_viewer_browser.py::test_standalone_viewer_of_a_written_ply)
fi
ROWS=() FAILED=0
cd "$WORK" || exit 1

row() {  # row COMMAND EXPECTED GOT OK
  ROWS+=("| \`$1\` | $2 | $3 | $4 |")
  [ "$4" != no ] || FAILED=1
}

shapes() {  # shapes NAME: README's run command, output in $WORK/NAME.out/.err; sets RC and SECS
  local name=$1 start=$SECONDS
  bash "$ROOT/scripts/run_shapes.sh" "${RUN_ARGS[@]}" > "$WORK/$name.out" 2> "$WORK/$name.err" < /dev/null; RC=$?
  SECS=$((SECONDS - start))
}
tests() {  # tests NAME ARGS...: README's test command, likewise
  local name=$1 start=$SECONDS
  shift
  bash "$ROOT/scripts/test.sh" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" < /dev/null; RC=$?
  SECS=$((SECONDS - start))
}

check_shapes() {  # check_shapes NAME LABEL EXPECTED_SETUP
  local run ok=no setup
  run=$(tail -n 1 "$WORK/$1.out")
  setup=$(grep -o "set up already\|set up .* in [0-9]* s" "$WORK/$1.err" | tail -n 1)
  # shellcheck disable=SC2053  # $3 is a glob pattern
  [ "$RC" = 0 ] && [ -f "$WORK/$run/model.ply" ] && [[ "$setup" == $3 ]] && ok=yes
  row "bash scripts/run_shapes.sh ${RUN_ARGS[*]}" "$2" "exit $RC in $SECS s; ${setup:-no set-up line}; $( [ -f "$WORK/$run/model.ply" ] && echo "$run/model.ply" || echo "no model.ply")" $ok
}

check_tests() {  # check_tests NAME LABEL EXPECTED_SETUP ARGS...
  local summary ok=no setup wheel
  summary=$(grep -E "[0-9]+ (passed|failed|error)" "$WORK/$1.out" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  setup=$(grep -o "set up already\|set up .* in [0-9]* s" "$WORK/$1.err" | tail -n 1)
  wheel=$(grep -c "wheel check passed" "$WORK/$1.err")
  # shellcheck disable=SC2053  # $3 is a glob pattern
  [ "$RC" = 0 ] && [ "$wheel" = 1 ] && [[ "$setup" == $3 ]] && [[ "$summary" != *failed* ]] && [[ "$summary" != *error* ]] && ok=yes
  local args=("${@:4}")
  row "bash scripts/test.sh ${args[*]}" "$2" "exit $RC in $SECS s; ${setup:-no set-up line}; wheel check $([ "$wheel" = 1 ] && echo passed || echo missing); ${summary:-no pytest summary}" $ok
}

echo "[newcomer] working in $WORK with venv $FSD_GS_VENV" >&2
shapes shapes1
if [ -n "${NEWCOMER_VENV:-}" ]; then first="set up*"; else first="set up * in * s"; fi
check_shapes shapes1 "exit 0, sets up the venv (or reuses NEWCOMER_VENV), model.ply" "$first"
shapes shapes2
check_shapes shapes2 "exit 0, installs nothing, model.ply" "set up already"
tests tests1 "${TEST_ARGS[@]}"
check_tests tests1 "exit 0, tools installed, wheel check passed, 0 failed, no skip but CUDA" "set up already" "${TEST_ARGS[@]}"
tests tests2 "${TEST_AGAIN[@]}"
check_tests tests2 "the same, installing nothing" "set up already" "${TEST_AGAIN[@]}"
if grep -q "npm install\|apt-get install" "$WORK/tests2.err"; then row "bash scripts/test.sh (second call)" "no apt-get or npm install" "installed again" no; fi

BAD_TABLE=""
if [ -f "$ROOT/scripts/bad_inputs.py" ]; then
  start=$SECONDS
  "$FSD_GS_VENV/bin/python" "$ROOT/scripts/bad_inputs.py" --python "$FSD_GS_VENV/bin/python" > "$WORK/bad.out" 2> "$WORK/bad.err" < /dev/null
  RC=$?
  BAD_TABLE=$(cat "$WORK/bad.out")
  row "python scripts/bad_inputs.py --python VENV_PYTHON" "exit 0: every case one sentence, exit 2, nothing lost" "exit $RC in $((SECONDS - start)) s (its table below)" "$([ $RC = 0 ] && echo yes || echo no)"
else
  row "python scripts/bad_inputs.py" "the bad-input table" "not in this checkout: not run" "n/a"
fi

echo
echo "| command | expected | got | as expected |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
if [ -n "$BAD_TABLE" ]; then echo; echo "$BAD_TABLE"; fi
echo
echo "[newcomer] logs in $WORK (commands' stdout/stderr)"
exit $FAILED
