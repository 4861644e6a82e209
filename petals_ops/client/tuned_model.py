"""The model with trainable prompts, through the swarm (petals) or in this process (local), and the loss.

Through the swarm it is petals' own ``tuning_mode``/``pre_seq_len`` model: the client holds the prompt
embeddings, every forward and backward goes through the servers' ``rpc_forward``/``rpc_backward``. The
local model reproduces exactly what petals computes (prompts prepended before the embedding layer norm;
deep_ptune adds its per-block prompts to the prefix positions before each block, as the servers do), so
the same step gives the same gradients (see tests/test_tune.py) and tuned prompts load into either.
Both expose ``model.transformer(input_ids=...)`` and ``model.lm_head``, as the client's token loop expects.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from petals_ops.client.loading import LoadedModel, load_local_model, load_swarm_model
from petals_ops.client.models import ModelRef

# The most prompt vectors petals-ops accepts (a prompt file, --pre-seq-len): far past any useful prompt
# (the servers' whole session is 2048 positions by default); 10^8 was a memory traceback.
MAX_PRE_SEQ_LEN = 8192
MODES = ("ptune", "deep_ptune")  # petals' tuning modes: prompts before the input; also before each block
PROMPT_KEYS = ("transformer.prompt_embeddings.weight", "transformer.intermediate_prompt_embeddings.weight")


def keys_for(mode: str) -> tuple[str, ...]:
    return PROMPT_KEYS if mode == "deep_ptune" else PROMPT_KEYS[:1]


def open_tunable(
    kind: str,
    ref: ModelRef,
    initial_peers: Sequence[str],
    mode: str,
    pre_seq_len: int,
    *,
    max_retries: int = 3,
    request_timeout: float = 60.0,
) -> LoadedModel:
    """``ref`` with ``pre_seq_len`` trainable prompts (``mode``): everything else frozen."""
    if kind == "local":
        loaded = load_local_model(ref)
        loaded.model = PromptedCausalLM(loaded.model, mode, pre_seq_len).eval()
    else:
        loaded = load_swarm_model(
            ref,
            initial_peers,
            max_retries=max_retries,
            request_timeout=request_timeout,
            tuning_mode=mode,
            pre_seq_len=pre_seq_len,
        )
    loaded.pre_seq_len = pre_seq_len
    return loaded


def prompt_parameters(model, mode: str) -> dict:
    """The trainable tensors by their state-dict name (the same names for both backends)."""
    params = dict(model.named_parameters())
    return {key: params[key] for key in keys_for(mode)}


def init_prompts(model, mode: str, seed: int) -> None:
    """Start from the embeddings of ``N`` random vocabulary tokens (deep prompts at zero, so step 0 is the
    model with ordinary-looking prefix tokens), not petals' N(0, 1), far off the embeddings' scale."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    embeddings = model.transformer.word_embeddings.weight
    params = prompt_parameters(model, mode)
    with torch.no_grad():
        first = params[PROMPT_KEYS[0]]
        rows = torch.randint(0, embeddings.shape[0], (first.shape[0],), generator=generator)
        first.copy_(embeddings[rows].float())
        if mode == "deep_ptune":
            params[PROMPT_KEYS[1]].zero_()


def step_loss(model, ids, labels):
    """Mean cross-entropy over the labelled tokens. Only the positions that predict a label go through the
    LM head (BLOOM's vocabulary is 250k: logits for every position would dominate the client's memory)."""
    import torch

    hidden = model.transformer(input_ids=ids).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])


@functools.cache
def _module_class():
    import torch

    class PromptedTransformer(torch.nn.Module):
        """A transformers BloomModel with petals' prompt tuning (ptune / deep_ptune), in-process."""

        def __init__(self, inner, mode: str, pre_seq_len: int):
            super().__init__()
            config = inner.config
            self.inner, self.mode, self.pre_seq_len = inner, mode, pre_seq_len
            self.word_embeddings = inner.word_embeddings
            self.prompt_embeddings = torch.nn.Embedding(pre_seq_len, config.hidden_size, dtype=torch.float32)
            if mode == "deep_ptune":
                self.intermediate_prompt_embeddings = torch.nn.Embedding(
                    pre_seq_len, config.num_hidden_layers * config.hidden_size, dtype=torch.float32
                )
            self._deep = None
            for i, block in enumerate(inner.h):
                block.register_forward_pre_hook(self._hook(i), with_kwargs=True)

        def _hook(self, index: int):
            def add_deep_prompt(module, args, kwargs):
                if self._deep is None:
                    return None
                hidden = args[0]
                n = self.pre_seq_len
                hidden = torch.cat([hidden[:, :n] + self._deep[index].to(hidden.dtype), hidden[:, n:]], dim=1)
                return (hidden, *args[1:]), kwargs

            return add_deep_prompt

        def forward(self, input_ids, past_key_values=None, use_cache=False, **kwargs):
            if past_key_values is not None:  # decoding: the prefix is in the KV cache already
                return self.inner(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache)
            embeds = self.inner.word_embeddings(input_ids)
            n, batch = self.pre_seq_len, input_ids.shape[0]
            prompts = self.prompt_embeddings.weight.unsqueeze(0).expand(batch, -1, -1).to(embeds.dtype)
            if self.mode == "deep_ptune":
                layers = self.inner.config.num_hidden_layers
                self._deep = self.intermediate_prompt_embeddings.weight.view(n, layers, -1).permute(1, 0, 2)
            try:
                out = self.inner(inputs_embeds=torch.cat([prompts, embeds], dim=1), use_cache=use_cache)
            finally:
                self._deep = None
            out.last_hidden_state = out.last_hidden_state[:, n:]
            return out

    class PromptedCausalLM(torch.nn.Module):
        def __init__(self, causal_lm, mode: str, pre_seq_len: int):
            super().__init__()
            causal_lm.requires_grad_(False)
            self.config = causal_lm.config
            self.transformer = PromptedTransformer(causal_lm.transformer, mode, pre_seq_len)
            self.lm_head = causal_lm.lm_head

    return PromptedCausalLM


def PromptedCausalLM(causal_lm, mode: str, pre_seq_len: int):
    return _module_class()(causal_lm, mode, pre_seq_len)
