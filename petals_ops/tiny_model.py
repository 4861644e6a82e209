"""A tiny BLOOM made offline, so a real Petals swarm can run on a laptop with no GPU and no internet.

The layout is what a Petals server loads: the base ``BloomModel`` saved with keys ``h.{i}.*`` (not
``BloomForCausalLM``, whose ``transformer.h.{i}.*`` keys the server cannot find), a byte-level BPE
tokenizer, and ``petals_ops.json`` recording the DHT prefix the swarm announces the blocks under.
Weights are random: the model produces noise, by design. It exercises the machinery, not accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from petals_ops.errors import InputError

MODEL_META = "petals_ops.json"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # BLOOM's ids 0..3

# Training text for the tokenizer: English words and digits of the kind math word problems use. Any text
# works (the BPE is byte-level, so every input is encodable); this keeps prompts reasonably short.
_CORPUS = """
Q: A baker has 12 trays of 24 muffins. She sells 3/4 of them. How many muffins are left?
A: There are 12 * 24 = 288 muffins. She sells 288 * 3 / 4 = 216. So 288 - 216 = 72 are left. The answer is 72.
Q: Tom walks 3 miles each day for 5 days, then 2 miles a day for 4 days. How far does he walk in total?
A: He walks 3 * 5 = 15 miles, then 2 * 4 = 8 miles, so 15 + 8 = 23 miles. The answer is 23.
Q: A shirt costs $20 and is on sale for 15% off. What is the sale price in dollars?
A: The discount is 20 * 0.15 = 3 dollars, so the price is 20 - 3 = 17. The answer is 17.
the of and to in is was for on that with as by at from his her they we you it this have had not are
how many much more less than each every total left after before buys sells gives takes pays costs
dollars cents hours minutes days weeks years apples books cars students friends money price twice half
zero one two three four five six seven eight nine ten hundred thousand million percent times per
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 30 40 50 60 75 100 120 150 200 250 500 1000 1,000 -5 3.5
"""


@dataclass(frozen=True)
class TinyModelSpec:
    layers: int = 4
    hidden: int = 64
    heads: int = 4
    vocab_size: int = 1024
    seed: int = 0
    dht_prefix: str = "tiny-bloom-petals"

    def validate(self) -> None:
        if self.layers < 1:
            raise InputError(f"--layers {self.layers} is not a positive number of blocks", fix="use --layers 4")
        if self.hidden < 8 or self.heads < 1 or self.hidden % self.heads:
            raise InputError(
                f"--hidden {self.hidden} must be >= 8 and divisible by the {self.heads} attention heads",
                fix="use --hidden 64",
            )


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_tiny_bloom(directory: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a deterministic (for ``spec.seed``) tiny BLOOM to ``directory`` and return its path."""
    spec.validate()
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if is_model_dir(directory):
            raise InputError(f"{directory} already holds a model", fix="remove it or choose another DIR")
        raise InputError(f"{directory} exists and is not empty", fix="choose a new or empty DIR")
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = _train_tokenizer(spec.vocab_size)
    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        n_layer=spec.layers,
        n_head=spec.heads,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = BloomForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.transformer.save_pretrained(directory, safe_serialization=True)  # keys h.{i}.*: what Petals loads
    tokenizer.save_pretrained(directory)
    meta = {"dht_prefix": spec.dht_prefix, "num_blocks": spec.layers, "seed": spec.seed, "made_by": "petals-ops"}
    (directory / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def is_model_dir(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / "config.json").is_file() and any(
        (directory / name).is_file() for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )
