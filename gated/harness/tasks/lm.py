"""Language modelling (paper §9, stand-ins for WikiText-103): word-level on the Brown corpus
(perplexity) and character-level on the King James Bible (bits per character).

Each split is one token stream cut into B parallel streams (``(L, B)``); batch ``i`` is the
``i``-th window of ``bptt`` steps, and the recurrent state is carried from window to window
(truncated BPTT), reset at the start of each pass over the data.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

from gated.harness.tasks import LOG2, Batch, Task, TaskSpec

UNK, EOS = "<unk>", "<eos>"


class LanguageModel(Task):
    """Next-token prediction. ``x: (bptt, B)`` token ids, ``y: (bptt, B)`` the next tokens."""

    readout, vocab, stateful = "all", True, True
    dataset = "brown"

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        from gated.harness.data import load, text_split

        arrays = load(self.dataset)
        texts = {s: text_split(arrays, s) for s in ("train", "val", "test")}
        self.itos = self.build_vocab(texts["train"], cfg)
        stoi = {t: i for i, t in enumerate(self.itos)}
        unk = stoi.get(UNK)
        self.ids = {s: torch.tensor([stoi.get(t, unk) for t in self.tokens(text)], dtype=torch.long)
                    for s, text in texts.items()}
        self.input_size = self.output_size = len(self.itos)
        self.seq_len = cfg.bptt
        self._streams: dict = {}

    def tokens(self, text: str) -> list[str]:
        raise NotImplementedError

    def build_vocab(self, train: str, cfg) -> list[str]:
        raise NotImplementedError

    def streams(self, split: str, batch_size: int) -> Tensor:
        """The split as ``(L, B)``: B contiguous streams of ``L = N // B`` tokens."""
        key = (split, batch_size)
        if key not in self._streams:
            ids = self.ids[split]
            L = len(ids) // batch_size
            if L < 2:
                raise ValueError(f"the {split} split ({len(ids)} tokens) is too short for batch size {batch_size}")
            self._streams[key] = ids[: L * batch_size].view(batch_size, L).t().contiguous()
        return self._streams[key]

    def num_batches(self, split: str, batch_size: int) -> int:
        L = self.streams(split, batch_size).shape[0]
        return max(1, math.ceil((L - 1) / self.cfg.bptt))

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        data, n = self.streams(split, batch_size), self.num_batches(split, batch_size)
        j = index % n
        start, stop = j * self.cfg.bptt, min((j + 1) * self.cfg.bptt, data.shape[0] - 1)
        return Batch(data[start:stop], data[start + 1: stop + 1], reset=j == 0)

    def metrics(self, out: Tensor, y: Tensor) -> dict[str, float]:
        return {"loss": self.loss(out, y).item()}


class WordLM(LanguageModel):
    """Brown corpus, words as tokens: one sentence per line, ``<eos>`` after each; the
    ``vocab_size`` most frequent training words (``<unk>`` and ``<eos>`` included) are kept."""

    main_metric = "ppl"

    def tokens(self, text: str) -> list[str]:
        return [tok for line in text.splitlines() for tok in (*line.split(), EOS)]

    def build_vocab(self, train: str, cfg) -> list[str]:
        counts = Counter(self.tokens(train))
        counts.pop(UNK, None)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return [UNK] + ranked[: cfg.vocab_size - 1]

    @property
    def baseline(self) -> dict[str, float]:
        V = self.output_size
        return {"loss": math.log(V), "ppl": float(V)}

    def derived(self, m: dict[str, float]) -> dict[str, float]:
        return m | {"ppl": math.exp(min(m["loss"], 50.0))}


class CharLM(LanguageModel):
    """King James Bible, characters as tokens (newline ends a verse); characters unseen in
    training map to ``<unk>``."""

    main_metric = "bpc"
    dataset = "kjv"

    def tokens(self, text: str) -> list[str]:
        return list(text)

    def build_vocab(self, train: str, cfg) -> list[str]:
        return [UNK] + sorted(set(train))

    @property
    def baseline(self) -> dict[str, float]:
        V = self.output_size
        return {"loss": math.log(V), "bpc": math.log2(V)}

    def derived(self, m: dict[str, float]) -> dict[str, float]:
        return m | {"bpc": m["loss"] / LOG2}


_LM = {"eval_every": 1000, "eval_batches": 0, "ckpt_every": 1000, "steps": 20000, "lr": 1e-3}

SPECS = [
    TaskSpec("brown", "word-level LM on the Brown corpus (WikiText-103 stand-in, paper §9); perplexity",
             WordLM, "brown", _LM | {"batch_size": 32, "hidden_size": 512, "embed_size": 256, "bptt": 70},
             "--task brown --hidden-size 1024 --embed-size 512 --batch-size 64 --bptt 128 --steps 50000 "
             "--dropout 0 --lr 1e-3 --clip 1"),
    TaskSpec("kjv", "character-level LM on the King James Bible; bits per character",
             CharLM, "kjv", _LM | {"batch_size": 32, "hidden_size": 512, "embed_size": 64, "bptt": 128},
             "--task kjv --hidden-size 1024 --embed-size 128 --batch-size 64 --bptt 256 --steps 50000 "
             "--lr 1e-3 --clip 1"),
]
