"""The step object on its own: one step on a tiny prior changes the Gaussians; its state round-trips bitwise."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

from fsd_gs.io.checkpoint import load_checkpoint, save_checkpoint
from fsd_gs.methods import METHODS
from fsd_gs.step import DistillStep, step_together
from tests.contract import tiny_cfg, together_and_alone


def params_of(step: DistillStep) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in step.gaussians.params.items()}


def test_one_step_changes_the_gaussians(shapes_prior):
    step = DistillStep(tiny_cfg(), shapes_prior, torch.device("cpu"))
    before = params_of(step)
    result = step()
    assert step.steps_done == 1 and torch.isfinite(result.loss)
    after = params_of(step)
    for key in ("means", "scales", "opacities", "sh0"):
        assert not torch.equal(before[key], after[key]), key
    assert result.rgb.shape == (1, 32, 32, 3) and result.eps.shape == (1, 3, 32, 32)


def test_state_round_trips_bitwise_through_a_checkpoint(shapes_prior, tmp_path):
    cfg = tiny_cfg()
    a = DistillStep(cfg, shapes_prior, torch.device("cpu"))
    for _ in range(4):  # past a densification (refine at step 2)
        a()
    folder = save_checkpoint(a.state_dict(), tmp_path, a.steps_done)
    b = DistillStep(cfg, shapes_prior, torch.device("cpu"))
    state, _ = load_checkpoint(folder)
    b.load_state_dict(state)
    assert b.steps_done == a.steps_done and len(b.gaussians) == len(a.gaussians)
    for _ in range(3):
        ra, rb = a(), b()
        assert torch.equal(ra.loss, rb.loss)
    for key, value in params_of(a).items():
        assert torch.equal(value, params_of(b)[key]), key


def test_same_seed_same_asset_at_any_thread_count(shapes_prior):
    results = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)  # what OMP_NUM_THREADS would set; the step pins its own count
        try:
            step = DistillStep(tiny_cfg(), shapes_prior, torch.device("cpu"))
            for _ in range(6):
                step()
            results.append(params_of(step))
        finally:
            torch.set_num_threads(1)
    for other in results[1:]:
        for key, value in results[0].items():
            assert torch.equal(value, other[key]), key


def test_steps_of_several_seeds_together_match_separate_steps(shapes_prior, monkeypatch):
    """One prior call for K assets gives each asset its own step's gradient.

    Not bitwise: the prior's batched arithmetic (oneDNN / MKL pick other kernels for another batch size)
    differs by ~1e-5 relative, so gradients are compared with a tolerance, taken just before Adam.
    """
    cfgs = [tiny_cfg(seed) for seed in (0, 1)]
    together, alone, grads = together_and_alone(shapes_prior, cfgs, monkeypatch)
    results = step_together(together)
    alone_results = [s() for s in alone]
    assert [r.eps.shape[0] for r in results] == [1, 1] and all(s.steps_done == 1 for s in together)
    for r, a in zip(results, alone_results):  # the noise (one call for the seeds) and the timesteps: bitwise each's own
        assert torch.equal(r.eps, a.eps) and torch.equal(r.timestep, a.timestep)
    for seed in (0, 1):  # relative L2 over the whole gradient (the quats' is pure rounding noise at step 0)
        g_alone = torch.cat([g.flatten() for g in grads[("alone", seed)].values()])
        g_together = torch.cat([g.flatten() for g in grads[("together", seed)].values()])
        assert g_alone.norm() > 0 and (g_together - g_alone).norm() / g_alone.norm() < 1e-4, seed
    assert not torch.equal(grads[("alone", 0)]["means"], grads[("alone", 1)]["means"])  # the seeds differ


@pytest.mark.parametrize("perp_neg", [False, True])
def test_prompts_of_steps_together_are_each_steps_own(shapes_prior, perp_neg):
    """step_together selects every seed's prompts in one call: the same rows, in order, as each step's own selection
    (view names, or Perp-Neg's mixed positives, negatives and weights)."""
    from fsd_gs.step import prompts_together, select_prompts

    extra = ("--guidance.perp-neg",) if perp_neg else ("--guidance.no-perp-neg",)
    cfgs = [tiny_cfg(seed, "--camera.batch-size", "3", *extra) for seed in (0, 1)]
    steps = [DistillStep(cfg, shapes_prior, torch.device("cpu")) for cfg in cfgs]
    assert steps[0].embeddings is steps[1].embeddings  # one prompt: the prior's cache gives both steps one object
    views = [s.sample_views() for s in steps]
    conditioning, negatives = prompts_together(steps, views)
    parts = [select_prompts(s.embeddings, s.cfg.guidance, v.cameras, v.names) for s, v in zip(steps, views)]
    assert len(conditioning) == 6 and (negatives is not None) == perp_neg
    for name in ("cond", "uncond"):
        expected = torch.cat([getattr(c, name).expand(3, *getattr(c, name).shape[1:]) for c, _ in parts])
        assert torch.allclose(getattr(conditioning, name).expand_as(expected), expected, rtol=0, atol=1e-6), name
    if negatives is not None:
        assert torch.equal(negatives.weights, torch.cat([n.weights for _, n in parts]))
        assert torch.allclose(negatives.embeddings, torch.cat([n.embeddings for _, n in parts], dim=1), rtol=0, atol=1e-6)


def test_no_import_cycles_among_the_package_modules():
    root = pathlib.Path(__file__).resolve().parent.parent / "fsd_gs"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("method", [name for name in METHODS if name not in ("fsd", "sds")])  # the baselines
def test_every_method_steps_through_the_same_step(method, shapes_prior):
    step = DistillStep(tiny_cfg(0, "--method", method), shapes_prior, torch.device("cpu"))
    spec = METHODS[method]
    assert (step.cfg.noise.kind, step.cfg.schedule.kind) == (spec.noise.kind, spec.schedule.kind)
    if method in ("nfsd", "csd", "vsd"):
        assert step.cfg.noise.kind == "random" and step.cfg.schedule.kind == "random"
    before = params_of(step)
    result = step()
    assert torch.isfinite(result.loss) and not torch.equal(before["means"], params_of(step)["means"])


def test_a_resumed_vsd_run_continues_exactly_with_its_lora(shapes_prior, tmp_path):
    """VSD's LoRA and its optimiser are part of the step's state, so a checkpoint continues bitwise."""
    cfg = tiny_cfg(0, "--method", "vsd")
    a = DistillStep(cfg, shapes_prior, torch.device("cpu"))
    for _ in range(2):
        a()
    lora_before = {k: v.clone() for k, v in a.guidance.state_dict()["lora"].items()}
    folder = save_checkpoint(a.state_dict(), tmp_path, a.steps_done)
    b = DistillStep(cfg, shapes_prior, torch.device("cpu"))
    state, _ = load_checkpoint(folder)
    b.load_state_dict(state)
    for _ in range(2):
        assert torch.equal(a().loss, b().loss)
    for key, value in params_of(a).items():
        assert torch.equal(value, params_of(b)[key]), key
    changed = [k for k, v in a.guidance.state_dict()["lora"].items() if not torch.equal(v, lora_before[k])]
    assert changed, "the LoRA did not train"


def test_seeds_of_a_vsd_run_cannot_step_together(shapes_prior):
    from fsd_gs.errors import UserError

    steps = [DistillStep(tiny_cfg(seed, "--method", "vsd"), shapes_prior, torch.device("cpu")) for seed in (0, 1)]
    with pytest.raises(UserError, match="one at a time"):
        step_together(steps)
