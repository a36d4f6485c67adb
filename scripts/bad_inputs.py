"""Bad inputs and faults against a given python, the way a newcomer meets them (issue 29).

    python scripts/bad_inputs.py                       # every case, with this python
    python scripts/bad_inputs.py --python venv/bin/python --only seed model   # cases whose name has a word
    python scripts/bad_inputs.py --quick               # a few cases (the pytest subset)

Each case runs one command (``python -m fsd_gs.train|image2d|export ...``) in a temporary folder and checks
three things: the exit code (2 for bad input, 0 where the right behaviour is success, 130 for Ctrl-C), that
stderr holds no "Traceback" (and a refusal says it in one ``error:`` line), and that nothing was lost (a refused
command leaves an existing run's files byte for byte as they were and makes no new run folder; a resumed run
ends complete). It prints a table (case, command, expected, got) and exits 1 if any case failed.
Runs are tiny (the built-in shapes prior, 32 px, 300 Gaussians, 2-4 steps, no viewer): about 5 s a case on a
CPU, mostly Python start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red mushroom"
SMALL = [
    "--model",
    "shapes",
    "--prompt",
    PROMPT,
    "--camera.width",
    "32",
    "--camera.height",
    "32",
    "--gaussians.num-points",
    "300",
    "--output.turntable-views",
    "2",
    "--output.turntable-size",
    "16",
    "--output.checkpoint-every",
    "2",
    "--output.no-progress",
    "--viewer.no-enabled",
]
"""A run of a few seconds on the CPU (add --steps and --output-dir)."""

IMAGE2D = ["--model", "shapes", "--prompt", PROMPT, "--steps", "2", "--no-progress"]

KILL_AT_FIRST_WRITE = textwrap.dedent("""
    import os, types
    import fsd_gs.io.atomic as atomic
    def lethal(*args, **kwargs):
        os._exit(137)  # SIGKILL-like, at the first fsync of the first file the run writes
    atomic.os = types.SimpleNamespace(**{**vars(os), "fsync": lethal})
""")

FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
""")
"""Files of at most 40 kB: the run's model.ply (76 kB) cannot be written, like a nearly full disk."""


@dataclass
class Case:
    """One command and what a good answer to it is."""

    name: str
    args: list[str]
    expect: int = 2
    module: str = "fsd_gs.train"
    run: Optional[Callable[[Path], None]] = None
    """Make a copy of the finished run ({run}) and damage it with this before the command; None: no run."""
    says: str = ""
    """A substring the output (stdout + stderr) must contain."""
    prelude: str = ""
    """Python code run in the process before the module (fault injection)."""
    interrupt_after: Optional[float] = None
    """Send SIGINT this many seconds after the start."""
    then_resume: bool = False
    """After the command, ``--resume {run}`` (without the prelude) must complete the run."""
    quick: bool = False
    """Part of the --quick subset (the pytest test)."""
    extra_check: Optional[Callable[[Path, str], str]] = None
    """(tmp folder, output) -> "" or what is wrong."""
    setup: Optional[Callable[[Path], None]] = field(default=None, repr=False)
    """Prepare files in the case's temporary folder."""


# -- damage done to a copy of a finished run -------------------------------------------------------------
def binary_config(run: Path) -> None:
    (run / "config.yaml").write_bytes(bytes(range(256)) * 8)


def text_garbage_config(run: Path) -> None:
    (run / "config.yaml").write_text("{{{ this is: [not yaml\n")


def list_config(run: Path) -> None:
    (run / "config.yaml").write_text("- a\n- b\n")


def empty_config(run: Path) -> None:
    (run / "config.yaml").write_text("")


def unreadable_checkpoints(run: Path) -> None:
    folders = sorted((run / "checkpoints").iterdir())
    (folders[0] / "state.json").write_text("{broken")
    (folders[-1] / "state.safetensors").write_bytes(b"\0" * 64)


def damaged_report(run: Path) -> None:
    (run / "report.json").write_text("{not json")
    (run / "model.ply").unlink()


def torn_metrics(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')


def nothing(run: Path) -> None:
    pass


def files(tmp: Path, **contents: bytes) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for name, data in contents.items():
            (folder / name.replace("__", ".")).write_bytes(data)

    return make


def help_examples(tmp: Path, output: str) -> str:
    lines = [line for line in output.splitlines() if "python -m fsd_gs.train --" in line]
    return "" if len(lines) == 2 and all(line.count("python -m") == 1 for line in lines) else "examples run together"


def plain_progress(tmp: Path, output: str) -> str:
    return "" if "\r" not in output and "fsd: step 2/2" in output else "no plain progress line (or a bar)"


def cases(tmp: Path) -> list[Case]:
    out = ["--output-dir", "{out}"]
    new = [*SMALL, "--steps", "2", *out]
    seeds = "--seed"
    return [
        # -- the list ---------------------------------------------------------------------------
        Case("seed overflow", [*new, seeds, "1000000000000000000000000000000"], says="from 0 to 4294967295", quick=True),
        Case("negative seed", [*new, seeds, "-1"], says="from 0 to 4294967295"),
        Case("binary config.yaml on --resume", ["--resume", "{run}"], run=binary_config, says="not text", quick=True),
        Case("kill at the first write", new, expect=137, prelude=KILL_AT_FIRST_WRITE),
        Case("file too large at model.ply (a full disk)", new, prelude=FILE_SIZE_LIMIT, says="cannot write", then_resume=True),
        Case(
            "all checkpoints unreadable, --steps 60",
            ["--resume", "{run}", "--steps", "60"],
            run=unreadable_checkpoints,
            says="--from-scratch",
            quick=True,
        ),
        Case(
            "all checkpoints unreadable, --from-scratch",
            ["--resume", "{run}", "--steps", "6", "--from-scratch"],
            expect=0,
            run=unreadable_checkpoints,
        ),
        Case("--gaussians.num-points 2000000000", [*new, "--gaussians.num-points", "2000000000"], says="10,000,000"),
        Case("image2d --height 100000", [*IMAGE2D, "--height", "100000", *out], module="fsd_gs.image2d", says="1 to 4096"),
        Case("--threads > cores warns", [*new, "--threads", str((os.cpu_count() or 1) + 1)], expect=0, says="warning: --threads"),
        Case(
            "--model some.bin",
            [*new, "--model", "{tmp}/some.bin"],
            says="some.bin is not a .bin checkpoint",
            setup=files(tmp, some__bin=b"garbage"),
            quick=True,
        ),
        Case(
            "--model FILE.dat",
            [*new, "--model", "{tmp}/FILE.dat"],
            says="FILE.dat is a file, not a model",
            setup=files(tmp, FILE__dat=b"x"),
        ),
        Case("--resume a complete run", ["--resume", "{run}"], expect=0, run=nothing, says="already complete"),
        Case("--help examples", ["--help"], expect=0, extra_check=help_examples),
        Case(
            "image2d Ctrl-C",
            [*IMAGE2D, "--steps", "100000", *out],
            module="fsd_gs.image2d",
            expect=130,
            interrupt_after=12.0,
            says="stopped by",
        ),
        Case(
            "image2d progress without a terminal",
            [*IMAGE2D[:-1], *out],
            module="fsd_gs.image2d",
            expect=0,
            extra_check=plain_progress,
        ),
        # -- more bad numbers ---------------------------------------------------------------------------
        Case("--steps 0", [*SMALL, "--steps", "0", *out]),
        Case("--steps -5", [*SMALL, "--steps", "-5", *out]),
        Case("--steps abc", [*SMALL, "--steps", "abc", *out]),
        Case("--steps 1.5", [*SMALL, "--steps", "1.5", *out]),
        Case("--threads -1", [*new, "--threads", "-1"]),
        Case("--guidance.guidance-scale nan", [*new, "--guidance.guidance-scale", "nan"], says="finite"),
        Case("--optim.lr.means inf", [*new, "--optim.lr.means", "inf"], says="finite"),
        Case("--optim.lr.means -1", [*new, "--optim.lr.means", "-1"]),
        Case("--camera.width 100000", [*new, "--camera.width", "100000"]),
        Case("--camera.width 0", [*new, "--camera.width", "0"]),
        Case("--gaussians.num-points 0", [*new, "--gaussians.num-points", "0"]),
        Case("--gaussians.sh-degree 9", [*new, "--gaussians.sh-degree", "9"]),
        Case("--gaussians.init-opacity 1.5", [*new, "--gaussians.init-opacity", "1.5"]),
        Case("--output.log-every 0", [*new, "--output.log-every", "0"]),
        Case("--output.turntable-views 0", [*new, "--output.turntable-views", "0"]),
        Case("--output.formats bogus", [*new, "--output.formats", "bogus"]),
        Case("--seed 1e3", [*new, seeds, "1e3"]),
        # -- bad words and flags ------------------------------------------------------------------------
        Case("empty prompt", [*new, "--prompt", ""], says="prompt is empty"),
        Case("whitespace prompt", [*new, "--prompt", "   "], says="prompt is empty"),
        Case("no prompt", ["--model", "shapes", "--steps", "2", *out]),
        Case("prompt the shapes prior does not know", [*new, "--prompt", "a blue unicorn"], says="does not know"),
        Case("--method bogus", [*new, "--method", "bogus"]),
        Case("unknown flag", [*new, "--no-such-flag", "3"]),
        Case("--device tpu", [*new, "--device", "tpu"]),
        Case("--device cuda:7 (no GPU here)", [*new, "--device", "cuda:7"]),
        Case("--config missing", [*new, "--config", "no-such-preset"], says="not found"),
        Case("--config invalid YAML", [*new, "--config", "{tmp}/bad.yaml"], setup=files(tmp, bad__yaml=b"a: [b\n")),
        Case("--config binary", [*new, "--config", "{tmp}/bin.yaml"], setup=files(tmp, bin__yaml=bytes(range(256)))),
        Case("--config unknown key", [*new, "--config", "{tmp}/k.yaml"], setup=files(tmp, k__yaml=b"no_such: 1\n")),
        Case("--config wrong type", [*new, "--config", "{tmp}/t.yaml"], setup=files(tmp, t__yaml=b"steps: many\n")),
        # -- models -------------------------------------------------------------------------------------
        Case("--model empty", [*new, "--model", ""]),
        Case("--model missing.pt", [*new, "--model", "{tmp}/missing.pt"], says="does not exist"),
        Case(
            "--model garbage .safetensors",
            [*new, "--model", "{tmp}/w.safetensors"],
            setup=files(tmp, w__safetensors=b"\x00" * 32),
        ),
        Case("--model ./no-such-folder", [*new, "--model", "./no-such-folder"], says="does not exist"),
        Case("--model a folder without a pipeline", [*new, "--model", "{tmp}"], says="not a diffusers pipeline"),
        Case("--model invalid hub id", [*new, "--model", "not a valid id!!"]),
        Case("--model uncached hub id (offline)", [*new, "--model", "nobody/no-such-model-xyz"]),
        # -- init .ply files ----------------------------------------------------------------------------
        Case("--gaussians.init-ply missing", [*new, "--gaussians.init-ply", "{tmp}/none.ply"]),
        Case(
            "--gaussians.init-ply garbage",
            [*new, "--gaussians.init-ply", "{tmp}/g.ply"],
            setup=files(tmp, g__ply=b"ply\nformat nonsense\n"),
        ),
        Case("--gaussians.init-ply empty file", [*new, "--gaussians.init-ply", "{tmp}/e.ply"], setup=files(tmp, e__ply=b"")),
        # -- output folders -----------------------------------------------------------------------------
        Case("--output-dir is a file", [*SMALL, "--steps", "2", "--output-dir", "{tmp}/afile"], setup=files(tmp, afile=b"x")),
        Case(
            "--output-dir under a file",
            [*SMALL, "--steps", "2", "--output-dir", "{tmp}/afile2/out"],
            setup=files(tmp, afile2=b"x"),
        ),
        Case("--output-dir in /proc", [*SMALL, "--steps", "2", "--output-dir", "/proc/fsd-gs-out"]),
        # -- resumes ------------------------------------------------------------------------------------
        Case("--resume missing folder", ["--resume", "{tmp}/no-run"], says="not a run folder"),
        Case("--resume a file", ["--resume", "{tmp}/afile3"], setup=files(tmp, afile3=b"x")),
        Case("--resume an empty folder", ["--resume", "{tmp}"], says="not a run folder"),
        Case("--resume text-garbage config", ["--resume", "{run}"], run=text_garbage_config, says="damaged"),
        Case("--resume config not a mapping", ["--resume", "{run}"], run=list_config, says="damaged"),
        Case("--resume empty config", ["--resume", "{run}"], run=empty_config, says="damaged"),
        Case("--resume changing --seed", ["--resume", "{run}", seeds, "5"], run=nothing, says="cannot change"),
        Case("--resume shortening --steps", ["--resume", "{run}", "--steps", "1"], run=nothing, says="only extend"),
        Case("--resume damaged report, no model.ply", ["--resume", "{run}"], expect=0, run=damaged_report),
        Case("--resume torn metrics, --steps 6", ["--resume", "{run}", "--steps", "6"], expect=0, run=torn_metrics),
        # -- image2d ------------------------------------------------------------------------------------
        Case("image2d empty prompt", [*IMAGE2D, "--prompt", "", *out], module="fsd_gs.image2d"),
        Case("image2d --method bogus", [*IMAGE2D, "--method", "bogus", *out], module="fsd_gs.image2d"),
        Case("image2d repeated seeds", [*IMAGE2D, "--seed", "1", "1", *out], module="fsd_gs.image2d"),
        Case("image2d negative seed", [*IMAGE2D, "--seed", "-3", *out], module="fsd_gs.image2d"),
        Case("image2d --steps 0", [*IMAGE2D, "--steps", "0", *out], module="fsd_gs.image2d"),
        Case("image2d --width 0", [*IMAGE2D, "--width", "0", *out], module="fsd_gs.image2d"),
        Case("image2d --lr -1", [*IMAGE2D, "--lr", "-1", *out], module="fsd_gs.image2d"),
        Case("image2d t-min > t-max", [*IMAGE2D, "--t-min", "0.9", "--t-max", "0.1", *out], module="fsd_gs.image2d"),
        Case("image2d --threads -2", [*IMAGE2D, "--threads", "-2", *out], module="fsd_gs.image2d"),
        Case("image2d --model missing folder", [*IMAGE2D, "--model", "./nowhere", *out], module="fsd_gs.image2d"),
        # -- export -------------------------------------------------------------------------------------
        Case("export a missing file", ["{tmp}/none.ply", "--to", "splat"], module="fsd_gs.export"),
        Case(
            "export a garbage .ply",
            ["{tmp}/g2.ply", "--to", "splat"],
            module="fsd_gs.export",
            setup=files(tmp, g2__ply=b"garbage"),
        ),
        Case("export to a bogus format", ["{run}", "--to", "bogus"], module="fsd_gs.export", run=nothing),
    ]


# -- running ---------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def visible_runs(out: Path) -> list[Path]:
    return [p for p in out.glob("*/*") if p.is_dir() and not p.name.startswith(".")] if out.is_dir() else []


def command(python: str, case: Case, fill: dict[str, str]) -> list[str]:
    args = [a.format(**fill) for a in case.args]
    if case.prelude:
        code = case.prelude + f"\nimport importlib, sys\nsys.exit(importlib.import_module('{case.module}').main())\n"
        return [python, "-c", code, *args]
    return [python, "-m", case.module, *args]


def run_case(python: str, case: Case, base_run: Path, env: dict[str, str], work: Path) -> tuple[str, str]:
    """(got, problem): what happened (the exit code) and "" or what was wrong."""
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=work))
    out = tmp / "out"
    fill = {"tmp": str(tmp), "out": str(out), "run": ""}
    if case.setup is not None:
        case.setup(tmp)
    run = None
    if case.run is not None:
        run = out / "a-red-mushroom" / base_run.name
        shutil.copytree(base_run, run)
        case.run(run)
        fill["run"] = str(run)
    before = snapshot(run) if run is not None else {}
    cmd = command(python, case, fill)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    if case.interrupt_after is not None:
        try:
            proc.wait(timeout=case.interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return "timeout", "ran past 600 s"
    seconds = time.perf_counter() - started
    got = str(proc.returncode)
    problems = []
    if proc.returncode != case.expect:
        problems.append(f"exit {proc.returncode}, expected {case.expect}: {stderr.strip()[-300:]}")
    if "Traceback" in stderr:
        problems.append("a traceback: " + stderr.strip().splitlines()[-1][:200])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if case.expect == 2 and len(errors) > 1:
        problems.append(f"{len(errors)} error lines")
    if case.says and case.says not in stdout + stderr:
        problems.append(f"does not say {case.says!r}: {stderr.strip()[-200:]}")
    if case.extra_check is not None and (wrong := case.extra_check(tmp, stdout + stderr)):
        problems.append(wrong)
    # nothing lost
    if run is not None and case.expect != 0:
        if snapshot(run) != before:
            problems.append("the run's files changed")
    if run is not None and case.expect == 0 and case.module == "fsd_gs.train":
        report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
        if not (report.get("completed") and (run / "model.ply").is_file()):
            problems.append("the resumed run is not complete")
    if run is None and case.expect == 2 and not case.then_resume and visible_runs(out):
        problems.append(f"a run folder was left: {visible_runs(out)}")
    if case.expect == 137:
        left = visible_runs(out)
        if left and not (left[0] / "config.yaml").is_file():
            problems.append(f"a run folder without its config was left: {left}")
    if case.then_resume:
        left = visible_runs(out)
        if len(left) != 1:
            problems.append(f"expected one run folder to resume, found {left}")
        else:
            resumed = subprocess.run(
                [python, "-m", "fsd_gs.train", "--resume", str(left[0])],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp,
                timeout=600,
            )
            report = left[0] / "report.json"
            if resumed.returncode != 0 or not report.is_file() or not json.loads(report.read_text()).get("completed"):
                problems.append(f"the resume did not complete: {resumed.stderr.strip()[-300:]}")
    shutil.rmtree(tmp, ignore_errors=True)
    return f"{got} ({seconds:.0f} s)", "; ".join(problems)


def make_base_run(python: str, env: dict[str, str], work: Path) -> Path:
    """A finished 4-step run with two checkpoints, copied by every case that needs a run."""
    out = work / "base"
    proc = subprocess.run(
        [python, "-m", "fsd_gs.train", *SMALL, "--steps", "4", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    if proc.returncode != 0:
        sys.exit(f"the base run failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    run = Path(proc.stdout.strip().splitlines()[-1])
    return run if run.is_absolute() else work / run


def shown(case: Case) -> str:
    """The command of a case for the table, with the common tiny-run flags abbreviated SMALL / IMAGE2D."""
    args = list(case.args)
    head = []
    for name, common in (("SMALL", SMALL), ("IMAGE2D", IMAGE2D)):
        if args[: len(common)] == common:
            head, args = [name], args[len(common) :]
    words = " ".join([*head, *(a if a and " " not in a else repr(a) for a in args)])
    return f"{'(fault injected) ' if case.prelude else ''}python -m {case.module} {words}".replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], prog="scripts/bad_inputs.py")
    parser.add_argument("--python", default=sys.executable, help="the python whose fsd_gs is tried (default: this one)")
    parser.add_argument("--only", nargs="*", default=[], help="run only cases whose name contains one of these words")
    parser.add_argument("--quick", action="store_true", help="only the few cases the pytest test runs")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="fsd-gs-bad-inputs-") as work_name:
        work = Path(work_name)
        chosen = [
            c for c in cases(work) if (not args.quick or c.quick) and (not args.only or any(word in c.name for word in args.only))
        ]
        base = make_base_run(args.python, env, work)
        rows = []
        for case in chosen:
            got, problem = run_case(args.python, case, base, env, work)
            rows.append((case, got, problem))
            mark = "ok" if not problem else "FAIL"
            print(f"{mark:4}  {case.name:48.48}  expected {case.expect:<3}  got {got}", flush=True)
            if problem:
                print(f"      {problem}", flush=True)
    failed = [r for r in rows if r[2]]
    print()
    print("| case | command | expected | got | ok |")
    print("|---|---|---|---|---|")
    for case, got, problem in rows:
        print(f"| {case.name} | {shown(case)} | {case.expect} | {got} | {'yes' if not problem else 'NO: ' + problem[:120]} |")
    print(
        f"\n{len(rows) - len(failed)}/{len(rows)} cases answered well (SMALL = {' '.join(SMALL)}; IMAGE2D = {' '.join(IMAGE2D)})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
