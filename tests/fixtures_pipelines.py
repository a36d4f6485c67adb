"""Session-scoped fixtures: tiny random-weight diffusers pipelines, built once per test session, offline.

Imported into every test module through tests/conftest.py. The folders are real diffusers pipelines
(model_index.json, safetensors), loaded through the same ``load_prior`` / ``from_pretrained`` path users take.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = [
    "tiny_sd_dir",
    "tiny_pixel_dir",
    "tiny_sd3_dir",
    "tiny_sd3_no_t5_dir",
    "tiny_sd_prior",
    "tiny_sd3_prior",
    "tiny_pixel_prior",
    "shapes_prior",
]


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable-Diffusion-layout pipeline folder (64 px images, 4 x 8 x 8 latents)."""
    from fsd_gs.prior.random_pipeline import save_tiny_sd_pipeline

    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pixel-space pipeline folder (3 x 32 x 32 images, no VAE)."""
    from fsd_gs.prior.random_pipeline import save_tiny_pixel_pipeline

    return save_tiny_pixel_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-pixel", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion 3 pipeline folder with all three text encoders (64 px images, 16 x 8 x 8 latents)."""
    from fsd_gs.prior.random_sd3 import save_tiny_sd3_pipeline

    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd3", seed=0, with_t5=True)


@pytest.fixture(scope="session")
def tiny_sd3_no_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Stable Diffusion 3 pipeline without text_encoder_3/ and tokenizer_3/."""
    from fsd_gs.prior.random_sd3 import save_tiny_sd3_pipeline

    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd3-no-t5", seed=0, with_t5=False)


@pytest.fixture(scope="session")
def tiny_sd_prior(tiny_sd_dir: Path):
    """The tiny latent pipeline loaded as a prior on the CPU (fp32). Shared: do not modify it."""
    from fsd_gs.prior.factory import load_prior

    return load_prior(str(tiny_sd_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_sd3_prior(tiny_sd3_dir: Path):
    """The tiny Stable Diffusion 3 pipeline with T5 on, loaded as a prior on the CPU (fp32). Shared: do not modify it."""
    from fsd_gs.prior.factory import PriorConfig, load_prior

    return load_prior(str(tiny_sd3_dir), PriorConfig(t5="on"), device="cpu")


@pytest.fixture(scope="session")
def tiny_pixel_prior(tiny_pixel_dir: Path):
    """The tiny pixel-space pipeline loaded as a prior on the CPU (fp32). Shared: do not modify it."""
    from fsd_gs.prior.factory import load_prior

    return load_prior(str(tiny_pixel_dir), device="cpu")


@pytest.fixture(scope="module")
def shapes_prior():
    """The built-in shapes prior on the CPU, loaded once per test module."""
    from fsd_gs.prior.factory import load_prior

    return load_prior("shapes", device="cpu")
