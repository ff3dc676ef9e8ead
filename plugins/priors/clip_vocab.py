"""The CLIP tokenizer of SD 1.x and 2.x, built from the vocabulary sjc ships
(``configs/bpe_simple_vocab_16e6.txt.gz``, OpenAI CLIP, MIT), so a single-file checkpoint
needs no tokenizer download and no open_clip.

The file lists byte-pair merges; the vocabulary is the 256 byte symbols, the same with
``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (ids 49406 and
49407): OpenAI's order, the one every SD tokenizer uses.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Any

VOCAB_FILE = Path(__file__).with_name("configs") / "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the file


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable character map, printable bytes first."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(keep)
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49408-token vocabulary and its merges, in OpenAI's order."""
    with gzip.open(VOCAB_FILE) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77) -> Any:
    """A transformers ``CLIPTokenizer``; SD 2.x's OpenCLIP pads with ``!`` (id 0), SD 1.x with end-of-text."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token=pad_token)
