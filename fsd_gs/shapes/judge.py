"""The judge: a small CNN that names the kind, colour and view of a 64x64 render of the shapes world.

Benchmarks use it as the world's CLIP-score analogue (does an image show what the prompt says?) and as
a feature extractor (:meth:`Judge.features`, for FID-like distances). It is trained next to the prior
by scripts/train_shapes_prior.py and shipped in ``fsd_gs/assets/shapes_prior/judge`` (config.json +
model.safetensors).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fsd_gs.camera import VIEW_NAMES
from fsd_gs.errors import UserError
from fsd_gs.shapes.world import COLOUR_NAMES, KINDS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class JudgeConfig:
    """Architecture of the judge."""

    channels: tuple[int, ...] = (32, 64, 128, 192)
    """Channels of the four stride-2 stages (64 -> 32 -> 16 -> 8 -> 4 pixels)."""
    resolution: int = 64
    """Input image size; other sizes are resized to it."""
    n_kinds: int = len(KINDS)
    n_colours: int = len(COLOUR_NAMES)
    n_views: int = len(VIEW_NAMES)


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    groups = 8 if c_out % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class Judge(nn.Module):
    """Images [B,3,H,W] in [0,1] -> logits for kind [B,K], colour [B,C] and view [B,4]."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or JudgeConfig()
        chans = (3, *self.config.channels)
        self.body = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        width = chans[-1]
        self.kind_head = nn.Linear(2 * width, self.config.n_kinds)
        self.colour_head = nn.Linear(2 * width, self.config.n_colours)
        self.view_head = nn.Linear(2 * width, self.config.n_views)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features [B,2*channels[-1]] (mean and max over space) of images [B,3,H,W] in [0,1]."""
        res = self.config.resolution
        if images.shape[-2:] != (res, res):
            images = nn.functional.interpolate(images, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        x = self.body(images * 2.0 - 1.0)
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"kind": self.kind_head(f), "colour": self.colour_head(f), "view": self.view_head(f)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Arg-max labels {"kind", "colour", "view"}: index tensors [B] (names via :func:`names`)."""
        outs: dict[str, list[torch.Tensor]] = {"kind": [], "colour": [], "view": []}
        param = next(self.parameters())
        for chunk in images.split(batch_size):
            logits = self(chunk.to(param.device, param.dtype))
            for key in outs:
                outs[key].append(logits[key].argmax(dim=1).cpu())
        return {key: torch.cat(val) for key, val in outs.items()}

    # -- files ------------------------------------------------------------------------------------
    def save(self, folder: Path | str, dtype: torch.dtype = torch.float16) -> None:
        """Write config.json and model.safetensors (weights in ``dtype``) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {**asdict(self.config), "kinds": list(KINDS), "colours": list(COLOUR_NAMES), "views": list(VIEW_NAMES)}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))


def load_judge(folder: Path | str | None = None, device: torch.device | str = "cpu") -> Judge:
    """The shipped judge (``fsd_gs/assets/shapes_prior/judge`` by default) in fp32 on ``device``, eval mode."""
    from safetensors.torch import load_file

    if folder is None:
        from fsd_gs.prior.shapes import shapes_prior_folder

        folder = shapes_prior_folder() / "judge"
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise UserError(
            f"no judge in {folder}: it needs {CONFIG_NAME} and {WEIGHTS_NAME} (scripts/train_shapes_prior.py writes them)"
        )
    meta = json.loads((folder / CONFIG_NAME).read_text())
    if meta.get("kinds") != list(KINDS) or meta.get("colours") != list(COLOUR_NAMES):
        raise UserError(f"the judge in {folder} was trained on another version of the shapes world: retrain it")
    fields = {k: v for k, v in meta.items() if k in JudgeConfig.__dataclass_fields__}
    fields["channels"] = tuple(fields["channels"])
    judge = Judge(JudgeConfig(**fields))
    judge.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()})
    return judge.to(device).eval().requires_grad_(False)


def names(labels: dict[str, torch.Tensor]) -> list[tuple[str, str, str]]:
    """(kind, colour, view) names per row of :meth:`Judge.predict`'s output."""
    return [
        (KINDS[k], COLOUR_NAMES[c], VIEW_NAMES[v])
        for k, c, v in zip(labels["kind"].tolist(), labels["colour"].tolist(), labels["view"].tolist())
    ]
