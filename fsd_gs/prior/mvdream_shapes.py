"""The shapes prior turned MVDream-style: the ``shapes-mv`` pixel-space multi-view UNet and its folder.

    unet = multiview_unet(shipped_unet)           # + camera embedding (zero output), cross-view attention
    save_shapes_mv(folder, unet, text_encoder, judge, summary, tokenizer)

:func:`multiview_unet` adds MVDream's camera MLP as diffusers' ``class_embed_type="projection"`` (16 -> 4C -> 4C),
with its last layer zero-initialised so that its output is exactly 0 and the UNet starts as the shipped one
(per view; with groups of 1 view it *is* the shipped UNet), and makes every self-attention cross-view over
``views_per_group`` consecutive views (:func:`~fsd_gs.prior.mvdream_unet.set_views_per_group`). The folder is the
shapes prior's layout (diffusers names, fp16) with ``model_index.json`` naming ``MVDreamPipeline``, so the
factory's MVDream detection loads it as a :class:`~fsd_gs.prior.mvdream.PixelMVDreamPrior`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.mvdream_unet import CAMERA_DIM, set_views_per_group

SHAPES_MV_PIPELINE = "MVDreamPipeline"
"""``_class_name`` of the shapes-mv folder's model_index.json (what :func:`~fsd_gs.prior.mvdream.is_mvdream_folder` reads)."""


def multiview_unet(unet: Any, views_per_group: int = 4) -> Any:
    """A copy of the text-to-image ``UNet2DConditionModel`` ``unet`` with a camera embedding and cross-view attention.

    Args:
        unet: a diffusers UNet without a class embedding (the shipped shapes UNet), any dtype/device.
        views_per_group: F, views per group in the self-attention.
    Returns:
        the multi-view UNet (float32, on ``unet``'s device, same train/eval mode): every weight of ``unet`` copied,
        ``class_embedding.linear_1`` default-initialised and ``class_embedding.linear_2`` zero (camera output 0).
    """
    from diffusers import UNet2DConditionModel

    from fsd_gs.prior.loading import quiet_hf

    if unet.config.class_embed_type is not None:
        raise UserError("the UNet already has a class embedding: start shapes-mv from the text-to-image shapes UNet")
    config = {
        **{k: v for k, v in unet.config.items() if not k.startswith("_")},  # "_use_default_values" would undo it
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": CAMERA_DIM,
    }
    device = next(unet.parameters()).device
    with quiet_hf():
        # from_config's stubs return (model, unused kwargs) too, which it does only with return_unused_kwargs=True
        mv = cast(UNet2DConditionModel, UNet2DConditionModel.from_config(config)).to(device)
    missing, unexpected = mv.load_state_dict({k: v.float() for k, v in unet.state_dict().items()}, strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise ValueError(f"the multi-view UNet does not fit the shapes UNet (missing {missing}, unexpected {unexpected})")
    camera_out: Any = mv.class_embedding.linear_2  # type: ignore[union-attr]
    torch.nn.init.zeros_(camera_out.weight)
    torch.nn.init.zeros_(camera_out.bias)
    set_views_per_group(mv, views_per_group)
    return mv.train(unet.training)


def save_shapes_mv(
    folder: Path | str, unet: Any, text_encoder: Any, judge: Any, summary: dict[str, Any], tokenizer: Path
) -> Path:
    """Write the shapes-mv folder (fp16): the shapes prior's layout (fsd_gs.shapes.model.save_pipeline), its
    model_index.json naming the MVDream pipeline; returns the folder."""
    from fsd_gs.shapes.model import save_pipeline

    folder = save_pipeline(folder, unet, text_encoder, judge, summary=summary, tokenizer=tokenizer)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = SHAPES_MV_PIPELINE
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder
