"""`read_model_info` against what sentence-transformers recorded for each issue-13 fixture.

tests/fixtures/models/manifest.json says, per fixture, the pooling, normalisation,
max_seq_length, do_lower_case, include_prompt and prompts sentence-transformers used
when it computed the reference vectors; both on-disk layouts (classic hub, and what
sentence-transformers 6 writes) must read the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lazyembed.errors import UnsupportedModelError
from lazyembed.models.info import POOLING_MODES, read_model_info

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MANIFEST: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]


@pytest.mark.parametrize("fixture", MANIFEST, ids=[f["name"] for f in MANIFEST])
def test_info_matches_what_sentence_transformers_used(fixture: dict[str, Any]) -> None:
    info = read_model_info(
        FIXTURES / fixture["path"],
        pooling_modes=POOLING_MODES,
        # An architecture run from its export, or one whose converter is pending.
        any_architecture="onnx_export" in fixture or fixture.get("native") == "pending",
    )
    assert info.pooling == fixture["pooling"]
    assert info.normalize is fixture["normalize"]
    assert info.max_seq_length == fixture["max_seq_length"]
    assert info.do_lower_case is fixture["do_lower_case"]
    assert info.include_prompt is fixture["include_prompt"]
    # sentence-transformers 6 saves empty "query"/"document" prompts; they prepend nothing.
    assert {k: v for k, v in info.prompts.prompts.items() if v} == fixture["prompts"]
    assert info.prompts.default_name == fixture["default_prompt_name"]
    assert info.dimension == fixture["dimension"] == info.encoder.hidden
    assert info.vocab_size == fixture["vocab_size"]
    assert info.encoder.model_type == fixture["architecture"]
    if fixture["max_seq_length_in_sentence_bert_config"]:
        assert info.max_seq_length_source == "sentence_bert_config.json"
    else:
        assert info.max_seq_length_source != "sentence_bert_config.json"


def test_xlmr_architecture_fields() -> None:
    info = read_model_info(FIXTURES / "xlmr-mean-norm")
    enc = info.encoder
    assert (enc.model_type, enc.architectures) == ("xlm-roberta", ("XLMRobertaModel",))
    assert (enc.hidden, enc.heads, enc.layers, enc.intermediate) == (32, 4, 2, 64)
    assert (enc.pad_token_id, enc.type_vocab_size, enc.max_positions) == (1, 1, 130)
    assert enc.positions_from_padding and enc.max_tokens == 128
    assert (enc.hidden_act, enc.eps) == ("gelu", 1e-12)


def test_minilm_reads_as_before(model_dir: Path) -> None:
    info = read_model_info(model_dir)
    assert info.fingerprint_part() == "seq=256;pool=mean;norm=1"  # embedding caches stay valid
    assert (info.dimension, info.vocab_size, info.similarity_fn_name) == (384, 30522, "cosine")


def test_a_tokenizer_class_that_changes_tokens_keys_the_cache_apart() -> None:
    """One tokenizer.json under two classes gives other tokens, so other cache keys; the
    usual class of the model type keeps the key it always had."""
    usual = read_model_info(FIXTURES / "xlmr-classic-fast-class")
    backend = read_model_info(FIXTURES / "xlmr-classic-tokenizers-backend")
    assert usual.tokenizer.name == "XLMRobertaTokenizer"
    assert usual.fingerprint_part() == "seq=128;pool=mean;norm=1"
    assert backend.tokenizer.name == "TokenizersBackend"
    assert (
        backend.fingerprint_part() == "seq=128;pool=mean;norm=1;tokenizer_class=TokenizersBackend"
    )


def test_similarity_function_is_read(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "bert-default-prompt", tmp_path / "m")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({**config, "similarity_fn_name": "dot"})
    )
    assert read_model_info(folder).similarity_fn_name == "dot"


def test_a_pooling_mode_the_caller_cannot_apply_is_refused() -> None:
    assert read_model_info(FIXTURES / "bert-cls").pooling == "cls"  # the runtime pools it
    with pytest.raises(UnsupportedModelError, match="'cls'"):
        read_model_info(FIXTURES / "bert-cls", pooling_modes=("mean",))


def test_an_extra_module_is_refused(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "bert-classic-mean-norm", tmp_path / "m")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(
        2,
        {
            "idx": 2,
            "name": "2",
            "path": "2_LayerNorm",
            "type": "sentence_transformers.models.LayerNorm",
        },
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        read_model_info(folder)


def test_two_classic_pooling_flags_are_refused(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "bert-classic-mean-norm", tmp_path / "m")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(UnsupportedModelError, match="2 pooling modes"):
        read_model_info(folder, pooling_modes=POOLING_MODES)


def test_an_unsupported_architecture_is_refused_by_info_too(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "bert-mean-norm", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(UnsupportedModelError, match=r"'t5'.*types: bert, .*xlm-roberta"):
        read_model_info(folder)
