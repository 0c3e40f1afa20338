"""Tiny, offline, deterministic causal LMs and a tokenizer for the tests.

Nothing here touches the network: every model is built from its config class with
random weights, and the tokenizer is a byte-level BPE vocabulary with no merges
(one token per UTF-8 byte, plus a few special tokens), so it needs no training.

Usage::

    from tests.tiny_models import ARCHITECTURES, make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    model = make_tiny_model("gemma2", num_layers=3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

#: The architectures :func:`make_tiny_model` can build.
ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3",
    "phi3",
    "gpt2",
    "gpt_neox",
    "olmo2",
)

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|im_end|>"
UNK_TOKEN = "<|unk|>"
IM_START_TOKEN = "<|im_start|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"

#: Special tokens, in id order (ids 0..5); the 256 byte tokens follow.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    IM_START_TOKEN,
    ENDOFTEXT_TOKEN,
)
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID, UNK_TOKEN_ID = 0, 1, 2, 3

#: Size of :func:`make_tiny_tokenizer`'s vocabulary (special tokens + one per byte).
TINY_VOCAB_SIZE: int = len(SPECIAL_TOKENS) + 256

MODEL_MAX_LENGTH = 512

#: ChatML, with ``{% generation %}`` markers around assistant replies (and their
#: end-of-turn token) so that TRL's ``assistant_only_loss`` works without patching.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_NUM_HEADS = 4
_NUM_KV_HEADS = 2
_SLIDING_WINDOW = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by ByteLevel)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with :data:`TINY_VOCAB_SIZE` tokens, built in a few milliseconds.

    Token ``6 + b`` is byte ``b``; ids 0-5 are :data:`SPECIAL_TOKENS` (pad, bos, eos
    = ``<|im_end|>``, unk, ``<|im_start|>``, ``<|endoftext|>``). No bos is added
    automatically (like Qwen/GPT-2), padding is on the right, ``model_max_length`` is
    512 and the chat template is ChatML (:data:`CHATML_TEMPLATE`).
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    byte_chars = _bytes_to_unicode()
    vocab.update({byte_chars[b]: len(SPECIAL_TOKENS) + b for b in range(256)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, ENDOFTEXT_TOKEN],
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        chat_template=CHATML_TEMPLATE,
    )


def _common(num_layers: int, hidden_size: int, vocab_size: int) -> dict[str, Any]:
    """Config fields shared by the Llama-like architectures."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": _NUM_HEADS,
        "num_key_value_heads": _NUM_KV_HEADS,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "pad_token_id": PAD_TOKEN_ID,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "tie_word_embeddings": False,
    }


def _alternating_layer_types(num_layers: int) -> list[str]:
    """Sliding/full attention alternating, ending with full attention when possible."""
    return ["sliding_attention" if (num_layers - 1 - i) % 2 else "full_attention" for i in range(num_layers)]


def _llama(n: int, d: int, v: int) -> PretrainedConfig:
    return LlamaConfig(**_common(n, d, v))


def _qwen2(n: int, d: int, v: int) -> PretrainedConfig:
    return Qwen2Config(**_common(n, d, v))


def _qwen3(n: int, d: int, v: int) -> PretrainedConfig:
    return Qwen3Config(**_common(n, d, v), head_dim=d // _NUM_HEADS)


def _mistral(n: int, d: int, v: int) -> PretrainedConfig:
    return MistralConfig(**_common(n, d, v), head_dim=d // _NUM_HEADS, sliding_window=_SLIDING_WINDOW)


def _gemma2(n: int, d: int, v: int) -> PretrainedConfig:
    head_dim = d // _NUM_HEADS
    return Gemma2Config(
        **{**_common(n, d, v), "tie_word_embeddings": True},
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=_SLIDING_WINDOW,
        layer_types=_alternating_layer_types(n),
    )


def _gemma3(n: int, d: int, v: int) -> PretrainedConfig:
    head_dim = d // _NUM_HEADS
    return Gemma3TextConfig(
        **{**_common(n, d, v), "tie_word_embeddings": True},
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=_SLIDING_WINDOW,
        layer_types=_alternating_layer_types(n),
    )


def _phi3(n: int, d: int, v: int) -> PretrainedConfig:
    return Phi3Config(**_common(n, d, v), original_max_position_embeddings=MODEL_MAX_LENGTH)


def _gpt2(n: int, d: int, v: int) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=v,
        n_positions=MODEL_MAX_LENGTH,
        n_embd=d,
        n_layer=n,
        n_head=_NUM_HEADS,
        n_inner=2 * d,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
    )


def _gpt_neox(n: int, d: int, v: int) -> PretrainedConfig:
    common = _common(n, d, v)
    del common["num_key_value_heads"]  # GPT-NeoX has no grouped-query attention
    return GPTNeoXConfig(**common)


def _olmo2(n: int, d: int, v: int) -> PretrainedConfig:
    return Olmo2Config(**_common(n, d, v))


_BUILDERS: dict[str, tuple[Callable[[int, int, int], PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (_llama, LlamaForCausalLM),
    "qwen2": (_qwen2, Qwen2ForCausalLM),
    "qwen3": (_qwen3, Qwen3ForCausalLM),
    "mistral": (_mistral, MistralForCausalLM),
    "gemma2": (_gemma2, Gemma2ForCausalLM),
    "gemma3": (_gemma3, Gemma3ForCausalLM),
    "phi3": (_phi3, Phi3ForCausalLM),
    "gpt2": (_gpt2, GPT2LMHeadModel),
    "gpt_neox": (_gpt_neox, GPTNeoXForCausalLM),
    "olmo2": (_olmo2, Olmo2ForCausalLM),
}


def make_tiny_config(
    arch: str, *, num_layers: int = 4, hidden_size: int = 64, vocab_size: int = TINY_VOCAB_SIZE
) -> PretrainedConfig:
    """The config :func:`make_tiny_model` uses: 4 heads (2 key-value heads where GQA exists).

    Raises:
        ValueError: unknown ``arch``, or ``hidden_size`` not a multiple of 8 (heads x even head_dim).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    if hidden_size <= 0 or hidden_size % (2 * _NUM_HEADS) != 0:
        raise ValueError(f"hidden_size must be a positive multiple of {2 * _NUM_HEADS}, got {hidden_size}")
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    config = _BUILDERS[arch][0](num_layers, hidden_size, vocab_size)
    config._attn_implementation = "eager"
    config._name_or_path = f"tiny-{arch}"
    return config


def make_tiny_model(
    arch: str,
    *,
    num_layers: int = 4,
    hidden_size: int = 64,
    vocab_size: int = TINY_VOCAB_SIZE,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PreTrainedModel:
    """Build a tiny random causal LM of architecture ``arch`` (one of :data:`ARCHITECTURES`).

    Weights depend only on the arguments (the global RNG is left untouched), the
    model is in ``eval()`` mode and uses eager attention.
    """
    config = make_tiny_config(arch, num_layers=num_layers, hidden_size=hidden_size, vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _BUILDERS[arch][1](config)
    return model.to(dtype=dtype).eval()


def make_tiny_llama(**kwargs: Any) -> PreTrainedModel:
    """``make_tiny_model("llama", **kwargs)``."""
    return make_tiny_model("llama", **kwargs)
