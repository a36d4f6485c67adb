"""scripts/bench_batch.py: the per-mode summary of the assets' report.json files (where a mode's wall time went)."""

import json

from tests.contract import load_script


def test_report_summary_reads_every_asset_report(tmp_path, monkeypatch):
    bench_batch = load_script("bench_batch", monkeypatch)
    assert bench_batch.report_summary(tmp_path) == {}  # no reports yet: nothing to say
    runs = {"a/seed0": (40.0, 70.5, 30.0, 12.0), "a/seed1": (40.0, 1.5, 32.0, 12.0), "b/seed0": (50.0, 1.1, None, 14.0)}
    for run, (wall, first, rate, load) in runs.items():
        (tmp_path / run).mkdir(parents=True)
        report = {"wall_time_s": wall, "first_step_s": first, "steps_per_s_after_first_step": rate, "prior_load_s": load}
        (tmp_path / run / "report.json").write_text(json.dumps(report))
    assert bench_batch.report_summary(tmp_path) == {
        "reports": 3,
        "run_wall_s_median": 40.0,
        "first_step_s_max": 70.5,  # the cold compile shows here
        "first_step_s_median": 1.5,
        "steps_per_s_median": 31.0,  # a missing value is left out, not read as 0
        "prior_load_s_median": 12.0,
    }


def test_a_used_work_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """A rerun into a mode folder that holds runs would resume them and time nothing: one sentence, exit 2."""
    bench_batch = load_script("bench_batch", monkeypatch)
    (tmp_path / "grouped" / "a-red-mushroom").mkdir(parents=True)
    (tmp_path / "batch").mkdir()  # empty: fine
    monkeypatch.setattr(bench_batch, "run_batch", lambda *a: (_ for _ in ()).throw(AssertionError("must not run")))
    argv = ["--work-dir", str(tmp_path), "--modes", "batch", "grouped", "--out", str(tmp_path / "out.json")]
    assert bench_batch.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "grouped") in err and "--work-dir" in err
    assert not (tmp_path / "out.json").exists()
    assert bench_batch.used_mode_folders(tmp_path, ("batch",)) == []
