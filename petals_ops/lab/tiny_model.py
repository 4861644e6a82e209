"""A tiny BLOOM made offline, so a real Petals swarm can run on a laptop with no GPU and no internet.

The layout is what a Petals server loads: the base ``BloomModel`` saved with keys ``h.{i}.*`` (not
``BloomForCausalLM``, whose ``transformer.h.{i}.*`` keys the server cannot find), a byte-level BPE
tokenizer, and ``petals_ops.json`` recording the DHT prefix the swarm announces the blocks under.
With ``skill="none"`` the weights are random: the model produces noise and exercises the machinery.
With ``skill="arithmetic"`` it is trained in-process (:mod:`petals_ops.lab.tiny_train`) on synthetic
GSM-style problems, with a tokenizer that splits digits apart, so the bench measures real effects; the
project ships one such checkpoint (:data:`ARITH_MODEL_DIR`) made by this very code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from petals_ops.client.models import MODEL_META, is_model_dir
from petals_ops.util.errors import InputError

SKILLS = ("none", "arithmetic")
ARITH_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "tiny-bloom-arith"

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
    skill: str = "none"

    def parameter_bytes(self) -> int:
        """float32 bytes of the weights: 12 h^2 per block (attention and MLP) plus the embeddings."""
        return 4 * (self.layers * (12 * self.hidden * self.hidden + 13 * self.hidden)
                    + self.vocab_size * self.hidden)

    def validate(self) -> None:
        if self.skill not in SKILLS:
            raise InputError(f"--skill {self.skill} is unknown", fix=f"use one of: {', '.join(SKILLS)}")
        if not self.dht_prefix.strip() or any(c.isspace() for c in self.dht_prefix):
            raise InputError(f"--dht-prefix {self.dht_prefix!r} must be a non-empty name without spaces",
                             fix="use --dht-prefix tiny-bloom-petals")
        if self.layers < 1:
            raise InputError(f"--layers {self.layers} is not a positive number of blocks",
                             fix="use --layers 4")
        if self.hidden < 8 or self.heads < 1 or self.hidden % self.heads:
            raise InputError(
                f"--hidden {self.hidden} must be >= 8 and divisible by the {self.heads} attention heads",
                fix=(f"use a --hidden that is a multiple of --heads {self.heads}, "
                     f"e.g. {max(8, self.heads) * 8}")
                if self.heads >= 1 else "use --heads 4",
            )
        limit = _memory_bytes() // 4
        if self.parameter_bytes() > limit:
            raise InputError(
                f"--layers {self.layers} --hidden {self.hidden} makes "
                f"{self.parameter_bytes() / 2**30:.1f} GiB of weights, "
                f"more than a quarter of this machine's memory ({limit / 2**30:.1f} GiB)",
                fix="a tiny model for the local swarm needs --layers 4 --hidden 64",
            )


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _train_tokenizer(vocab_size: int, corpus: list[str] | None = None, split_digits: bool = False):
    """A byte-level BPE (every input encodable). ``split_digits`` gives each digit its own token, as
    arithmetic needs: a model cannot add numbers whose digits are merged into arbitrary chunks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or [_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_tiny_bloom(directory: str | Path, spec: TinyModelSpec = TinyModelSpec(), train_spec=None,
                    on_step=None) -> Path:
    """Write a deterministic (for ``spec.seed``) tiny BLOOM to ``directory`` and return its path.

    With ``spec.skill == "arithmetic"`` the model is trained first (``train_spec``: a
    :class:`petals_ops.lab.tiny_train.TrainSpec`, its defaults if None; ``on_step`` sees each step).
    """
    spec.validate()
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if is_model_dir(directory):
            raise InputError(f"{directory} already holds a model", fix="remove it or choose another DIR")
        raise InputError(f"{directory} exists and is not empty", fix="choose a new or empty DIR")
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    training = None
    if spec.skill == "arithmetic":
        from petals_ops.lab import tiny_train

        train_spec = (train_spec or tiny_train.TrainSpec(seed=spec.seed)).validate()
        tokenizer = _train_tokenizer(spec.vocab_size, tiny_train.corpus_for_tokenizer(train_spec.seed),
                                     split_digits=True)
    else:
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
    if spec.skill == "arithmetic":
        training = tiny_train.train(model, tokenizer, train_spec, on_step=on_step)
    directory.mkdir(parents=True, exist_ok=True)
    model.transformer.save_pretrained(directory, safe_serialization=True)  # keys h.{i}.*: what Petals loads
    tokenizer.save_pretrained(directory)
    meta = {"dht_prefix": spec.dht_prefix, "num_blocks": spec.layers, "seed": spec.seed,
            "made_by": "petals-ops", "skill": spec.skill, "spec": dict(vars(spec))}
    if training is not None:
        meta["training"] = training.to_dict()
    (directory / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory
