"""scripts/seed_colours.py: per-seed colours across prompts from evaluation JSONs, on hand-made rows."""

from __future__ import annotations

import json

from tests.contract import load_script

SEEDS = {"0": "red", "1": "green", "2": "blue", "3": "red"}


def _rows(model: str, method: str, colours_of) -> list[dict]:
    return [
        {"prompt": p, "model": model, "method": method, "seed_colours": {s: colours_of(p, s) for s in SEEDS}}
        for p in ("a chair", "a fish", "a robot")
    ]


def test_a_seed_that_sets_the_colour_and_one_that_does_not(tmp_path, monkeypatch, capsys):
    script = load_script("seed_colours", monkeypatch)
    by_seed = _rows("shapes", "fsd-perpneg", lambda p, s: SEEDS[s])  # the seed alone decides
    by_prompt = _rows("shapes-flow", "fsd", lambda p, s: {"a chair": "pink", "a fish": "cyan", "a robot": "green"}[p])
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"results": by_seed + by_prompt + _rows("shapes", "sds", lambda p, s: "red")}))

    seeded = script.seed_colours(json.loads(path.read_text())["results"], "shapes", "fsd")
    assert set(seeded) == {"a chair", "a fish", "a robot"} and seeded["a fish"] == SEEDS  # fsd-perpneg, not sds
    assert script.modal_share(seeded) == (12, 12)
    prompted = script.seed_colours(json.loads(path.read_text())["results"], "shapes-flow", "fsd")
    assert script.modal_share(prompted) == (4, 12)  # one prompt's colour per seed: 1 of 3 prompts agrees
    assert script.modal_share_by_chance(prompted) == 4.0  # shuffling one colour per prompt changes nothing
    assert 4.0 < script.modal_share_by_chance(seeded) < 12.0
    same, total, chance = script.agreement(seeded, prompted)
    assert (same, total) == (1, 12) and chance == 1.0  # the robot of seed 1 is green in both; so is chance

    assert script.main([str(path), "--model", "shapes", "--other-model", "shapes-flow"]) == 0
    out = capsys.readouterr().out
    assert "seed 1: green green green" in out and "12/12 (prompt, seed) pairs" in out and "same colour for 1/12" in out


def test_bad_inputs_say_one_sentence(tmp_path, monkeypatch, capsys):
    script = load_script("seed_colours", monkeypatch)
    (tmp_path / "notes.json").write_text("[1, 2]")
    (tmp_path / "ok.json").write_text(json.dumps({"results": _rows("shapes", "fsd", lambda p, s: SEEDS[s])}))
    for argv, message in (
        ([str(tmp_path / "missing.json")], "is not an evaluation JSON"),
        ([str(tmp_path / "notes.json")], "is not an evaluation JSON"),
        ([str(tmp_path / "ok.json"), "--model", "shapes-mv"], "no rows of model shapes-mv"),
        ([str(tmp_path / "ok.json"), "--other-model", "shapes-flow"], "no (prompt, seed) pairs of shapes-flow"),
    ):
        assert script.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
