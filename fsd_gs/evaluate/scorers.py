"""What an image of a prompt scores: quality per view, class probabilities (for IS) and features (for FID).

Two scorers share one interface (:class:`Scorer`), chosen per backbone:

* :class:`JudgeScorer` for the built-in shapes prior: the shipped judge (fsd_gs/shapes/judge.py) says
  whether a view shows the prompt's kind (and colour, when the prompt names one); its kind head gives the
  IS probabilities and its pooled penultimate features (:meth:`Judge.features`) the FID features.
* :class:`ClipScorer` for any other prior: CLIP score = 100 * cos(image embedding, text embedding) with a
  real CLIP loaded by ``CLIPModel.from_pretrained``; its image embeddings are the FID features; IS uses an
  injected classifier (:class:`InceptionClassifier`, the paper's Inception-v3 through torchmetrics), or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import numpy as np
import torch

from fsd_gs.errors import UserError

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPProcessor

    from fsd_gs.shapes.judge import Judge

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
Classifier = Callable[[torch.Tensor], torch.Tensor]
"""images [B,3,H,W] in [0,1] -> class probabilities [B,K]."""


@dataclass
class ViewScores:
    """Scores of V views of one asset.

    Attributes:
        quality: [V] per-view quality (judge agreement in {0,1}, or CLIP score).
        features: [V,D] feature vectors for FID and feature distances.
        probs: [V,K] class probabilities for IS, or None without a classifier.
        colours: V judged colour names (shapes only), else None.
        views: V read view names ("front", "side", "back", "overhead"; :mod:`fsd_gs.evaluate.consistency`), or None.
    """

    quality: np.ndarray
    features: np.ndarray
    probs: Optional[np.ndarray] = None
    colours: Optional[list[str]] = None
    views: Optional[list[str]] = None


class Scorer(Protocol):
    quality_name: str
    """Column name of the quality, e.g. "judge agreement" or "CLIP score"."""
    feature_name: str
    """What the FID features are, e.g. "judge penultimate features"."""
    classifier_name: Optional[str]
    """What gives the IS probabilities; None when IS is not computed."""
    view_reader: str
    """What reads each view's side ("front", "side", ...) for the consistency figures."""

    def score(self, images: torch.Tensor, prompt: str) -> ViewScores:
        """Scores of views [V,3,H,W] in [0,1] of an asset made from ``prompt``."""
        ...


class JudgeScorer:
    """The shapes world's judge as quality, IS classifier (kind head) and feature extractor."""

    quality_name = "judge agreement"
    feature_name = "judge penultimate features"
    classifier_name: Optional[str] = "judge kind head"
    view_reader = "judge view head"

    def __init__(self, judge: Judge, batch_size: int = 128) -> None:
        self.judge = judge
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompt: str) -> ViewScores:
        from fsd_gs.camera import VIEW_NAMES
        from fsd_gs.shapes.captions import parse
        from fsd_gs.shapes.world import COLOUR_NAMES, KINDS

        kind, colour, _ = parse(prompt)
        param = next(self.judge.parameters())
        feats, kinds, colours, views = [], [], [], []
        for chunk in images.split(self.batch_size):
            f = self.judge.features(chunk.to(param.device, param.dtype))
            feats.append(f.float().cpu())
            kinds.append(self.judge.kind_head(f).float().cpu())
            colours.append(self.judge.colour_head(f).float().cpu())
            views.append(self.judge.view_head(f).argmax(1).cpu())
        kind_logits, colour_logits = torch.cat(kinds), torch.cat(colours)
        v = kind_logits.shape[0]
        kind_ok = kind_logits.argmax(1) == KINDS.index(kind) if kind else torch.ones(v, dtype=torch.bool)
        colour_idx = colour_logits.argmax(1)
        colour_ok = colour_idx == COLOUR_NAMES.index(colour) if colour else torch.ones(v, dtype=torch.bool)
        return ViewScores(
            quality=(kind_ok & colour_ok).double().numpy(),
            features=torch.cat(feats).double().numpy(),
            probs=kind_logits.softmax(1).double().numpy(),
            colours=[COLOUR_NAMES[i] for i in colour_idx.tolist()],
            views=[VIEW_NAMES[i] for i in torch.cat(views).tolist()],
        )


def _embedding(out: object) -> torch.Tensor:
    """CLIP's get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


class ClipScorer:
    """CLIP score (100 x cosine of image and text embeddings) and CLIP image embeddings as features.

    Its view probe (a proxy, docs/evaluation.md) reads each view as the arg-max of its cosine to "the front of
    <prompt>", "the side of <prompt>", "the back of <prompt>" and "the top of <prompt>" (top = overhead)."""

    quality_name = "CLIP score"
    view_reader = "CLIP view probe (the front / side / back / top of <prompt>)"

    def __init__(
        self,
        model: CLIPModel,
        processor: CLIPProcessor,
        name: str,
        classifier: Optional[Classifier] = None,
        classifier_name: Optional[str] = None,
        batch_size: int = 32,
    ) -> None:
        self.model, self.processor, self.name = model, processor, name
        self.classifier, self.classifier_name = classifier, classifier_name if classifier else None
        self.feature_name = f"CLIP image embeddings ({name})"
        self.batch_size = batch_size
        self._text: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The prompt's CLIP text embedding [D] (cached)."""
        if prompt not in self._text:
            tokens = self.processor.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            self._text[prompt] = _embedding(self.model.get_text_features(**tokens))[0].float().cpu()
        return self._text[prompt]

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings [B,D] of images [B,3,H,W] in [0,1] (the processor resizes and normalises)."""
        out = []
        for chunk in images.split(self.batch_size):
            pixels = (chunk.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            inputs = self.processor.image_processor(images=list(pixels), return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
            out.append(_embedding(self.model.get_image_features(pixel_values=pixel_values)).float().cpu())
        return torch.cat(out)

    def view_reads(self, embeddings: torch.Tensor, prompt: str) -> list[str]:
        """The view probe: per image embedding [V,D], the view whose phrase is the most similar (view names)."""
        from fsd_gs.evaluate.consistency import probe_phrases

        phrases = probe_phrases(prompt)
        texts = torch.nn.functional.normalize(torch.stack([self.text_embedding(p) for p in phrases.values()]), dim=1)
        best = (torch.nn.functional.normalize(embeddings, dim=1) @ texts.T).argmax(dim=1)
        names = list(phrases)
        return [names[i] for i in best.tolist()]

    def score(self, images: torch.Tensor, prompt: str) -> ViewScores:
        emb = self.image_embeddings(images)
        text = self.text_embedding(prompt)
        cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(text, dim=0)
        probs = None
        if self.classifier is not None:
            probs = self.classifier(images).double().cpu().numpy()
        return ViewScores(
            quality=(100.0 * cos).double().numpy(), features=emb.double().numpy(), probs=probs, views=self.view_reads(emb, prompt)
        )


def load_clip(name: str = DEFAULT_CLIP, device: torch.device | str = "cpu") -> tuple[CLIPModel, CLIPProcessor]:
    """``CLIPModel`` and ``CLIPProcessor`` from a hub id (HF cache first) or a local folder, fp32, eval mode.

    Raises a one-sentence UserError when the model is neither a folder nor obtainable (e.g. offline).
    """
    from transformers import CLIPModel, CLIPProcessor

    from fsd_gs.prior.loading import hub_offline, quiet_hf

    folder = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not folder.is_dir():
        raise UserError(f"the CLIP folder {name!r} does not exist: pass --clip with a hub id or a folder holding a CLIP model")
    source = str(folder) if folder.is_dir() else name
    try:
        with quiet_hf():
            model = CLIPModel.from_pretrained(source, local_files_only=hub_offline())
            processor = CLIPProcessor.from_pretrained(source, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"the CLIP model {name!r} is not available (not a local folder, not in the Hugging Face cache"
            f"{', and HF_HUB_OFFLINE is set' if hub_offline() else ', and the hub could not be reached'}): "
            f"pass --clip with a local CLIP folder, or download it (hf download {name}) on a machine with internet"
        ) from exc
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to): pyright then takes `device` for `self`
    return model.to(device).eval().requires_grad_(False), processor  # pyright: ignore[reportArgumentType]


class InceptionClassifier:
    """The paper's IS classifier: Inception-v3 (the FID/IS weights) through torchmetrics and torch-fidelity."""

    name = "Inception-v3 (torchmetrics)"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        try:
            from torchmetrics.image.inception import InceptionScore

            self.net = InceptionScore(feature="logits_unbiased", normalize=True).inception.to(device).eval()
        except Exception as exc:  # missing torch-fidelity or weights that cannot be downloaded
            raise UserError(
                f"the Inception-v3 classifier for IS is not available ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): "
                "pip install torch-fidelity on a machine that can download its weights, or pass --is-classifier none"
            ) from exc
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        return self.net(pixels).float().softmax(dim=1).cpu()
