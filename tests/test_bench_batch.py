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
