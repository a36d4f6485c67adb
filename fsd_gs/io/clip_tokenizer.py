"""A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) from a vocabulary.

    from fsd_gs.io.clip_tokenizer import write_clip_tokenizer

The shapes prior's tokenizer (fsd_gs/shapes/model.py) and the tiny random pipelines' (fsd_gs/prior/random_pipeline.py)
are written here, so ``transformers.CLIPTokenizer.from_pretrained(folder)`` loads both the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def write_clip_tokenizer(folder: Path | str, vocab: dict[str, int], merges: list[str], max_length: int) -> Path:
    """Write a CLIPTokenizer with ``vocab`` (token -> id, BOS_TOKEN and EOS_TOKEN among them), the BPE ``merges``
    ("a b" pairs, in order) and ``max_length`` tokens per prompt into ``folder`` (made if missing); EOS pads and
    stands for unknown tokens. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder
