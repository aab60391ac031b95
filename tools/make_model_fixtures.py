"""Write tests/fixtures/models/: tiny random-weight sentence-transformers models and their vectors.

lazyembed must serve any BERT or XLM-RoBERTa sentence-transformers model exactly as
sentence-transformers computes it, and tests must not download anything. So this script
builds small models (fixed seeds, tokenizers trained here on text CPython ships), saves
them with sentence-transformers, rewrites some into the classic on-disk layout of most
hub models, and records sentence-transformers' own vectors for a fixed list of texts.
It needs torch, so it runs in its own venv and never in CI:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0        # CPU build; never plain `torch`
    .venv-ref/bin/pip install sentence-transformers transformers sentencepiece protobuf
    .venv-ref/bin/python tools/make_model_fixtures.py

Some fixtures stand for what the hub ships beyond BERT/XLM-R: an MPNet, a Qwen3 decoder
(left padding, last-token pooling, an EOS from the post-processor), a hub-form NomicBert,
a ModernBERT and an EmbeddingGemma-style Gemma3 (Dense chain kept outside the graph) given
only as their ONNX export (`torch.onnx.export`, TorchScript exporter: `pip install onnx`
into the reference venv), and a BERT with a Dense chain. (tools/make_st_onnx_fixtures.py
adds exports made by sentence-transformers' own ONNX backend, in a venv of its own.)

Others are given only as model.safetensors, for the converters of issue 22 (torch-free
graphs): MPNet, NomicBert in the form transformers 5 uses inside (q_proj, up_proj, ...)
and in the hub's form of nomic-embed-text-v1.5 (n_embd, attn.Wqkv, fc11, ...: transformers
5.24 cannot read that config.json, so its vectors come from the same weights under the
transformers 5 config, checked to give the same last_hidden_state), ModernBERT (global and
8-token local attention), Qwen3 (bf16, GQA; one truncating at 16 tokens) and an
EmbeddingGemma-style Gemma3 text model (bidirectional, sliding and full layers, bf16, two
Dense layers). bf16 weights are rounded first, and every reference is computed in fp32
with eager attention. Their manifest entries say "native": "pending" until lazyembed
converts the architecture (NATIVE below).

sentencepiece only supplies the nmt_nfkc normalisation table that real XLM-R tokenizers
carry (the Unigram vocabulary itself is trained with `tokenizers`). Each fixture folder
gets a reference.json; tests/fixtures/models/manifest.json lists every fixture.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import io
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    Gemma3TextConfig,
    Gemma3TextModel,
    ModernBertConfig,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    NomicBertConfig,
    NomicBertModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3Model,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "models"
VOCABULARIES = OUT / "vocabularies.json"
CPYTHON_TEST = (
    Path(sys.base_prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "test"
)

#: Architectures lazyembed converts from model.safetensors today; a fixture of another one
#: without an ONNX export gets "native": "pending" in the manifest until its converter lands.
NATIVE = ("bert", "xlm-roberta", "mpnet", "nomic_bert", "modernbert", "qwen3", "gemma3_text")
INITIALIZER_RANGE = 0.2  # larger than BERT's 0.02 so that vectors of different texts differ clearly
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 as in XLM-R; <mask> is appended last
PROMPTS = {"query": "query: ", "document": "passage: "}
NOMIC_PROMPTS = {  # nomic-embed-text-v1.5's config_sentence_transformers.json
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}
QWEN3_PROMPTS = {  # Qwen3-Embedding's query instruction ("document" is empty there)
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer "
    "the query\nQuery:"
}
GEMMA_PROMPTS = {  # two of EmbeddingGemma's task prompts
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
}
#: Reference vectors are computed in fp32 with eager attention (never flash or bf16 math).
ST_MODEL_KWARGS: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager"}
POOLING_FLAGS = {  # classic 1_Pooling/config.json key for each sentence-transformers pooling mode
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass(frozen=True)
class Spec:
    """One fixture: model shape, pooling, tokenizer options and on-disk layout."""

    name: str
    #: "bert" | "xlm-roberta" | "mpnet" | "qwen3" | "nomic_bert" | "modernbert" | "gemma3_text"
    arch: str
    #: "st6" (what model.save() writes) | "classic" (hub form) | "nomic-hub" (classic module
    #: files, and config.json and model.safetensors as nomic-ai/nomic-embed-text-v1.5 has them)
    layout: str
    pooling: str
    normalize: bool
    max_seq_length: int | None = 128  # None: absent everywhere (classic only)
    hidden: int = 32
    heads: int = 2
    intermediate: int = 64
    layers: int = 2
    seed: int = 13
    cased_tokenizer: bool = False
    do_lower_case: bool = (
        False  # sentence_bert_config.json's flag (lowercases before the tokenizer)
    )
    include_prompt: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    tokenizer_model_max_length: int | None = None  # classic: tokenizer_config's own value
    #: classic XLM-R: tokenizer_config.json's class. "TokenizersBackend" re-saves the tokenizer
    #: through transformers' TokenizersBackend (what transformers 5 writes for a tokenizer
    #: loaded that way): tokenizer.json kept as it is, bare Metaspace included.
    tokenizer_class: str = "XLMRobertaTokenizer"
    #: Replace model.safetensors by the transformer's ONNX export at onnx/model.onnx (after
    #: the reference vectors are computed from the torch model), as the hub ships exports.
    onnx_export: bool = False
    #: Dense modules after the pooling: (out_features, torch.nn activation class name).
    dense: tuple[tuple[int, str], ...] = ()
    dense_bias: bool = True
    #: Store model.safetensors in bfloat16 (as Qwen and Gemma ship); the weights are rounded
    #: to bf16 first, so the fp32 reference is of exactly the stored values.
    bf16: bool = False


SPECS = [
    Spec(
        "bert-mean-norm", "bert", "st6", "mean", True, hidden=48, heads=4, intermediate=96, seed=1
    ),
    Spec(
        "bert-classic-mean-norm",
        "bert",
        "classic",
        "mean",
        True,
        hidden=48,
        heads=4,
        intermediate=96,
        seed=1,
        tokenizer_model_max_length=512,
    ),
    Spec("bert-cls", "bert", "st6", "cls", False, seed=2),
    Spec(
        "bert-classic-max", "bert", "classic", "max", False, seed=3, tokenizer_model_max_length=512
    ),
    Spec("bert-mean-sqrt-len", "bert", "st6", "mean_sqrt_len_tokens", False, seed=4),
    Spec(
        "bert-classic-weightedmean-norm",
        "bert",
        "classic",
        "weightedmean",
        True,
        seed=5,
        tokenizer_model_max_length=512,
    ),
    Spec("bert-lasttoken", "bert", "st6", "lasttoken", False, seed=6),
    Spec(
        "bert-classic-prompts",
        "bert",
        "classic",
        "mean",
        True,
        seed=7,
        prompts=PROMPTS,
        tokenizer_model_max_length=512,
    ),
    Spec(
        "bert-default-prompt",
        "bert",
        "st6",
        "mean",
        True,
        seed=8,
        prompts=PROMPTS,
        default_prompt_name="query",
    ),
    Spec(
        "bert-classic-exclude-prompt",
        "bert",
        "classic",
        "mean",
        True,
        seed=9,
        prompts=PROMPTS,
        include_prompt=False,
        tokenizer_model_max_length=512,
    ),
    Spec(
        "bert-classic-cased-lowercase",
        "bert",
        "classic",
        "cls",
        True,
        seed=10,
        cased_tokenizer=True,
        do_lower_case=True,
        tokenizer_model_max_length=512,
    ),
    Spec("bert-short", "bert", "st6", "mean", False, max_seq_length=16, seed=11),
    Spec(
        "bert-classic-no-seq-length", "bert", "classic", "mean", True, max_seq_length=None, seed=12
    ),
    Spec("xlmr-mean-norm", "xlm-roberta", "st6", "mean", True, heads=4, seed=21),
    Spec(
        "xlmr-classic-cls",
        "xlm-roberta",
        "classic",
        "cls",
        False,
        heads=4,
        seed=22,
        tokenizer_model_max_length=512,
    ),
    # One model and one hub tokenizer.json (bare Metaspace) under two tokenizer classes:
    # transformers rebuilds the pre-tokenizer for XLMRobertaTokenizer(Fast) (whitespace split
    # first) and takes tokenizer.json as it is for TokenizersBackend.
    Spec(
        "xlmr-classic-fast-class",
        "xlm-roberta",
        "classic",
        "mean",
        True,
        heads=4,
        seed=23,
        tokenizer_model_max_length=512,
        tokenizer_class="XLMRobertaTokenizerFast",
    ),
    Spec(
        "xlmr-classic-tokenizers-backend",
        "xlm-roberta",
        "classic",
        "mean",
        True,
        heads=4,
        seed=23,
        tokenizer_model_max_length=512,
        tokenizer_class="TokenizersBackend",
    ),
    # An architecture lazyembed does not convert, given only as its ONNX export.
    Spec(
        "mpnet-onnx-mean-norm",
        "mpnet",
        "st6",
        "mean",
        True,
        seed=31,
        prompts=PROMPTS,
        onnx_export=True,
    ),
    # A decoder, Qwen3-Embedding style: causal, last-token pooling, left padding, an EOS
    # appended by tokenizer.json's post-processor; its export takes position_ids.
    Spec(
        "qwen3-onnx-lasttoken-left",
        "qwen3",
        "st6",
        "lasttoken",
        True,
        seed=51,
        prompts=PROMPTS,
        onnx_export=True,
    ),
    # A Dense chain after the pooling (EmbeddingGemma-style, tiny), then Normalize.
    Spec(
        "bert-dense-chain",
        "bert",
        "st6",
        "mean",
        True,
        seed=41,
        dense=((64, "Tanh"), (32, "Identity")),
    ),
    # Architectures lazyembed is to convert natively from model.safetensors alone (issue 22).
    Spec("mpnet-mean-norm", "mpnet", "st6", "mean", True, seed=61, prompts=PROMPTS),
    # Qwen3-Embedding style again (left padding, EOS from the post-processor, last-token
    # pooling), stored in bf16, with head_dim != hidden / heads and 4 query heads on 2 kv heads.
    Spec(
        "qwen3-lasttoken-left",
        "qwen3",
        "st6",
        "lasttoken",
        True,
        heads=4,
        seed=62,
        prompts=QWEN3_PROMPTS,
        bf16=True,
    ),
    Spec(
        "qwen3-lasttoken-short",
        "qwen3",
        "st6",
        "lasttoken",
        True,
        max_seq_length=16,
        heads=4,
        seed=63,
        prompts=QWEN3_PROMPTS,
        bf16=True,
    ),
    # NomicBert as transformers 5 names it inside (q_proj/k_proj/v_proj, up_proj/gate_proj:
    # save_pretrained(save_original_format=False)) and in the hub's form (n_embd, attn.Wqkv, ...).
    Spec("nomic-tf5-mean-norm", "nomic_bert", "st6", "mean", True, seed=64, prompts=NOMIC_PROMPTS),
    Spec(
        "nomic-hub-mean-norm",
        "nomic_bert",
        "nomic-hub",
        "mean",
        True,
        hidden=48,
        heads=4,
        intermediate=96,
        seed=65,
        prompts=NOMIC_PROMPTS,
        tokenizer_model_max_length=8192,
    ),
    # gte-modernbert style: CLS pooling; global and 8-token local attention layers.
    Spec("modernbert-cls", "modernbert", "st6", "cls", True, layers=3, seed=66),
    # EmbeddingGemma style: bidirectional Gemma3 text, mean pooling, two Dense layers without
    # bias (hidden -> 4 hidden -> hidden), Normalize; bf16 weights.
    Spec(
        "gemma3-mean-dense",
        "gemma3_text",
        "st6",
        "mean",
        True,
        layers=3,
        seed=67,
        prompts=GEMMA_PROMPTS,
        dense=((128, "Identity"), (32, "Identity")),
        dense_bias=False,
        bf16=True,
    ),
    # The other 2026 architectures given only as their ONNX export (issue 21): NomicBert in
    # the hub's form (config.json and Dense-free folder as nomic-embed-text-v1.5 ships it),
    # ModernBERT (global and 8-token local attention), and EmbeddingGemma-style Gemma3 with
    # its Dense chain outside the graph (as sentence-transformers' ONNX backend keeps it).
    Spec(
        "nomic-onnx-mean-norm",
        "nomic_bert",
        "nomic-hub",
        "mean",
        True,
        hidden=48,
        heads=4,
        intermediate=96,
        seed=71,
        prompts=NOMIC_PROMPTS,
        tokenizer_model_max_length=8192,
        onnx_export=True,
    ),
    Spec(
        "modernbert-onnx-cls", "modernbert", "st6", "cls", True, layers=3, seed=72, onnx_export=True
    ),
    Spec(
        "gemma3-onnx-mean-dense",
        "gemma3_text",
        "st6",
        "mean",
        True,
        layers=3,
        seed=73,
        prompts=GEMMA_PROMPTS,
        dense=((128, "Identity"), (32, "Identity")),
        dense_bias=False,
        onnx_export=True,
    ),
]


# --------------------------------------------------------------------------- texts


def corpus() -> tuple[list[str], list[str]]:
    """The fidelity corpus' texts and their case labels."""
    data = json.loads((FIXTURES / "reference_corpus.json").read_text(encoding="utf-8"))
    return list(data["texts"]), list(data["cases"])


def reference_texts() -> list[str]:
    """The fixed texts every fixture is encoded on: edge cases, non-ASCII, short and long."""
    texts, cases = corpus()
    picked: list[str] = []
    wanted = {
        "empty": 1,
        "whitespace": 4,
        "emoji": 3,
        "single-word": 3,
        "mixed-case": 2,
        "punctuation": 2,
        "control": 2,
        "non-ascii": 7,
        "sentence-5-9": 2,
        "sentence-10-19": 2,
        "sentence-20-39": 1,
        "sentence-40-60": 1,
        "long": 2,
    }
    for text, case in zip(texts, cases, strict=True):
        if wanted.get(case, 0) > 0:
            wanted[case] -= 1
            # Long texts are cut to a prefix that is still far over every max_seq_length.
            picked.append(text[:1500] if case == "long" else text)
    picked += [
        "Café, naïve, résumé, Ångström, Œuvre, façade — ÉCOLE",
        "two  spaces,   three spaces and a trailing space ",
        "  leading spaces",
        "".join(c if c == " " else chr(ord(c) + 0xFEE0) for c in "fullwidth ABC 123")
        + " and the ligature \ufb01",
    ]
    return picked


def bert_training_texts() -> list[str]:
    return corpus()[0]


def xlmr_training_texts() -> list[str]:
    """Non-ASCII-heavy real text: CPython's CJK and encoding test prose, then the corpus."""
    out: list[str] = []
    for path in sorted((CPYTHON_TEST / "cjkencodings").glob("*-utf8.txt")):
        out += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for name, encoding in (("module_iso_8859_1.py", "iso-8859-1"), ("module_koi8_r.py", "koi8-r")):
        out += (CPYTHON_TEST / "encoded_modules" / name).read_text(encoding=encoding).splitlines()
    return out + corpus()[0]


# ----------------------------------------------------------------------- tokenizers


def train_bert_vocab(cased: bool) -> list[str]:
    """A WordPiece vocabulary (800 pieces, 200 characters) trained on the corpus, MiniLM-style."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=not cased)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=BERT_SPECIALS, limit_alphabet=200, show_progress=False
    )
    tok.train_from_iterator(bert_training_texts(), trainer)
    # WordPiece ids carry no meaning and the trainer numbers pieces in hash order: number them here.
    return BERT_SPECIALS + sorted(set(tok.get_vocab()) - set(BERT_SPECIALS))


def train_xlmr_vocab(charsmap: bytes) -> list[tuple[str, float]]:
    """A Unigram vocabulary trained like XLM-R's: nmt_nfkc, Metaspace, <s> <pad> </s> <unk> 0..3."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=XLMR_SPECIALS,
        unk_token="<unk>",
        max_piece_length=8,
        show_progress=False,
    )
    tok.train_from_iterator(xlmr_training_texts(), trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    assert [p for p, _ in vocab[:4]] == XLMR_SPECIALS, vocab[:4]
    return [*vocab, ("<mask>", 0.0)]


def vocabularies(charsmap: bytes, retrain: bool) -> dict[str, Any]:
    """The trained vocabularies, kept in VOCABULARIES once trained.

    The `tokenizers` trainers break ties in hash order, so each training run gives a slightly
    different vocabulary; keeping the first one makes every later run rebuild the same fixtures.
    """
    if VOCABULARIES.is_file() and not retrain:
        return dict(json.loads(VOCABULARIES.read_text(encoding="utf-8")))
    vocabs = {
        "bert-uncased": train_bert_vocab(cased=False),
        "bert-cased": train_bert_vocab(cased=True),
        "xlm-roberta": train_xlmr_vocab(charsmap),
    }
    VOCABULARIES.parent.mkdir(parents=True, exist_ok=True)
    write_reference(VOCABULARIES, vocabs)
    return vocabs


def eos_left_tokenizer(pieces: list[str], max_length: int | None) -> PreTrainedTokenizerFast:
    """The uncased WordPiece vocabulary as a decoder's tokenizer: no [CLS], an EOS ([SEP])
    appended by tokenizer.json's TemplateProcessing, padding on the left (Qwen3-Embedding's
    layout)."""
    from tokenizers import processors

    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1", special_tokens=[("[SEP]", 3)]
    )
    kwargs: dict[str, Any] = {} if max_length is None else {"model_max_length": max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[SEP]",
        padding_side="left",
        **kwargs,
    )


def bert_tokenizer(pieces: list[str], cased: bool, max_length: int | None) -> BertTokenizer:
    kwargs: dict[str, Any] = {} if max_length is None else {"model_max_length": max_length}
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return BertTokenizer(vocab=vocab, do_lower_case=not cased, **kwargs)


def xlmr_tokenizer(
    pieces: list[list[Any]], charsmap: bytes, max_length: int | None
) -> XLMRobertaTokenizer:
    kwargs: dict[str, Any] = {} if max_length is None else {"model_max_length": max_length}
    vocab = [(str(piece), float(score)) for piece, score in pieces]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap, **kwargs)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in [*XLMR_SPECIALS, "<mask>"]]
    assert ids == [0, 1, 2, 3, len(vocab) - 1], ids
    return tokenizer


def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's nmt_nfkc normalisation table, the one XLM-R's tokenizer.json embeds."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a tiny model only to get the normalisation table"] * 20),
        model_writer=buffer,
        vocab_size=20,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


# --------------------------------------------------------------------------- models


#: Window sizes of the sliding-window fixtures: short, so that many reference texts are longer.
LOCAL_WINDOW = 8


def hf_config(spec: Spec, vocab_size: int) -> PreTrainedConfig:
    """The transformers config of the fixture's encoder (the BERT vocabulary's [PAD] 0,
    [CLS] 2, [SEP] 3 serve as pad, bos/cls and eos/sep where the model has them)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        initializer_range=INITIALIZER_RANGE,
        pad_token_id=0,
    )
    specials = dict(bos_token_id=2, eos_token_id=3)
    if spec.arch == "bert":
        return BertConfig(max_position_embeddings=130, **common)
    if spec.arch == "mpnet":  # positions count from 1 past [PAD]
        return MPNetConfig(max_position_embeddings=130, **specials, **common)
    if spec.arch == "qwen3":  # grouped-query attention: query heads share key/value heads
        return Qwen3Config(
            num_key_value_heads=max(1, spec.heads // 2),
            # Explicit; for 4 heads it differs from hidden / heads, which Qwen3 allows.
            head_dim=16,
            max_position_embeddings=256,
            eos_token_id=3,
            **common,
        )
    if spec.arch == "nomic_bert":  # transformers 5 applies rotary to the whole head
        theta = 1000.0 if spec.layout == "nomic-hub" else 500.0
        return NomicBertConfig(
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": theta},
            **common,
        )
    if spec.arch == "modernbert":
        return ModernBertConfig(
            global_attn_every_n_layers=2,  # full, sliding, full
            local_attention=LOCAL_WINDOW,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            max_position_embeddings=256,
            cls_token_id=2,
            sep_token_id=3,
            **specials,
            **common,
        )
    if spec.arch == "gemma3_text":
        return Gemma3TextConfig(
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=12,  # != head_dim: scores are scaled by 12 ** -0.5
            hidden_activation="gelu_pytorch_tanh",
            use_bidirectional_attention=True,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            sliding_window=LOCAL_WINDOW,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            max_position_embeddings=256,
            **specials,
            **common,
        )
    assert spec.arch == "xlm-roberta", spec.arch
    return XLMRobertaConfig(
        max_position_embeddings=130,
        type_vocab_size=1,
        **{**common, "pad_token_id": 1},
        bos_token_id=0,
        eos_token_id=2,
    )


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "bert": BertModel,
    "xlm-roberta": XLMRobertaModel,
    "mpnet": MPNetModel,
    "qwen3": Qwen3Model,
    "nomic_bert": NomicBertModel,
    "modernbert": ModernBertModel,
    "gemma3_text": Gemma3TextModel,
}


def build_hf_model(spec: Spec, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(spec.seed)
    model = MODEL_CLASSES[spec.arch](hf_config(spec, vocab_size))
    if spec.bf16:  # the values bf16 can hold, kept in fp32 for the reference
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(torch.bfloat16).float())
    return model


def build_st_model(spec: Spec, hf_dir: Path) -> SentenceTransformer:
    kwargs: dict[str, Any] = {"do_lower_case": spec.do_lower_case}
    if spec.max_seq_length is not None:
        kwargs["max_seq_length"] = spec.max_seq_length
    transformer = Transformer(str(hf_dir), model_kwargs=dict(ST_MODEL_KWARGS), **kwargs)
    dim = transformer.get_embedding_dimension()
    modules: list[torch.nn.Module] = [
        transformer,
        Pooling(dim, pooling_mode=spec.pooling, include_prompt=spec.include_prompt),
    ]
    width = dim
    for out_features, activation in spec.dense:
        modules.append(
            Dense(
                width,
                out_features,
                bias=spec.dense_bias,
                activation_function=getattr(torch.nn, activation)(),
            )
        )
        width = out_features
    if spec.normalize:
        modules.append(Normalize())
    return SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts=dict(spec.prompts),
        default_prompt_name=spec.default_prompt_name,
    )


def build_fixture(
    spec: Spec, folder: Path, work: Path, charsmap: bytes, vocabs: dict[str, Any]
) -> None:
    """Save the model as sentence-transformers does, then (classic) rewrite it into the hub form."""
    length = spec.max_seq_length
    if spec.arch == "xlm-roberta":
        tokenizer: Any = xlmr_tokenizer(vocabs["xlm-roberta"], charsmap, length)
    elif spec.arch == "qwen3":
        tokenizer = eos_left_tokenizer(vocabs["bert-uncased"], length)
    else:  # the encoders with a BERT-style [CLS] ... [SEP] vocabulary
        cased = spec.cased_tokenizer
        tokenizer = bert_tokenizer(vocabs["bert-cased" if cased else "bert-uncased"], cased, length)
    hf_dir = work / spec.name
    build_hf_model(spec, len(tokenizer)).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    model = build_st_model(spec, hf_dir)
    texts = reference_texts()
    intended = model.encode(texts, convert_to_numpy=True)
    shutil.rmtree(folder, ignore_errors=True)
    model.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    if spec.arch == "nomic_bert" and spec.layout == "st6":
        save_transformers_names(model, folder)
    if spec.bf16:
        store_bf16(folder)
    if spec.layout in ("classic", "nomic-hub"):
        write_classic_layout(spec, folder, tokenizer)
    # The folder must load back into the very model that was built (sentence-transformers 6.2
    # does not save do_lower_case, so such a model is only checked in the classic layout).
    saved = load_st(folder)
    reloaded = saved.encode(texts, convert_to_numpy=True)
    if spec.tokenizer_class == "TokenizersBackend":
        # Its tokenizer keeps the lone "▁" pieces of leading and trailing whitespace (no
        # whitespace split first): those texts differ on purpose, all others must not.
        same = [
            i for i, t in enumerate(texts) if tokenizer(t).input_ids == saved.tokenizer(t).input_ids
        ]
        differ = sorted(set(range(len(texts))) - set(same))
        print(f"{spec.name}: texts tokenized differently on purpose: {differ}")
        intended, reloaded = intended[same], reloaded[same]
    if not np.array_equal(intended, reloaded):
        raise SystemExit(
            f"{spec.name}: the saved folder gives other vectors than the model built "
            f"(max diff {np.abs(intended - reloaded).max()})"
        )


def load_st(folder: Path) -> SentenceTransformer:
    return SentenceTransformer(str(folder), device="cpu", model_kwargs=dict(ST_MODEL_KWARGS))


def save_transformers_names(model: SentenceTransformer, folder: Path) -> None:
    """Rewrite model.safetensors with the names transformers 5 uses inside (q_proj, ...):
    its save_pretrained turns them back into the checkpoint's (Wqkv, ...) by default."""
    with tempfile.TemporaryDirectory() as tmp:
        model[0].auto_model.save_pretrained(tmp, save_original_format=False)
        shutil.copyfile(Path(tmp) / "model.safetensors", folder / "model.safetensors")


def store_bf16(folder: Path) -> None:
    """model.safetensors in bfloat16 and config.json saying so, as Qwen and Gemma ship."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    assert all(torch.equal(bf16[k].float(), v) for k, v in tensors.items() if v.is_floating_point())
    save_file(bf16, str(path), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    write_json(folder / "config.json", {**config, "dtype": "bfloat16"})


# -------------------------------------------------------------------- classic layout


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_classic_layout(spec: Spec, folder: Path, tokenizer: Any) -> None:
    """Rewrite the module configs and tokenizer files into the form most hub models have."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if spec.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    write_json(folder / "modules.json", modules)
    shutil.rmtree(folder / "2_Normalize", ignore_errors=True)  # hub repos have no empty folder

    bert_config: dict[str, Any] = {"do_lower_case": spec.do_lower_case}
    if spec.max_seq_length is not None:
        bert_config = {"max_seq_length": spec.max_seq_length, **bert_config}
    write_json(folder / "sentence_bert_config.json", bert_config)

    dim = json.loads((folder / "config.json").read_text())["hidden_size"]
    pooling: dict[str, Any] = {"word_embedding_dimension": dim}
    pooling.update({flag: mode == spec.pooling for mode, flag in POOLING_FLAGS.items()})
    pooling["include_prompt"] = spec.include_prompt
    write_json(folder / "1_Pooling" / "config.json", pooling)

    st_config: dict[str, Any] = {
        "__version__": {
            "sentence_transformers": "2.2.2",
            "transformers": "4.28.1",
            "pytorch": "2.0.0",
        }
    }
    if spec.prompts:
        st_config.update(
            prompts=dict(spec.prompts),
            default_prompt_name=spec.default_prompt_name,
            similarity_fn_name="cosine",
        )
    write_json(folder / "config_sentence_transformers.json", st_config)
    if spec.arch == "xlm-roberta":
        classic_xlmr_tokenizer_files(spec, folder)
    else:
        classic_bert_tokenizer_files(spec, folder, tokenizer)


def classic_tokenizer_config(
    spec: Spec, specials: dict[str, str], extra: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {**extra, **specials, "clean_up_tokenization_spaces": True}
    if spec.tokenizer_model_max_length is not None:
        config["model_max_length"] = spec.tokenizer_model_max_length
    return config


def classic_bert_tokenizer_files(spec: Spec, folder: Path, tokenizer: Any) -> None:
    specials = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    extra = {
        "do_lower_case": not spec.cased_tokenizer,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "tokenizer_class": "BertTokenizer",
    }
    write_json(folder / "tokenizer_config.json", classic_tokenizer_config(spec, specials, extra))
    write_json(folder / "special_tokens_map.json", specials)
    # sentence-transformers bakes do_lower_case's Lowercase into the tokenizer.json it saves; a hub
    # folder has the tokenizer's own normaliser only, and the flag in sentence_bert_config.json.
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if data["normalizer"]["type"] == "Sequence":
        (data["normalizer"],) = [
            n for n in data["normalizer"]["normalizers"] if n["type"] != "Lowercase"
        ]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{piece}\n" for piece, _ in vocab), encoding="utf-8")
    # MiniLM's tokenizer.json truncates and pads to 128; sentence-transformers overrides both.
    data["truncation"] = {
        "direction": "Right",
        "max_length": 128,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    data["padding"] = {
        "strategy": {"Fixed": 128},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    write_json(folder / "tokenizer.json", data)


def classic_xlmr_tokenizer_files(spec: Spec, folder: Path) -> None:
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    extra = {"tokenizer_class": spec.tokenizer_class}
    write_json(folder / "tokenizer_config.json", classic_tokenizer_config(spec, specials, extra))
    write_json(folder / "special_tokens_map.json", specials)
    # XLM-R's hub tokenizer.json: Precompiled, then runs of spaces collapsed; Metaspace alone.
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    precompiled = copy.deepcopy(data["normalizer"])
    assert precompiled["type"] == "Precompiled", precompiled
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            precompiled,
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ],
    }
    data["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "▁",
        "prepend_scheme": "always",
        "split": True,
    }
    write_json(folder / "tokenizer.json", data)
    if spec.tokenizer_class == "TokenizersBackend":
        resave_as_tokenizers_backend(folder)


def resave_as_tokenizers_backend(folder: Path) -> None:
    """Load the folder's tokenizer as transformers' TokenizersBackend and save it again.

    transformers 5 then writes ``"tokenizer_class": "TokenizersBackend"`` and tokenizer.json
    as it is (the hub's bare Metaspace pre-tokenizer), its own tokenizer_config.json keys.
    """
    from transformers import TokenizersBackend

    with tempfile.TemporaryDirectory() as tmp:
        TokenizersBackend.from_pretrained(str(folder)).save_pretrained(tmp)
        saved = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert saved["tokenizer_class"] == "TokenizersBackend", saved
        for name in ("tokenizer_config.json", "tokenizer.json"):
            shutil.copyfile(Path(tmp) / name, folder / name)
    (folder / "special_tokens_map.json").unlink(missing_ok=True)  # transformers 5 writes none


# ---------------------------------------------------------------- nomic hub form

#: nomic-ai/nomic-embed-text-v1.5's config.json apart from the sizes (its custom code's keys).
NOMIC_HUB_CONFIG: dict[str, Any] = {
    "activation_function": "swiglu",
    "architectures": ["NomicBertModel"],
    "attn_pdrop": 0.0,
    "auto_map": {
        "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
        "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
        "AutoModelForMaskedLM": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert."
        "NomicBertForPreTraining",
    },
    "bos_token_id": None,
    "causal": False,
    "dense_seq_output": True,
    "embd_pdrop": 0.0,
    "eos_token_id": None,
    "fused_bias_fc": True,
    "fused_dropout_add_ln": True,
    "max_trained_positions": 2048,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "model_type": "nomic_bert",
    "pad_vocab_size_multiple": 64,
    "parallel_block": False,
    "parallel_block_tied_norm": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "torch_dtype": "float32",
    "transformers_version": "4.37.2",
    "use_cache": True,
    "use_flash_attn": True,
    "use_rms_norm": False,
    "use_xentropy": True,
}
#: transformers 5 config key for each hub key that carries a size or constant of the model.
NOMIC_HUB_KEYS = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    "layer_norm_epsilon": "layer_norm_eps",
    "initializer_range": "initializer_range",
    "type_vocab_size": "type_vocab_size",
    "vocab_size": "vocab_size",
}


def nomic_config_from_hub(hub: dict[str, Any]) -> NomicBertConfig:
    """The transformers 5 config of a hub-form NomicBert (transformers 5.24 reads none of
    the hub's keys: AutoConfig gives its 768-wide defaults for such a config.json)."""
    assert hub["rotary_emb_fraction"] == 1.0 and not hub["qkv_proj_bias"], hub
    return NomicBertConfig(
        **{ours: hub[theirs] for theirs, ours in NOMIC_HUB_KEYS.items()},
        rope_parameters={"rope_type": "default", "rope_theta": float(hub["rotary_emb_base"])},
        pad_token_id=0,
    )


def write_nomic_hub_form(folder: Path, texts: list[str]) -> None:
    """config.json with the hub's keys; model.safetensors already has the hub's names
    (transformers 5's save_pretrained inverts its nomic_bert conversion mapping: Wqkv from
    q/k/v_proj, fc11/fc12/fc2 from up/gate/down_proj, emb_ln, norm1/norm2, encoder.layers).
    Checks that the rewritten folder gives the same last_hidden_state."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert {"emb_ln.weight", "encoder.layers.0.attn.Wqkv.weight"} <= names, sorted(names)
    assert "encoder.layers.0.mlp.fc11.weight" in names, sorted(names)
    tf5 = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    before = NomicBertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = load_st(folder).tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hub = {
        **NOMIC_HUB_CONFIG,
        **{theirs: tf5[ours] for theirs, ours in NOMIC_HUB_KEYS.items()},
        "rotary_emb_base": tf5["rope_parameters"]["rope_theta"],
    }
    write_json(folder / "config.json", dict(sorted(hub.items())))
    config = nomic_config_from_hub(hub)
    after = NomicBertModel.from_pretrained(
        str(folder), config=config, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        want, got = before(**batch).last_hidden_state, after(**batch).last_hidden_state
    if not torch.equal(want, got):
        raise SystemExit(f"{folder.name}: hub form differs by {(want - got).abs().max()}")
    print(f"{folder.name}: hub form loads into the same last_hidden_state {tuple(got.shape)}")


# ------------------------------------------------------------------------ ONNX export


class _LastHiddenState(torch.nn.Module):
    """The Hugging Face model with the one output the hub's feature-extraction exports have."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _DecoderLastHiddenState(torch.nn.Module):
    """A decoder with the inputs onnx-community's exports give it: position_ids and the
    key/value cache of every layer (``past_key_values.{i}.key``/``.value``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> torch.Tensor:
        from transformers import DynamicCache

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


class _BidirectionalWindows(torch.nn.Module):
    """Gemma3 text with use_bidirectional_attention, its two masks built here with plain
    tensor ops (the TorchScript tracer fails inside transformers' mask functions): the
    masks transformers makes, padding for full attention and padding and
    |q - k| < sliding_window for sliding attention, added to the scores as 0 or fp32 min."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.window = int(model.config.sliding_window)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask[:, None, None, :].bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        near = (positions[:, None] - positions[None, :]).abs() < self.window
        lowest = torch.finfo(torch.float32).min
        zero = torch.zeros((), dtype=torch.float32)
        masks = {
            "full_attention": torch.where(keep, zero, lowest),
            "sliding_attention": torch.where(keep & near[None, None], zero, lowest),
        }
        return self.model(input_ids=input_ids, attention_mask=masks).last_hidden_state


def export_transformer(folder: Path) -> None:
    """Export the folder's transformer (read in fp32) to onnx/model.onnx: inputs input_ids
    and attention_mask, plus position_ids and past_key_values.* for a decoder, as
    onnx-community's exports have; output last_hidden_state; dynamic batch and sequence,
    as optimum's feature-extraction export names them. Modules after the transformer
    (Pooling, Dense, Normalize) stay outside the graph, as in sentence-transformers' ONNX
    backend. main() then removes model.safetensors."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = (ids != 0).long()
    args: tuple[torch.Tensor, ...] = (ids, mask)
    names = ["input_ids", "attention_mask"]
    model: torch.nn.Module = _LastHiddenState(hf)
    if hf.config.model_type == "gemma3_text":
        model = _BidirectionalWindows(hf)
    dynamic = {0: "batch_size", 1: "sequence_length"}
    axes: dict[str, dict[int, str]] = {}
    if hf.config.model_type == "qwen3":
        ids, mask = ids.flip(1), mask.flip(1)  # left padded, as the model is used
        config = hf.config
        past_shape = (2, config.num_key_value_heads, 0, config.head_dim)  # an empty cache
        past_names = [
            f"past_key_values.{i}.{kv}"
            for i in range(config.num_hidden_layers)
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
        model = _DecoderLastHiddenState(hf)
    (folder / "onnx").mkdir(exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(folder / "onnx" / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={
                **{name: dynamic for name in [*names, "last_hidden_state"]},
                **axes,
            },
            opset_version=17,
            dynamo=False,
        )


# ------------------------------------------------------------------------ reference


def write_reference(path: Path, ref: dict[str, Any]) -> None:
    """One key a line: the metadata stays readable, the arrays stay compact."""
    lines = [
        f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
        for k, v in ref.items()
    ]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def as_lists(vectors: np.ndarray) -> list[list[float]]:
    """float32 values written with 9 significant digits, which round-trip exactly."""
    return [[float(f"{x:.9g}") for x in row] for row in vectors.astype(np.float32)]


def versions() -> dict[str, str]:
    names = (
        "sentence-transformers",
        "transformers",
        "torch",
        "tokenizers",
        "numpy",
        "sentencepiece",
    )
    out = {name: importlib.metadata.version(name) for name in names}
    out["python"] = sys.version.split()[0]
    return out


def st_input_ids(
    model: SentenceTransformer, texts: list[str], prompt: str | None
) -> list[list[int]]:
    ids = []
    for text in texts:
        features = model.preprocess([text], prompt=prompt) if prompt else model.preprocess([text])
        ids.append([int(i) for i in features["input_ids"][0].tolist()])
    return ids


def raw_tokenizer_ids(spec: Spec, folder: Path, max_len: int, texts: list[str]) -> list[list[int]]:
    """What tokenizer.json alone gives (plus the Lowercase step sentence-transformers adds)."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if spec.do_lower_case:
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), tok.normalizer])
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return [enc.ids for enc in tok.encode_batch(texts)]


def reference(spec: Spec, folder: Path, texts: list[str]) -> dict[str, Any]:
    model = load_st(folder)
    vectors = model.encode(texts, convert_to_numpy=True)
    max_len = int(model.max_seq_length)
    ref: dict[str, Any] = {
        "name": spec.name,
        "layout": spec.layout,
        "architecture": spec.arch,
        "dimension": int(model.get_embedding_dimension()),
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "max_seq_length": max_len,
        "max_seq_length_in_sentence_bert_config": spec.layout in ("classic", "nomic-hub")
        and spec.max_seq_length is not None,
        "do_lower_case": spec.do_lower_case,
        "include_prompt": spec.include_prompt,
        "prompts": dict(spec.prompts),
        "default_prompt_name": spec.default_prompt_name,
        "hidden_size": spec.hidden,
        "vocab_size": len(model.tokenizer),
        "versions": versions(),
        "encode": 'SentenceTransformer(folder, device="cpu", model_kwargs={"dtype": torch.float32, '
        '"attn_implementation": "eager"}).encode(texts, convert_to_numpy=True)',
        "texts": texts,
        "vectors": as_lists(vectors),
    }
    applied = spec.prompts.get(spec.default_prompt_name or "")
    ref["input_ids"] = st_input_ids(model, texts, applied)
    raw = raw_tokenizer_ids(spec, folder, max_len, [(applied or "") + t for t in texts])
    ref["tokenizer_json_differs"] = [
        i for i, (a, b) in enumerate(zip(raw, ref["input_ids"], strict=True)) if a != b
    ]
    ref["longest_input"] = max(len(ids) for ids in ref["input_ids"])
    window = local_window(spec)
    if window is not None:
        ref["local_window"] = window
        ref["texts_longer_than_window"] = sum(len(ids) > window for ids in ref["input_ids"])
    if spec.prompts:
        ref["prompt_vectors"] = {
            name: as_lists(model.encode(texts, prompt_name=name, convert_to_numpy=True))
            for name in spec.prompts
        }
        ref["prompt_input_ids"] = {
            name: st_input_ids(model, texts, p) for name, p in spec.prompts.items()
        }
    return ref


def local_window(spec: Spec) -> int | None:
    """The sliding window (config's local_attention / sliding_window) of the fixture, if any."""
    return LOCAL_WINDOW if spec.arch in ("modernbert", "gemma3_text") else None


def summary(ref: dict[str, Any]) -> str:
    vectors = np.array(ref["vectors"])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ unit.T
    off = cos[~np.eye(len(cos), dtype=bool)]
    return (
        f"{ref['name']:32} dim={ref['dimension']:3} seq={ref['max_seq_length']:4} "
        f"cos(other texts) mean={off.mean():.3f} max={off.max():.4f} "
        f"tokenizer.json differs on {ref['tokenizer_json_differs']}"
        + (
            f" {ref['texts_longer_than_window']} texts over the {ref['local_window']}-token window"
            if "local_window" in ref
            else ""
        )
    )


#: What tools/make_st_onnx_fixtures.py writes into each folder it makes: the source
#: fixture, the exports, how and with which versions they were made.
ST_ONNX_RECORD = "st_onnx.json"


def st_onnx_entries(fixtures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest entries of the folders tools/make_st_onnx_fixtures.py made: its source
    fixture's entry (same reference.json), given as sentence-transformers' ONNX backend
    export instead of model.safetensors (fp32, whatever the source's dtype)."""
    by_path = {entry["path"]: entry for entry in fixtures}
    entries = []
    for record_path in sorted(OUT.glob(f"*/{ST_ONNX_RECORD}")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        entry = {
            k: v
            for k, v in copy.deepcopy(by_path[record["source"]]).items()
            if k not in ("native", "dtype")
        }
        entry.update(
            path=record_path.parent.name,
            name=record_path.parent.name,
            source=record["source"],  # whose reference.json (the torch model's vectors) it has
            onnx_export=record["exports"][0],
            onnx_variants=record["exports"][1:],
            exported_by={"how": record["how"], "versions": record["versions"]},
        )
        entries.append(entry)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="fixture names to rebuild (default: all)")
    parser.add_argument(
        "--retrain-tokenizers",
        action="store_true",
        help=f"train new vocabularies instead of reusing {VOCABULARIES.relative_to(ROOT)}",
    )
    parser.add_argument(
        "--manifest-only",
        action="store_true",
        help="build nothing: rewrite manifest.json from the folders' reference.json and "
        f"{ST_ONNX_RECORD} files (after tools/make_st_onnx_fixtures.py)",
    )
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    texts = reference_texts()
    OUT.mkdir(parents=True, exist_ok=True)
    charsmap = b"" if args.manifest_only else nmt_nfkc_charsmap()
    vocabs = {} if args.manifest_only else vocabularies(charsmap, args.retrain_tokenizers)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SPECS:
            if args.manifest_only or (args.only and spec.name not in args.only):
                continue
            folder = OUT / spec.name
            build_fixture(spec, folder, Path(tmp), charsmap, vocabs)
            ref = reference(spec, folder, texts)
            write_reference(folder / "reference.json", ref)
            if spec.onnx_export:  # from the transformers 5 config (a nomic-hub one it cannot read)
                export_transformer(folder)
            if spec.layout == "nomic-hub":
                write_nomic_hub_form(folder, texts)
            if spec.onnx_export:  # the folder is given only as its export, as on the hub
                (folder / "model.safetensors").unlink()
            print(summary(ref), flush=True)
    manifest_keys = (
        "name",
        "layout",
        "architecture",
        "dimension",
        "pooling",
        "normalize",
        "max_seq_length",
        "max_seq_length_in_sentence_bert_config",
        "do_lower_case",
        "include_prompt",
        "prompts",
        "default_prompt_name",
        "hidden_size",
        "vocab_size",
        "tokenizer_json_differs",
    )
    # A partial run (--only) keeps the versions the manifest names; a fixture built with
    # other versions names its own (its reference.json always does).
    previous = OUT / "manifest.json"
    common = versions()
    if (args.only or args.manifest_only) and previous.is_file():
        common = json.loads(previous.read_text(encoding="utf-8"))["versions"]
    fixtures: list[dict[str, Any]] = []
    for spec in SPECS:
        if not (OUT / spec.name / "reference.json").is_file():
            continue
        ref = json.loads((OUT / spec.name / "reference.json").read_text(encoding="utf-8"))
        entry = {
            "path": spec.name,
            **{k: ref[k] for k in manifest_keys},
            "spec": {
                k: v
                for k, v in asdict(spec).items()
                if k in ("seed", "heads", "intermediate", "cased_tokenizer")
            },
        }
        if spec.onnx_export:
            entry["onnx_export"] = "onnx/model.onnx"
        if spec.dense:
            entry["dense"] = [list(layer) for layer in spec.dense]
        if spec.tokenizer_class != "XLMRobertaTokenizer" and spec.arch == "xlm-roberta":
            entry["tokenizer_class"] = spec.tokenizer_class
        if spec.arch not in NATIVE and not spec.onnx_export:
            entry["native"] = "pending"  # safetensors only; lazyembed does not convert it yet
        if spec.bf16:
            entry["dtype"] = "bfloat16"
        for key in ("local_window", "texts_longer_than_window", "longest_input"):
            if key in ref:
                entry[key] = ref[key]
        if ref["versions"] != common:
            entry["versions"] = ref["versions"]
        fixtures.append(entry)
    fixtures += st_onnx_entries(fixtures)
    write_json(
        OUT / "manifest.json",
        {
            "about": "Random-weight sentence-transformers models and sentence-transformers' "
            "own vectors; built by tools/make_model_fixtures.py (see its docstring).",
            "versions": common,
            "texts": len(texts),
            "fixtures": fixtures,
        },
    )


if __name__ == "__main__":
    main()
