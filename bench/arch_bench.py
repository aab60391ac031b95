"""The 2026 architectures at their published size, random weights: lazyembed against
sentence-transformers on the same folder (issues 21 and 22).

One model per architecture is built from its PUBLISHED config.json (copied below as data,
with the hub repository it comes from; nothing is downloaded): random weights, a small
tokenizer trained here with the model's special tokens and padding side, but the
published vocabulary size, so the embedding table (most of a small model's memory) has
its real size. ``build`` makes each folder once with transformers + sentence-transformers
(``model.save``) in a child process and adds its ONNX export (``onnx/model.onnx``, as
``tools/make_model_fixtures.py`` exports: TorchScript exporter, ``last_hidden_state``;
``position_ids`` and empty ``past_key_values.*`` for the decoder).

Per architecture and repeat, each in a FRESH process, interleaved:

- ``convert`` (issue 22): ``python -m lazyembed.models.convert_child`` on the folder into
  an empty cache: peak RSS (the child's ru_maxrss) and seconds; an architecture lazyembed
  does not convert yet exits with UnsupportedModelError ("not converted natively (yet)").
- ``native``: lazyembed on that conversion: load + first vector, loaded MB (Embedder's
  get_memory_usage, process RSS and PSS), MB after unload_model(), reload ms, batch-32
  sentences/s, one-text latency.
- ``st``: sentence-transformers on the same folder: the same figures (no unload).
- ``export`` (issue 21): lazyembed on the folder's ONNX export (``onnx_file``).

From the repository root, in .venv-bench:

    python -m bench.arch_bench --tiny            # the whole flow on tiny configs (~1-2 min)
    python -m bench.arch_bench --repeats 3       # real size (quiet machine only)

``make bench`` runs it as the "architectures" section (``--quick``: tiny configs). The
built folders are kept under bench/.archmodels/ (gitignored; ``ARCHBENCH_MODELS_DIR``
points elsewhere) and reused; at real size they take ~9 GB of disk.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import corpus

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(__file__).resolve().parent / ".archmodels"  # gitignored (bench/.gitignore)
#: Another place for the built folders (e.g. ones built in another checkout): its
#: ``real/`` and ``tiny/`` subfolders are used.
MODELS_DIR_ENV = "ARCHBENCH_MODELS_DIR"
EXPORT = "onnx/model.onnx"
FIRST_TEXT = "The first vector after a load."
RELOAD_TEXT = "The first vector after an unload."
MB = float(1 << 20)
BUILD_VERSION = "1"  # bump when the recipe of a folder changes: folders are rebuilt
UNSUPPORTED_EXIT = 5  # lazyembed.models.convert_child's exit status for UnsupportedModelError
CONTENDERS = ("convert", "native", "st", "st_fp32", "export")

Result = dict[str, Any]

# ---- the published configs (config.json of each hub repository, as data) ---------------

#: sentence-transformers/all-mpnet-base-v2, config.json
MPNET_CONFIG: Result = {
    "architectures": ["MPNetForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "mpnet",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "relative_attention_num_buckets": 32,
    "vocab_size": 30527,
}

#: nomic-ai/nomic-embed-text-v1.5, config.json (the hub's own form; its auto_map, which
#: points at remote code, is left out: transformers 5 has NomicBert built in)
NOMIC_CONFIG: Result = {
    "activation_function": "swiglu",
    "architectures": ["NomicBertModel"],
    "attn_pdrop": 0.0,
    "bos_token_id": None,
    "causal": False,
    "dense_seq_output": True,
    "embd_pdrop": 0.0,
    "eos_token_id": None,
    "fused_bias_fc": True,
    "fused_dropout_add_ln": True,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 2048,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "model_type": "nomic_bert",
    "n_embd": 768,
    "n_head": 12,
    "n_inner": 3072,
    "n_layer": 12,
    "n_positions": 8192,
    "pad_token_id": 0,
    "pad_vocab_size_multiple": 64,
    "parallel_block": False,
    "parallel_block_tied_norm": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "summary_activation": None,
    "summary_first_dropout": 0.0,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "torch_dtype": "float32",
    "type_vocab_size": 2,
    "use_cache": True,
    "use_flash_attn": True,
    "use_rms_norm": False,
    "use_xentropy": True,
    "vocab_size": 30528,
}

#: Alibaba-NLP/gte-modernbert-base, config.json
MODERNBERT_CONFIG: Result = {
    "architectures": ["ModernBertModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 50281,
    "classifier_activation": "gelu",
    "classifier_bias": False,
    "classifier_dropout": 0.0,
    "classifier_pooling": "mean",
    "cls_token_id": 50281,
    "decoder_bias": True,
    "deterministic_flash_attn": False,
    "embedding_dropout": 0.0,
    "eos_token_id": 50282,
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "hidden_activation": "gelu",
    "hidden_size": 768,
    "initializer_cutoff_factor": 2.0,
    "initializer_range": 0.02,
    "intermediate_size": 1152,
    "layer_norm_eps": 1e-05,
    "local_attention": 128,
    "local_rope_theta": 10000.0,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "mlp_dropout": 0.0,
    "model_type": "modernbert",
    "norm_bias": False,
    "norm_eps": 1e-05,
    "num_attention_heads": 12,
    "num_hidden_layers": 22,
    "pad_token_id": 50283,
    "position_embedding_type": "absolute",
    "sep_token_id": 50282,
    "torch_dtype": "float32",
    "vocab_size": 50368,
}

#: Qwen/Qwen3-Embedding-0.6B, config.json
QWEN3_CONFIG: Result = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}

_GEMMA_LAYERS = 24
_GEMMA_PATTERN = 6

#: google/embeddinggemma-300m, config.json
GEMMA3_CONFIG: Result = {
    "_sliding_window_pattern": _GEMMA_PATTERN,
    "architectures": ["Gemma3TextModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 1152,
    "layer_types": [
        "full_attention" if (i + 1) % _GEMMA_PATTERN == 0 else "sliding_attention"
        for i in range(_GEMMA_LAYERS)
    ],
    "max_position_embeddings": 2048,
    "model_type": "gemma3_text",
    "num_attention_heads": 3,
    "num_hidden_layers": _GEMMA_LAYERS,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "torch_dtype": "float32",
    "use_bidirectional_attention": True,
    "use_cache": True,
    "vocab_size": 262144,
}


@dataclass(frozen=True)
class Arch:
    """One architecture: its published config and how sentence-transformers runs it."""

    key: str
    repo: str
    config: Result
    pooling: str
    normalize: bool
    max_seq_length: int
    #: "wordpiece" or "bpe" (byte-level), trained here on the bench corpus.
    tokenizer: str
    #: Special tokens in id order (ids 0, 1, ...); roles name them.
    specials: tuple[str, ...]
    roles: dict[str, str]
    #: The post-processor: tokens before and after the text.
    template: tuple[tuple[str, ...], tuple[str, ...]]
    padding_side: str = "right"
    #: config.json fields that name a special token's id (set to our tokenizer's ids).
    id_fields: dict[str, str] = field(default_factory=dict)
    #: The dtype of model.safetensors as the hub ships it.
    weights_dtype: str = "float32"
    #: Dense modules after the pooling: (out_features, in = previous width), bias-free.
    dense: tuple[int, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    #: Decoder exports take position_ids and past_key_values.* (onnx-community's form).
    decoder_export: bool = False
    #: Sentences of the batch-32 run at real size (fewer for the larger models, so one
    #: run takes seconds, not minutes, on 2 cores).
    bench_sentences: int = 128


ARCHS: dict[str, Arch] = {
    "mpnet": Arch(
        "mpnet",
        "sentence-transformers/all-mpnet-base-v2",
        MPNET_CONFIG,
        "mean",
        True,
        384,
        "wordpiece",
        ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
        {"bos": "<s>", "cls": "<s>", "pad": "<pad>", "eos": "</s>", "sep": "</s>", "unk": "<unk>"}
        | {"mask": "<mask>"},
        (("<s>",), ("</s>",)),
    ),
    "nomic_bert": Arch(
        "nomic_bert",
        "nomic-ai/nomic-embed-text-v1.5",
        NOMIC_CONFIG,
        "mean",
        True,
        8192,
        "wordpiece",
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
        (("[CLS]",), ("[SEP]",)),
        prompts={"query": "search_query: ", "document": "search_document: "},
    ),
    "modernbert": Arch(
        "modernbert",
        "Alibaba-NLP/gte-modernbert-base",
        MODERNBERT_CONFIG,
        "cls",
        True,
        8192,
        "bpe",
        ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
        {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"},
        (("[CLS]",), ("[SEP]",)),
        id_fields={
            "bos_token_id": "[CLS]",
            "cls_token_id": "[CLS]",
            "eos_token_id": "[SEP]",
            "sep_token_id": "[SEP]",
            "pad_token_id": "[PAD]",
        },
    ),
    "qwen3": Arch(
        "qwen3",
        "Qwen/Qwen3-Embedding-0.6B",
        QWEN3_CONFIG,
        "lasttoken",
        True,
        32768,
        "bpe",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"pad": "<|endoftext|>", "eos": "<|endoftext|>"},
        ((), ("<|endoftext|>",)),
        padding_side="left",
        id_fields={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        weights_dtype="bfloat16",
        prompts={
            "query": "Instruct: Given a web search query, retrieve relevant passages that "
            "answer the query\nQuery:"
        },
        decoder_export=True,
        bench_sentences=48,
    ),
    "gemma3_text": Arch(
        "gemma3_text",
        "google/embeddinggemma-300m",
        GEMMA3_CONFIG,
        "mean",
        True,
        2048,
        "bpe",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"),
        {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"},
        (("<bos>",), ("<eos>",)),
        dense=(3072, 768),
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        bench_sentences=96,
    ),
}

#: --tiny: the same architectures scaled down (for checking the flow, not for figures).
TINY: dict[str, Result] = {
    "mpnet": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 2000,
    },
    "nomic_bert": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "vocab_size": 2048},
    "modernbert": {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "local_attention": 16,
        "vocab_size": 2048,
    },
    "qwen3": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "max_window_layers": 2,
        "vocab_size": 2000,
    },
    "gemma3_text": {
        "hidden_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "intermediate_size": 96,
        "query_pre_attn_scalar": 32,
        "sliding_window": 16,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "vocab_size": 2000,
    },
}
TINY_DENSE = {"gemma3_text": (256, 64)}
#: The NomicBert hub keys and what transformers 5 calls them (it reads only its own names,
#: so a scaled-down hub config also carries these; at real size its defaults agree).
NOMIC_ALIASES = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "layer_norm_epsilon": "layer_norm_eps",
}


def arch_config(arch: Arch, tiny: bool) -> Result:
    """The config.json to write: the published one (scaled down with --tiny)."""
    config = copy.deepcopy(arch.config)
    if tiny:
        config.update(TINY[arch.key])
        if arch.key == "nomic_bert":
            config.update({new: config[old] for old, new in NOMIC_ALIASES.items()})
    return config


def dense_widths(arch: Arch, tiny: bool) -> tuple[int, ...]:
    return TINY_DENSE.get(arch.key, ()) if tiny else arch.dense


# ---- building the folders (in .venv-bench, needs torch) ---------------------------------


def _training_text() -> list[str]:
    texts = corpus.all_sentences()
    texts += list(corpus.topic_texts().values())
    return texts


def build_tokenizer(arch: Arch, vocab_size: int) -> Any:
    """A tokenizer trained on the bench corpus with the model's specials and padding side."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    unk = arch.roles.get("unk")
    if arch.tokenizer == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk or "[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(arch.specials)
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(arch.specials),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    before, after = arch.template
    single = " ".join([*before, "$A", *after])
    pair = " ".join([*before, "$A", *after, *[f"{t}:1" for t in before], "$B:1"])
    pair += " " + " ".join(f"{t}:1" for t in after) if after else ""
    used = sorted(set(before) | set(after))
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in used]
    )
    for i, special in enumerate(arch.specials):
        assert tok.token_to_id(special) == i, (special, tok.token_to_id(special))
    roles = {f"{role}_token": token for role, token in arch.roles.items()}
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=arch.padding_side, **roles)


def _hf_model(arch: Arch, config: Result) -> Any:
    """A random-weight transformers model of the config (NomicBert: its transformers 5
    names; the folder is rewritten into the hub's form afterwards)."""
    from transformers import AutoConfig, AutoModel

    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    if arch.key == "nomic_bert":
        fields = {NOMIC_ALIASES.get(k, k): v for k, v in fields.items()}
        fields["max_position_embeddings"] = config["max_trained_positions"]
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000.0}
        fields = {k: v for k, v in fields.items() if k in _NOMIC_TF5_FIELDS}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    return AutoModel.from_config(hf_config, attn_implementation="eager")


_NOMIC_TF5_FIELDS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "layer_norm_eps",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "pad_token_id",
        "rope_parameters",
    }
)


def _nomic_to_hub_form(folder: Path, config: Result) -> None:
    """Rename transformers 5's NomicBert tensors to the hub's (``attn.Wqkv``, ``fc11``...)
    and write the hub's config.json."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    out: dict[str, Any] = {}
    renames = [
        ("embeddings.LayerNorm", "emb_ln"),
        ("self_attn.o_proj", "attn.out_proj"),
        ("mlp.up_proj", "mlp.fc11"),
        ("mlp.gate_proj", "mlp.fc12"),
        ("mlp.down_proj", "mlp.fc2"),
        ("post_attention_layernorm", "norm1"),
        ("post_mlp_layernorm", "norm2"),
    ]
    qkv: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        new = name
        if new.startswith("layers."):
            new = "encoder." + new
        for old, hub in renames:
            new = new.replace(old, hub)
        for part in ("q_proj", "k_proj", "v_proj"):
            if f"self_attn.{part}." in new:
                stem, _, kind = new.partition(f"self_attn.{part}.")
                qkv.setdefault(stem + "attn.Wqkv." + kind, {})[part] = tensor
                break
        else:
            out[new] = tensor
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", config)


def _cast_weights(folder: Path, dtype: str, config: Result) -> None:
    """Store model.safetensors in the dtype the hub ships (bf16 for Qwen3)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    tensors = load_file(str(folder / "model.safetensors"))
    cast = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", {**config, "torch_dtype": dtype})


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class _LastHidden:
    """Wrappers with the inputs and the one output the hub's exports have."""

    @staticmethod
    def encoder(model: Any) -> Any:
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask)
                return out.last_hidden_state

        return Encoder()

    @staticmethod
    def bidirectional_windows(model: Any) -> Any:
        """Gemma3 text with use_bidirectional_attention: its two masks built here with
        plain tensor ops (the TorchScript tracer fails in transformers' mask functions);
        the same masks transformers makes: padding, and |q - k| < sliding_window."""
        import torch

        window = int(model.config.sliding_window)

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
                keep = attention_mask[:, None, None, :].bool()
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
                near = (positions[:, None] - positions[None, :]).abs() < window
                lowest = torch.finfo(torch.float32).min
                zero = torch.zeros((), dtype=torch.float32)
                masks = {
                    "full_attention": torch.where(keep, zero, lowest),
                    "sliding_attention": torch.where(keep & near[None, None], zero, lowest),
                }
                out = self.model(input_ids=input_ids, attention_mask=masks)
                return out.last_hidden_state

        return Encoder()

    @staticmethod
    def decoder(model: Any) -> Any:
        import torch
        from transformers import DynamicCache

        class Decoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(
                self,
                input_ids: torch.Tensor,
                attention_mask: torch.Tensor,
                position_ids: torch.Tensor,
                *past: torch.Tensor,
            ) -> Any:
                cache = DynamicCache(config=self.model.config)
                for layer in range(len(past) // 2):
                    cache.update(past[2 * layer], past[2 * layer + 1], layer)
                return self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state

        return Decoder()


def export_onnx(arch: Arch, folder: Path, model: Any) -> None:
    """The transformer's ONNX export at onnx/model.onnx (external data in
    model.onnx_data when over protobuf's 2 GB, as onnx-community ships them)."""
    import onnx
    import torch

    model = model.float().eval()
    ids = torch.tensor([[5, 10, 11, 12], [5, 12, 13, 6]])
    mask = torch.ones_like(ids)
    mask[1, 3] = 0
    args: tuple[Any, ...] = (ids, mask)
    names = ["input_ids", "attention_mask"]
    dynamic = {0: "batch_size", 1: "sequence_length"}
    axes: dict[str, dict[int, str]] = {}
    wrapper = _LastHidden.encoder(model)
    if arch.key == "gemma3_text":
        wrapper = _LastHidden.bidirectional_windows(model)
    if arch.decoder_export:
        ids, mask = ids.flip(1), mask.flip(1)
        cfg = model.config
        past_shape = (2, cfg.num_key_value_heads, 0, cfg.head_dim)
        past_names = [
            f"past_key_values.{i}.{kv}"
            for i in range(cfg.num_hidden_layers)
            for kv in ("key", "value")
        ]
        args = (
            ids,
            mask,
            (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1),
            *(torch.zeros(past_shape) for _ in past_names),
        )
        names += ["position_ids", *past_names]
        axes = {name: {0: "batch_size", 2: "past_sequence_length"} for name in past_names}
        wrapper = _LastHidden.decoder(model)
    target = folder / EXPORT
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={**{n: dynamic for n in [*names, "last_hidden_state"]}, **axes},
                opset_version=17,
                dynamo=False,
            )
        if len(list(Path(tmp).iterdir())) == 1 and raw.stat().st_size < (1 << 31):
            shutil.move(str(raw), target)
        else:  # the exporter wrote one file per tensor: gather them in model.onnx_data
            loaded = onnx.load(str(raw))
            onnx.save_model(
                loaded,
                str(target),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="model.onnx_data",
            )


def build_one(arch: Arch, folder: Path, tiny: bool) -> Result:
    """Build one folder (sentence-transformers layout + onnx/model.onnx) from scratch."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    started = time.perf_counter()
    torch.manual_seed(0)
    config = arch_config(arch, tiny)
    tokenizer = build_tokenizer(arch, 1000 if tiny else 8000)
    ids = {role: tokenizer.convert_tokens_to_ids(token) for role, token in arch.id_fields.items()}
    config.update(ids)
    shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        model = _hf_model(arch, config)
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        del model
        transformer = Transformer(str(hf_dir), max_seq_length=arch.max_seq_length)
        width = transformer.get_embedding_dimension()
        modules: list[Any] = [transformer, Pooling(width, pooling_mode=arch.pooling)]
        for out_features in dense_widths(arch, tiny):
            modules.append(
                Dense(width, out_features, bias=False, activation_function=torch.nn.Identity())
            )
            width = out_features
        if arch.normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu", prompts=dict(arch.prompts))
        st.save(str(folder))
        del st, transformer
    (folder / "README.md").unlink(missing_ok=True)
    if arch.key == "nomic_bert":
        _nomic_to_hub_form(folder, config)
    elif arch.weights_dtype != "float32":
        _cast_weights(folder, arch.weights_dtype, config)
    built_s = time.perf_counter() - started
    # The export runs from the folder as saved (the hub form, bf16 weights read as fp32).
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    export_onnx(arch, folder, hf)
    del hf
    files = {
        str(p.relative_to(folder)): p.stat().st_size / MB
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    result = {
        "arch": arch.key,
        "repo": arch.repo,
        "tiny": tiny,
        "build_s": built_s,
        "export_s": time.perf_counter() - started - built_s,
        "safetensors_mb": files.get("model.safetensors"),
        "onnx_mb": sum(v for k, v in files.items() if k.startswith("onnx/")),
        "folder_mb": sum(files.values()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "version": BUILD_VERSION,
    }
    _write_json(folder / ".archbench.json", result)
    return result


def default_models_dir(tiny: bool) -> Path:
    root = Path(os.environ.get(MODELS_DIR_ENV) or MODELS_DIR)
    return root / ("tiny" if tiny else "real")


def folder_of(models_dir: Path, key: str) -> Path:
    return models_dir / key


def built(models_dir: Path, key: str) -> Result | None:
    """The build record of a complete folder of the current recipe, else None."""
    try:
        record: Result = json.loads(
            (folder_of(models_dir, key) / ".archbench.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return None
    return record if record.get("version") == BUILD_VERSION else None


# ---- the measurements (each in a fresh process) -----------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _pss_mb() -> float | None:
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _above(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _texts(n: int) -> list[str]:
    return corpus.sentences(n)


def _one_text_ms(embed: Any, texts: Sequence[str]) -> list[float]:
    times = []
    for text in texts:
        started = time.perf_counter()
        embed(text)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def measure_lazy(
    folder: Path, mode: str, cache_dir: Path, threads: int, sentences: int, one_texts: int
) -> Result:
    """lazyembed on the folder: ``native`` (its conversion) or ``export`` (onnx_file)."""
    import numpy as np
    import onnxruntime  # noqa: F401  (the import is not the model's memory)

    from lazyembed import Embedder, memory

    texts = _texts(sentences)
    singles = [f"{t} ({i})" for i, t in enumerate(_texts(one_texts))]
    options: Result = {"onnx_file": EXPORT} if mode == "export" else {}
    embedder = Embedder(
        str(folder),
        model_cache_dir=str(cache_dir),
        cache_memory_mb=0,
        idle_timeout="never",
        intra_op_threads=threads,
        encode_batch_size=32,
        **options,
    )
    prepared = embedder.prepare()
    runs_export = prepared.transformer is not None and prepared.transformer.export is not None
    if runs_export != (mode == "export"):
        raise RuntimeError(f"{folder}: asked for {mode}, lazyembed chose {prepared.transformer}")
    memory.release_to_os()
    base, base_pss = _rss_mb(), _pss_mb()
    started = time.perf_counter()
    first = embedder.embed_numpy([FIRST_TEXT])
    load_ms = (time.perf_counter() - started) * 1e3
    usage = embedder.get_memory_usage()
    loaded_rss, loaded_pss = _rss_mb() - base, _above(_pss_mb(), base_pss)
    embedder.embed_numpy(texts[:32])  # the runs' buffers exist once
    started = time.perf_counter()
    vectors = embedder.embed_numpy(texts)
    rate = len(texts) / (time.perf_counter() - started)
    one_ms = _one_text_ms(embedder.embed_numpy, singles)
    after_batch = _rss_mb() - base
    embedder.unload_model()
    memory.release_to_os()
    after_unload = _rss_mb() - base
    started = time.perf_counter()
    embedder.embed_numpy([RELOAD_TEXT])
    reload_ms = (time.perf_counter() - started) * 1e3
    return {
        "mode": mode,
        "load_first_ms": load_ms,
        "model_mb": usage.get("model_mb"),
        "loaded_rss_mb": loaded_rss,
        "pss_mb": loaded_pss,
        "after_batch_rss_mb": after_batch,
        "after_unload_mb": after_unload,
        "reload_ms": reload_ms,
        "sentences_per_s": rate,
        "one_text_ms": statistics.median(one_ms),
        "dim": int(first.shape[1]),
        "vectors": np.asarray(vectors[:16], dtype=float).round(6).tolist(),
    }


def measure_st(
    folder: Path, threads: int, sentences: int, one_texts: int, dtype: str | None = None
) -> Result:
    """sentence-transformers on the same folder, as it loads it by default (or in
    ``dtype``)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    texts = _texts(sentences)
    singles = [f"{t} ({i})" for i, t in enumerate(_texts(one_texts))]
    base, base_pss = _rss_mb(), _pss_mb()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if dtype is not None:  # else the dtype it loads by default (the checkpoint's)
        kwargs["model_kwargs"] = {"dtype": getattr(torch, dtype)}
    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    model.encode([FIRST_TEXT])
    load_ms = (time.perf_counter() - started) * 1e3
    loaded_rss, loaded_pss = _rss_mb() - base, _above(_pss_mb(), base_pss)
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32)
    rate = len(texts) / (time.perf_counter() - started)
    one_ms = _one_text_ms(lambda text: model.encode([text]), singles)
    return {
        "mode": "st",
        "load_first_ms": load_ms,
        "model_mb": None,
        "loaded_rss_mb": loaded_rss,
        "pss_mb": loaded_pss,
        "after_batch_rss_mb": _rss_mb() - base,
        "after_unload_mb": None,
        "reload_ms": None,
        "sentences_per_s": rate,
        "one_text_ms": statistics.median(one_ms),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "dim": int(vectors.shape[1]),
        "vectors": np.asarray(vectors[:16], dtype=float).round(6).tolist(),
    }


# ---- the orchestration (this process measures nothing itself) ----------------------------


def child_env(base: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT / "src"), str(ROOT)))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def _child(argv: Sequence[str], env: dict[str, str], timeout: float) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "bench.arch_bench", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"arch_bench {' '.join(argv)} exited {done.returncode}:\n{tail}")
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_convert(folder: Path, cache_dir: Path, env: dict[str, str]) -> Result:
    """lazyembed's converter child on the folder: peak RSS (its ru_maxrss), seconds, or
    the UnsupportedModelError it refused with."""
    command = [sys.executable, "-m", "lazyembed.models.convert_child"]
    command += ["--model-dir", str(folder), "--variant", "fp32", "--cache-dir", str(cache_dir)]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        proc = subprocess.Popen(command, cwd=cache_dir, env=env, stdout=err, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    if proc.returncode == UNSUPPORTED_EXIT:
        return {"supported": False, "message": message}
    if proc.returncode != 0:
        raise RuntimeError(f"converting {folder} failed ({proc.returncode}): {message}")
    return {"supported": True, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def cosine_min(a: list[list[float]], b: list[list[float]]) -> float | None:
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or not x.size:
        return None
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return float((x * y).sum(axis=1).min())


def _build_s(record: Result) -> float:
    return float(record["build_s"]) + float(record["export_s"])


def ensure_built(keys: Sequence[str], models_dir: Path, tiny: bool, env: dict[str, str]) -> Result:
    """Build the missing folders, one child process each; the build records."""
    models_dir.mkdir(parents=True, exist_ok=True)
    records: Result = {}
    for key in keys:
        record = built(models_dir, key)
        if record is None:
            print(f"  building {key} ({'tiny' if tiny else 'real size'}) ...", flush=True)
            argv = ["build", key, f"--models-dir={models_dir}"] + (["--tiny"] if tiny else [])
            record = _child(argv, env, timeout=3600)
            record["reused"] = False
        else:
            record["reused"] = True
        how = "reused" if record["reused"] else f"built in {_build_s(record):.0f} s"
        print(f"  {key}: {record['folder_mb']:,.0f} MB on disk ({how})", flush=True)
        records[key] = record
    return records


def compare(
    keys: Sequence[str],
    *,
    repeats: int,
    threads: int,
    tiny: bool,
    sentences: int | None,
    one_texts: int,
    models_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Every contender of every architecture, one fresh process per run, interleaved."""
    models_dir = models_dir or default_models_dir(tiny)
    cenv = child_env(env)
    builds = ensure_built(keys, models_dir, tiny, cenv)
    runs: dict[str, dict[str, list[Result]]] = {k: {c: [] for c in CONTENDERS} for k in keys}
    unsupported: dict[str, str] = {}
    failed: dict[str, str] = {}  # a run that failed (the others go on), by arch/contender
    step_s: dict[str, list[float]] = {}
    counts = {k: sentences or (64 if tiny else ARCHS[k].bench_sentences) for k in keys}
    with tempfile.TemporaryDirectory(prefix="archbench-", dir=models_dir) as work:
        for repeat in range(repeats):
            for key in keys:
                folder = folder_of(models_dir, key)
                cache = Path(work) / f"{key}-{repeat}"  # empty: the conversion is measured
                cache.mkdir()
                plan: list[tuple[str, list[str]]] = []
                common = [f"--threads={threads}", f"--sentences={counts[key]}"]
                common.append(f"--one-texts={one_texts}")
                started = time.perf_counter()
                if key not in unsupported and key not in failed:
                    try:
                        convert = measure_convert(folder, cache, cenv)
                    except RuntimeError as exc:  # a converter that fails: say so, go on
                        failed[key] = str(exc)
                        convert = {"supported": False}
                    step_s.setdefault(f"{key}/convert", []).append(time.perf_counter() - started)
                    if convert["supported"]:
                        runs[key]["convert"].append(convert)
                        plan.append(("native", ["lazy", str(folder), "native", str(cache)]))
                    elif key not in failed:
                        unsupported[key] = convert["message"]
                plan.append(("st", ["st", str(folder)]))
                if ARCHS[key].weights_dtype != "float32":  # ST loads those in their dtype
                    plan.append(("st_fp32", ["st", str(folder), "float32"]))
                plan.append(("export", ["lazy", str(folder), "export", str(cache)]))
                line = []
                for name, argv in plan:
                    started = time.perf_counter()
                    try:
                        result = _child([*argv, *common], cenv, timeout=1800)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                        failed[f"{key}/{name}"] = str(exc)
                        line.append(f"{name} FAILED")
                        continue
                    step_s.setdefault(f"{key}/{name}", []).append(time.perf_counter() - started)
                    runs[key][name].append(result)
                    line.append(f"{name} {result['sentences_per_s']:,.1f}/s")
                print(f"  repeat {repeat + 1}/{repeats} {key}: " + ", ".join(line), flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    return {
        "tiny": tiny,
        "threads": threads,
        "repeats": repeats,
        "sentences": counts,
        "one_texts": one_texts,
        "cpu": cpu_description(),
        "builds": builds,
        "unsupported": unsupported,
        "failed": failed,
        "step_seconds": {k: statistics.median(v) for k, v in step_s.items()},
        "archs": {key: summarize(runs[key]) for key in keys},
    }


_FIGURES = (
    "load_first_ms",
    "model_mb",
    "loaded_rss_mb",
    "pss_mb",
    "after_batch_rss_mb",
    "after_unload_mb",
    "reload_ms",
    "sentences_per_s",
    "one_text_ms",
    "seconds",
    "peak_rss_mb",
)


def _spread(values: Sequence[float]) -> Result | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(by_contender: dict[str, list[Result]]) -> Result:
    out: Result = {}
    for name, rows in by_contender.items():
        if not rows:
            continue
        stats = {f: _spread([r.get(f) for r in rows]) for f in _FIGURES if f in rows[0]}
        out[name] = {k: v for k, v in stats.items() if v is not None}
        if "dtype" in rows[0]:
            out[name]["dtype"] = rows[0]["dtype"]
    for peer, key in (("st", "min_cosine_vs_st"), ("st_fp32", "min_cosine_vs_st_fp32")):
        st = by_contender.get(peer)
        for name in ("native", "export"):
            rows = by_contender.get(name)
            if rows and st:
                out[name][key] = cosine_min(rows[0]["vectors"], st[0]["vectors"])
    return out


def cpu_description() -> str:
    """lscpu's model name and the SIMD flags that decide the kernels ORT and torch run."""
    name = "unknown CPU"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)
    return f"{name} ({shown})"


# ---- the tables ---------------------------------------------------------------------------


def _fmt(stats: Result | None, key: str = "", digits: int = 0) -> str:
    node = stats.get(key) if stats and key else stats
    if not node:
        return "n/a"
    mid, low, high = node["median"], node["min"], node["max"]
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def _ratio(a: Result | None, b: Result | None, key: str, invert: bool = False) -> str:
    try:
        x, y = a[key]["median"], b[key]["median"]  # type: ignore[index]
        value = y / x if invert else x / y
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"
    return f"**{value:.2f}x**"


def markdown(result: Result) -> str:
    size = "TINY configs (flow check, not figures)" if result["tiny"] else "published configs"
    counts = ", ".join(f"{k} {n}" for k, n in result["sentences"].items())
    lines = [
        f"CPU: {result['cpu']}; {result['threads']} threads for every contender; "
        f"{size}, random weights; median (min-max) of {result['repeats']} fresh processes "
        f"per cell, interleaved; batch 32 over bench sentences ({counts}); "
        f"one-text latency: median of {result['one_texts']} calls.",
        "",
        "Models (hub repository whose config.json each is built from):",
        "",
        "| arch | config of | safetensors MB | ONNX export MB | build + export s |",
        "|---|---|---|---|---|",
    ]
    for key, build in result["builds"].items():
        seconds = "reused" if build.get("reused") else f"{_build_s(build):.0f}"
        lines.append(
            f"| {key} | {build['repo']} | {build['safetensors_mb']:,.0f} | "
            f"{build['onnx_mb']:,.0f} | {seconds} |"
        )
    lines += [
        "",
        "**Native conversion (issue 22)** against sentence-transformers on the same folder:",
        "",
        "| arch | converter peak MB | convert s | lazyembed loaded MB (model_mb / RSS / PSS) "
        "| after unload MB | reload ms | batch-32 /s | one text ms | ST loaded MB (RSS / PSS) "
        "| ST batch-32 /s | ST one text ms | batch-32 lazyembed/ST | one text ST/lazyembed "
        "| min cos |",
        "|" + "---|" * 14,
    ]
    for key, row in result["archs"].items():
        st = row.get("st")
        st_cells = [
            f"{_fmt(st, 'loaded_rss_mb')} / {_fmt(st, 'pss_mb')}"
            + (f" ({st['dtype']})" if st and "dtype" in st else ""),
            _fmt(st, "sentences_per_s", 1),
            _fmt(st, "one_text_ms", 1),
        ]
        native, convert = row.get("native"), row.get("convert")
        if native is None:
            why = "not converted natively (yet)"
            if any(k == key or k == f"{key}/native" for k in result.get("failed", {})):
                why = "native run FAILED (below)"
            lines.append(f"| {key} | {why} | | | | | | | " + " | ".join(st_cells) + " | | | |")
            continue
        lines.append(
            f"| {key} | {_fmt(convert, 'peak_rss_mb')} | {_fmt(convert, 'seconds', 1)} | "
            f"{_fmt(native, 'model_mb')} / {_fmt(native, 'loaded_rss_mb')} / "
            f"{_fmt(native, 'pss_mb')} | {_fmt(native, 'after_unload_mb')} | "
            f"{_fmt(native, 'reload_ms')} | {_fmt(native, 'sentences_per_s', 1)} | "
            f"{_fmt(native, 'one_text_ms', 1)} | "
            + " | ".join(st_cells)
            + f" | {_ratio(native, st, 'sentences_per_s')} | "
            f"{_ratio(native, st, 'one_text_ms', invert=True)} | "
            f"{_cos(native)} |"
        )
        st32 = row.get("st_fp32")
        if st32 is not None:  # the same lazyembed run against sentence-transformers in fp32
            lines.append(
                f"| {key}, ST in float32 | | | | | | | | "
                f"{_fmt(st32, 'loaded_rss_mb')} / {_fmt(st32, 'pss_mb')} (float32) | "
                f"{_fmt(st32, 'sentences_per_s', 1)} | {_fmt(st32, 'one_text_ms', 1)} | "
                f"{_ratio(native, st32, 'sentences_per_s')} | "
                f"{_ratio(native, st32, 'one_text_ms', invert=True)} | "
                f"{_cos(native, 'min_cosine_vs_st_fp32')} |"
            )
    lines += [
        "",
        "**ONNX export path (issue 21)**: the folder's `onnx/model.onnx` through `onnx_file`:",
        "",
        "| arch | load + first vector ms | loaded MB (model_mb / RSS / PSS) | after unload MB "
        "| reload ms | batch-32 /s | one text ms | batch-32 export/ST | min cos vs ST |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in result["archs"].items():
        export, st = row.get("export"), row.get("st")
        lines.append(
            f"| {key} | {_fmt(export, 'load_first_ms')} | {_fmt(export, 'model_mb')} / "
            f"{_fmt(export, 'loaded_rss_mb')} / {_fmt(export, 'pss_mb')} | "
            f"{_fmt(export, 'after_unload_mb')} | {_fmt(export, 'reload_ms')} | "
            f"{_fmt(export, 'sentences_per_s', 1)} | {_fmt(export, 'one_text_ms', 1)} | "
            f"{_ratio(export, st, 'sentences_per_s')} | {_cos(export)} |"
        )
    steps = ", ".join(f"{k} {v:.1f}" for k, v in result.get("step_seconds", {}).items())
    if steps:
        lines += ["", f"Seconds per step (median, whole fresh process): {steps}."]
    if result.get("failed"):
        lines += ["", "**Failed runs** (the tables show the runs that finished):", ""]
        lines += [f"- {key}: `{_last(message)}`" for key, message in result["failed"].items()]
    if result["unsupported"]:
        lines += ["", "Not converted natively (yet), as lazyembed's converter said:", ""]
        lines += [f"- {key}: `{message[:300]}`" for key, message in result["unsupported"].items()]
    lines += [
        "",
        "MB above the process before the first embed (imports done; lazyembed also "
        "`prepare()`d). `model_mb` is `Embedder.get_memory_usage()`'s figure; RSS and PSS "
        "are the process's after the first embed. lazyembed memory-maps the weights, so "
        "its RSS counts the pages the run touched (the embedding table's rows of the "
        "tokens seen). The tokenizers are small ones trained on the bench corpus (the "
        "table keeps the published vocabulary size). Converter peak: the conversion "
        "child's ru_maxrss. sentence-transformers runs in the dtype it loads by default "
        "(shown); where that is not float32 (Qwen3's bf16), a second row compares the same "
        "lazyembed run with sentence-transformers loaded in float32, which is faster on a "
        "CPU without bf16 instructions. min cos: lazyembed's vectors against "
        "sentence-transformers' on 16 sentences.",
    ]
    return "\n".join(lines)


def _last(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else message)[:300]


def _cos(row: Result | None, key: str = "min_cosine_vs_st") -> str:
    value = row.get(key) if row else None
    return "n/a" if value is None else f"{value:.6f}"


# ---- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arch_bench", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="scaled-down configs (flow check)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sentences", type=int, help="batch-32 corpus (default: per architecture; tiny 64)"
    )
    parser.add_argument("--one-texts", type=int, help="one-text calls (default 20, tiny 5)")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset")
    parser.add_argument("--models-dir", type=Path, help="where the folders are built and kept")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    parser.add_argument("command", nargs="*", help="(internal) build/lazy/st ARGS")
    args = parser.parse_args(argv)
    one_texts = args.one_texts or (5 if args.tiny else 20)
    if args.command:
        return _internal(args, args.sentences or 64, one_texts)
    keys = [k for k in args.archs.split(",") if k]
    unknown = set(keys) - set(ARCHS)
    if unknown:
        parser.error(f"unknown architectures: {', '.join(sorted(unknown))}")
    result = compare(
        keys,
        repeats=args.repeats,
        threads=args.threads,
        tiny=args.tiny,
        sentences=args.sentences,
        one_texts=one_texts,
        models_dir=args.models_dir,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(markdown(result))
    return 0


def _internal(args: argparse.Namespace, sentences: int, one_texts: int) -> int:
    what, *rest = args.command
    if what == "build":
        models_dir = args.models_dir or default_models_dir(args.tiny)
        models_dir.mkdir(parents=True, exist_ok=True)
        result = build_one(ARCHS[rest[0]], folder_of(models_dir, rest[0]), args.tiny)
    elif what == "lazy":
        folder, mode, cache = rest
        result = measure_lazy(Path(folder), mode, Path(cache), args.threads, sentences, one_texts)
    elif what == "st":
        dtype = rest[1] if len(rest) > 1 else None
        result = measure_st(Path(rest[0]), args.threads, sentences, one_texts, dtype)
    else:
        raise SystemExit(f"unknown command {what!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
