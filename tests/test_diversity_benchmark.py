"""scripts/diversity_benchmark.py end to end on a tiny grid: train, evaluate, copy the table and gallery, continue."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import diversity_benchmark  # noqa: E402

from fsd_gs.config import base_config  # noqa: E402


def tiny(out: Path, docs: Path, *presets: str) -> list[str]:
    return [
        "--prompts",
        "a car",
        "--seeds",
        "0",
        "1",
        "--steps",
        "2",
        "--presets",
        *presets,
        "--runner",
        "subprocess",
        "--jobs",
        "1",
        "--views",
        "2",
        "--ddim-samples",
        "2",
        "--ddim-steps",
        "2",
        "--out",
        str(out),
        "--docs-dir",
        str(docs),
    ]


@pytest.mark.slow
def test_benchmark_writes_the_table_and_gallery_and_continues_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, docs = tmp_path / "bench", tmp_path / "docs"
    assert diversity_benchmark.main(tiny(out, docs, "shapes-fsd-plain", "shapes-fsd-surface")) == 0
    table = (docs / "table.md").read_text()
    fsd_cfg = base_config(None, "shapes-fsd-plain").guidance.guidance_scale
    assert f"| shapes (built-in) | FSD | {fsd_cfg:g} | 1 x 2 |" in table and "earlier call" not in table
    assert (docs / "gallery" / "index.html").is_file()
    # 3D consistency: the columns, and "a car" (a front kind) counted in the confusion of each row.
    assert any(line.startswith("| backbone | method |") and "| view accuracy | Janus |" in line for line in table.splitlines())
    assert "| shapes (built-in) | FSD | a car | front: " in table

    # The docs folder is never overwritten without --replace-docs: one sentence, exit code 2.
    assert diversity_benchmark.main(tiny(out, docs, "shapes-sds", "shapes-fsd-plain", "shapes-fsd-surface")) == 2
    assert "--replace-docs" in capsys.readouterr().err

    # The same --out again trains only what is missing (SDS) and says so, and keeps two presets of one method
    # (FSD with the world map and with surface noise) apart; each row names its CFG.
    assert (
        diversity_benchmark.main([*tiny(out, docs, "shapes-sds", "shapes-fsd-plain", "shapes-fsd-surface"), "--replace-docs"])
        == 0
    )
    table = (docs / "table.md").read_text()
    assert "(4 of the 6 assets were trained by an earlier call with this --out)" in table
    assert f"| shapes (built-in) | FSD | {fsd_cfg:g} | 1 x 2 |" in table
    assert f"| shapes (built-in) | FSD, surface noise | {fsd_cfg:g} | 1 x 2 |" in table
    sds_cfg = base_config(None, "shapes-sds").guidance.guidance_scale
    assert f"| shapes (built-in) | SDS | {sds_cfg:g} | 1 x 2 |" in table
    assert f"| shapes (built-in) | DDIM images | {fsd_cfg:g} |" in table  # the DDIM row samples at FSD's CFG


def test_prompt_sets_add_the_front_kinds_and_can_be_chosen() -> None:
    from fsd_gs.shapes.world import FRONT_KINDS

    cfg = diversity_benchmark.BenchmarkConfig()
    assert cfg.prompt_list == diversity_benchmark.PROMPT_SETS["all"] and len(set(cfg.prompt_list)) == len(cfg.prompt_list)
    assert set(diversity_benchmark.PROMPTS) < set(cfg.prompt_list)
    assert {"a chair", "a fish", "a house", "a car", "a bird", "a robot"} <= set(cfg.prompt_list)
    assert all(p.split()[-1] in FRONT_KINDS for p in diversity_benchmark.PROMPT_SETS["front"])
    assert diversity_benchmark.BenchmarkConfig(prompt_set="colour-free").prompt_list == diversity_benchmark.PROMPTS
    assert diversity_benchmark.BenchmarkConfig(prompts=("a cup",), prompt_set="front").prompt_list == ("a cup",)
