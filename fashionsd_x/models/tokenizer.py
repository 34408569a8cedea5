"""The real CLIP BPE tokenizer, built offline from the merge list shipped in the package.

Stable Diffusion 1.x uses OpenAI CLIP's tokenizer: 49,408 tokens = 256 byte symbols, the same with an
end-of-word marker, 48,894 merges, and the start/end tokens. The merge list OpenAI published with CLIP
(bpe_simple_vocab_16e6.txt.gz, MIT-licensed, see fashionsd_x/assets/clip/LICENSE) ships in
fashionsd_x/assets/clip; the vocabulary is derived from it exactly as CLIP's own SimpleTokenizer does.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

from fashionsd_x.files import write_text

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # OpenAI CLIP's merge list, as published with CLIP
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file
MAX_LENGTH = 77  # CLIP's text context, as in every SD 1.x/2.x tokenizer


def byte_symbols() -> list[str]:
    """CLIP's reversible byte -> unicode mapping (printable bytes map to themselves), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in printable] + [symbols[b] for b in range(256) if b not in printable]


def clip_merges() -> list[str]:
    """The merge rules ("a b" per line) that CLIP uses, read from the package's copy of CLIP's merge list."""
    data = resources.files("fashionsd_x").joinpath("assets", "clip", VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return lines[1 : NUM_MERGES + 1]  # line 0 is the file's version header


def write_clip_tokenizer(folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json: a tokenizer/ folder of an SD checkpoint."""
    folder = write_vocab_and_merges(folder)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "do_lower_case": True}
    write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    return folder


def write_vocab_and_merges(folder: str | Path) -> Path:
    """vocab.json and merges.txt in `folder`: what the slow CLIPTokenizer (and every transformers 4.x) reads.

    transformers 5's save_pretrained writes only tokenizer.json, which the fast tokenizer alone reads; a folder
    with both loads with either tokenizer in any transformers version."""
    folder = Path(folder)
    merges = clip_merges()
    symbols = byte_symbols()
    vocab = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(m.split(" ")) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    write_text(folder / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer identical to openai/clip-vit-large-patch14's (the SD 1.x tokenizer)."""
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder))
