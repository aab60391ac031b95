"""A model folder's own ONNX export: chosen, checked, fed and read as its graph asks.

The fixture ``mpnet-onnx-mean-norm`` (tools/make_model_fixtures.py) is an MPNet
sentence-transformers model given only as ``onnx/model.onnx`` (no model.safetensors to
convert); an architecture lazyembed does not convert is the same folder with another
``model_type`` (`unsupported_copy`). tests/test_model_fixtures.py checks its vectors and
prompts against sentence-transformers'. Here: which transformer a folder runs, the typed
errors, external data, graphs with more inputs or a pooled output, and vectors that do
not depend on the batch a text is in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lazyembed import Embedder
from lazyembed.errors import ModelConversionError, ModelNotFoundError, UnsupportedModelError
from lazyembed.models.onnx_export import (
    DEFAULT_EXPORT,
    choose_transformer,
    ensure_export,
    read_graph,
)
from lazyembed.models.resolve import resolve_model
from lazyembed.runtime.feeds import GraphInput, make_feeds, position_ids

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MPNET = FIXTURES / "mpnet-onnx-mean-norm"
BERT = FIXTURES / "bert-mean-norm"
MIN_COSINE = 0.99999


def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MPNET / "reference.json").read_text())
    return data


def min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return float(((got * want).sum(axis=1) / np.maximum(norms, 1e-30)).min())


def embedder(folder: Path, cache: Path, **settings: Any) -> Embedder:
    return Embedder(
        str(folder), model_cache_dir=str(cache), cache_memory_mb=0, share="never", **settings
    )


@pytest.fixture
def mpnet_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(MPNET, folder)
    return folder


#: A model type no converter handles (its folder can only run an export).
UNSUPPORTED_TYPE = "deberta-v2"


@pytest.fixture
def unsupported_copy(mpnet_copy: Path) -> Path:
    """The export fixture, its config.json saying an architecture lazyembed does not convert."""
    config = json.loads((mpnet_copy / "config.json").read_text())
    (mpnet_copy / "config.json").write_text(json.dumps({**config, "model_type": UNSUPPORTED_TYPE}))
    return mpnet_copy


@pytest.fixture(scope="module")
def mpnet_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    with embedder(MPNET, tmp_path_factory.mktemp("cache"), idle_timeout="never") as e:
        yield e


# ---- which transformer ----------------------------------------------------------------


def test_supported_architecture_converts_natively_by_default() -> None:
    assert choose_transformer(BERT).export is None


def test_unsupported_architecture_runs_its_export(unsupported_copy: Path) -> None:
    choice = choose_transformer(unsupported_copy)
    assert choice.export == unsupported_copy / DEFAULT_EXPORT
    assert UNSUPPORTED_TYPE in choice.reason and "not converted natively" in choice.reason


def test_supported_architecture_without_safetensors_runs_its_export() -> None:
    choice = choose_transformer(MPNET)
    assert choice.export == MPNET / DEFAULT_EXPORT
    assert "no model.safetensors" in choice.reason


def test_supported_architecture_with_safetensors_and_export_converts(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "mpnet-mean-norm", tmp_path / "mpnet")
    shutil.copytree(MPNET / "onnx", folder / "onnx")
    assert choose_transformer(folder).export is None
    assert choose_transformer(folder, DEFAULT_EXPORT).export == folder / DEFAULT_EXPORT


def test_supported_architecture_without_weights_names_the_exports(mpnet_copy: Path) -> None:
    (mpnet_copy / "onnx" / "model.onnx").rename(mpnet_copy / "onnx" / "model_O2.onnx")
    with pytest.raises(ModelNotFoundError, match=r"no model\.safetensors.*onnx/model_O2\.onnx"):
        choose_transformer(mpnet_copy)


def test_onnx_file_forces_the_export(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    shutil.copytree(BERT, folder)
    (folder / "onnx").mkdir()
    shutil.copy(MPNET / DEFAULT_EXPORT, folder / "onnx" / "model_O1.onnx")
    assert choose_transformer(folder).export is None  # safetensors: native stays the default
    assert choose_transformer(folder, "onnx/model_O1.onnx").export == (
        folder / "onnx" / "model_O1.onnx"
    )


def test_onnx_file_that_is_absent_names_the_exports_present(mpnet_copy: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"onnx/model\.onnx"):
        choose_transformer(mpnet_copy, "onnx/model_O4.onnx")
    with pytest.raises(ModelNotFoundError, match="inside the model folder"):
        choose_transformer(mpnet_copy, "../elsewhere.onnx")


def test_unsupported_architecture_without_export_says_what_would_run(
    unsupported_copy: Path, tmp_path: Path
) -> None:
    (unsupported_copy / "onnx" / "model.onnx").rename(unsupported_copy / "onnx" / "model_O2.onnx")
    cache = tmp_path / "cache"
    with (
        pytest.raises(UnsupportedModelError, match=r"onnx/model\.onnx.*model_O2\.onnx") as err,
        embedder(unsupported_copy, cache) as e,
    ):
        e.prepare()
    assert UNSUPPORTED_TYPE in str(err.value) and "supported architecture" in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())  # refused before any work


def test_a_folder_with_only_an_export_resolves(mpnet_copy: Path) -> None:
    assert not (mpnet_copy / "model.safetensors").exists()
    assert resolve_model(str(mpnet_copy)).directory == mpnet_copy.resolve()


def test_named_export_runs_with_the_reference_vectors(mpnet_copy: Path, tmp_path: Path) -> None:
    (mpnet_copy / "onnx" / "model.onnx").rename(mpnet_copy / "onnx" / "model_O1.onnx")
    ref = reference()
    with embedder(mpnet_copy, tmp_path / "cache", onnx_file="onnx/model_O1.onnx") as e:
        got = e.embed_numpy(ref["texts"])
        assert e.model_report()["onnx_exports"] == ["onnx/model_O1.onnx"]
    assert min_cosine(got, np.asarray(ref["vectors"])) >= MIN_COSINE


# ---- vectors ---------------------------------------------------------------------------


def test_vectors_do_not_depend_on_the_batch(mpnet_embedder: Embedder) -> None:
    texts = reference()["texts"]
    together = mpnet_embedder.embed_numpy(texts)
    alone = np.stack([mpnet_embedder.embed_numpy([text])[0] for text in texts])
    reversed_ = mpnet_embedder.embed_numpy(texts[::-1])[::-1]
    assert min_cosine(together, alone) >= 0.999999
    assert min_cosine(together, reversed_) >= 0.999999


def test_external_data_loads_and_enters_the_fingerprint(mpnet_copy: Path, tmp_path: Path) -> None:
    graph = onnx.load(str(mpnet_copy / DEFAULT_EXPORT))
    onnx.save(
        graph,
        str(mpnet_copy / DEFAULT_EXPORT),
        save_as_external_data=True,
        location="model.onnx_data",
        size_threshold=0,
    )
    data = mpnet_copy / "onnx" / "model.onnx_data"
    assert data.is_file()
    converted, info = ensure_export(mpnet_copy / DEFAULT_EXPORT, cache_dir=tmp_path / "cache")
    assert info.data_files == ("model.onnx_data",) and converted.data_path == data
    assert "model.onnx_data=" in converted.fingerprint
    ref = reference()
    with embedder(mpnet_copy, tmp_path / "cache") as e:
        got = e.embed_numpy(ref["texts"])
        before = e.prepare().fingerprint
    assert min_cosine(got, np.asarray(ref["vectors"])) >= MIN_COSINE
    data.unlink()
    with pytest.raises(ModelNotFoundError, match=r"model\.onnx_data"):
        ensure_export(mpnet_copy / DEFAULT_EXPORT, cache_dir=tmp_path / "cache")
    assert before.startswith("export-1-last_hidden_state;onnx=")


def test_fingerprint_follows_the_export_file(mpnet_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, _ = ensure_export(mpnet_copy / DEFAULT_EXPORT, cache_dir=cache)
    graph = onnx.load(str(mpnet_copy / DEFAULT_EXPORT))
    graph.doc_string = "changed"
    onnx.save(graph, str(mpnet_copy / DEFAULT_EXPORT))
    second, _ = ensure_export(mpnet_copy / DEFAULT_EXPORT, cache_dir=cache)
    assert first.fingerprint != second.fingerprint


# ---- graphs with other inputs and outputs ------------------------------------------------


def _add_inputs(path: Path, *inputs: onnx.ValueInfoProto) -> None:
    """Add graph inputs the graph does not use (what they are fed must still fit)."""
    graph = onnx.load(str(path))
    graph.graph.input.extend(inputs)
    onnx.save(graph, str(path))


def test_graph_with_an_unknown_input_is_refused_by_name(mpnet_copy: Path, tmp_path: Path) -> None:
    task = helper.make_tensor_value_info("task_id", TensorProto.INT64, [1])
    _add_inputs(mpnet_copy / DEFAULT_EXPORT, task)
    with pytest.raises(UnsupportedModelError, match="'task_id'"):
        read_graph(mpnet_copy / DEFAULT_EXPORT)
    with (
        pytest.raises(UnsupportedModelError, match="'task_id'"),
        embedder(mpnet_copy, tmp_path / "cache") as e,
    ):
        e.prepare()


def test_graph_with_token_types_positions_and_past_is_fed(mpnet_copy: Path, tmp_path: Path) -> None:
    batch_seq = ["batch_size", "sequence_length"]
    _add_inputs(
        mpnet_copy / DEFAULT_EXPORT,
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, batch_seq),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, batch_seq),
        helper.make_tensor_value_info(
            "past_key_values.0.key", TensorProto.FLOAT, ["batch_size", 2, "past", 16]
        ),
    )
    info = read_graph(mpnet_copy / DEFAULT_EXPORT)
    assert "past_key_values.0.key" in info.inputs
    ref = reference()
    with embedder(mpnet_copy, tmp_path / "cache") as e:
        got = e.embed_numpy(ref["texts"])
    assert min_cosine(got, np.asarray(ref["vectors"])) >= MIN_COSINE


def test_graph_that_pools_itself_is_used_as_is(mpnet_copy: Path, tmp_path: Path) -> None:
    """A graph whose only output is sentence_embedding (here: the mean of every token,
    which equals mean pooling for a text alone, with no padding)."""
    graph = onnx.load(str(mpnet_copy / DEFAULT_EXPORT))
    graph.graph.node.append(  # opset 17: the axes are an attribute
        helper.make_node(
            "ReduceMean", ["last_hidden_state"], ["sentence_embedding"], axes=[1], keepdims=0
        )
    )
    del graph.graph.output[:]
    graph.graph.output.append(
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch_size", 32])
    )
    onnx.save(graph, str(mpnet_copy / DEFAULT_EXPORT))
    assert read_graph(mpnet_copy / DEFAULT_EXPORT).pooled
    ref = reference()
    texts = [t for t in ref["texts"] if t.strip()][:6]
    want = np.asarray([ref["vectors"][ref["texts"].index(t)] for t in texts])
    with embedder(mpnet_copy, tmp_path / "cache") as e:
        got = np.stack([e.embed_numpy([text])[0] for text in texts])
        assert e.get_embedding_dimension() == 32
    assert min_cosine(got, want) >= MIN_COSINE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # Normalize applied


def test_graph_without_token_vectors_names_its_outputs(mpnet_copy: Path) -> None:
    graph = onnx.load(str(mpnet_copy / DEFAULT_EXPORT))
    graph.graph.output[0].name = "logits"
    graph.graph.node.append(helper.make_node("Identity", ["last_hidden_state"], ["logits"]))
    onnx.save(graph, str(mpnet_copy / DEFAULT_EXPORT))
    with pytest.raises(UnsupportedModelError, match="outputs: logits"):
        read_graph(mpnet_copy / DEFAULT_EXPORT)


# ---- feeds -------------------------------------------------------------------------------


def test_position_ids_count_kept_tokens_on_either_side() -> None:
    right = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(right).tolist() == [[0, 1, 2, 1, 1], [0, 1, 2, 3, 4]]
    assert position_ids(left).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_feeds_follow_the_graph() -> None:
    ids = np.array([[5, 6, 7], [5, 6, 0]])
    mask = (ids != 0).astype(np.int64)
    inputs = [
        GraphInput("input_ids", ("b", "s"), np.int32),
        GraphInput("attention_mask", ("b", "s"), np.int64),
        GraphInput("token_type_ids", ("b", "s"), np.int64),
        GraphInput("past_key_values.3.value", ("b", 4, "past", 8), np.float16),
    ]
    feeds = make_feeds(inputs, ids, mask)
    assert feeds["input_ids"].dtype == np.int32 and feeds["input_ids"].tolist() == ids.tolist()
    assert not feeds["token_type_ids"].any()
    past = feeds["past_key_values.3.value"]
    assert past.shape == (2, 4, 0, 8) and past.dtype == np.float16


# ---- left padding (Qwen3-Embedding style) ------------------------------------------------

QWEN3 = FIXTURES / "qwen3-onnx-lasttoken-left"


def test_decoder_export_reads_left_padding_and_appends_eos(tmp_path: Path) -> None:
    with embedder(QWEN3, tmp_path / "cache") as e:
        prepared = e.prepare()
        assert prepared.spec.padding_side == "left"
        assert prepared.spec.output == "last_hidden_state"
        assert "pad=left" in prepared.fingerprint
        ids = e._counting_tokenizer().encode("hello world").ids
    graph = read_graph(QWEN3 / DEFAULT_EXPORT)  # as onnx-community exports decoders
    assert {"position_ids", "past_key_values.1.value"} <= set(graph.inputs)
    assert ids[-1] == 3  # [SEP], the EOS tokenizer.json's post-processor appends
    assert 2 not in ids  # and no [CLS]: a decoder's template


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_vectors_do_not_depend_on_padding_side_or_batch(side: str, tmp_path: Path) -> None:
    """sentence-transformers padded these left; either side, any batch: its vectors."""
    import dataclasses

    from lazyembed.runtime import load_runtime

    data: dict[str, Any] = json.loads((QWEN3 / "reference.json").read_text())
    with embedder(QWEN3, tmp_path / "cache") as e:
        spec = dataclasses.replace(e.prepare().spec, padding_side=side)
    runtime = load_runtime(spec)
    try:
        together = runtime.encode(data["texts"]).vectors
        alone = np.stack([runtime.encode([text]).vectors[0] for text in data["texts"]])
    finally:
        runtime.close()
    want = np.asarray(data["vectors"])
    assert min_cosine(together, want) >= MIN_COSINE
    assert min_cosine(alone, want) >= MIN_COSINE


def test_models_describe_lists_the_exports(
    unsupported_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lazyembed import cli

    monkeypatch.setenv("LAZYEMBED_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAZYEMBED_SHARE", "never")
    assert cli.main(["models", "--describe", str(unsupported_copy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnx_exports"] == ["onnx/model.onnx"]
    assert report["transformer"].startswith("onnx/model.onnx (not converted natively")
    assert report["onnx_path"] == str(unsupported_copy / DEFAULT_EXPORT)


def test_the_graph_is_read_outside_the_embedding_process(tmp_path: Path) -> None:
    """Parsing imports onnx and reads the whole protobuf: a child does it, once."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from lazyembed import Embedder\n"
        f"e = Embedder({str(MPNET)!r}, model_cache_dir={str(tmp_path)!r}, share='never',"
        " cache_memory_mb=0)\n"
        "e.embed('hello')\n"
        "e.close()\n"
        "print('onnx' in sys.modules)\n"
    )
    for _ in range(2):  # a fresh cache, then the remembered description
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "False", done.stderr
    assert len(list(tmp_path.glob("export-*.json"))) == 1


@pytest.mark.parametrize("name", ["qwen3-onnx-lasttoken-left", "mpnet-onnx-mean-norm"])
def test_exports_run_on_openvino_too(name: str, tmp_path: Path) -> None:
    """The OpenVINO backend reads the graph's inputs and its output by name, as ONNX
    Runtime does (position_ids, an empty past; fp32 as sentence-transformers)."""
    pytest.importorskip("openvino")
    data: dict[str, Any] = json.loads((FIXTURES / name / "reference.json").read_text())
    with embedder(FIXTURES / name, tmp_path / "cache", backend="openvino", precision="fp32") as e:
        got = e.embed_numpy(data["texts"])
    assert min_cosine(got, np.asarray(data["vectors"])) >= MIN_COSINE


def test_an_export_loads_unloads_and_isolates_like_a_converted_model(tmp_path: Path) -> None:
    """The export is just another converted model: same lifecycle, report and worker."""
    import psutil

    from helpers import wait_until

    data: dict[str, Any] = json.loads((QWEN3 / "reference.json").read_text())
    texts = data["texts"][:8]
    want = np.asarray(data["vectors"][:8])
    with embedder(QWEN3, tmp_path / "cache", isolation="process", idle_timeout="never") as e:
        got = e.embed_numpy(texts)
        report = e.get_memory_usage()
        worker = report["worker"]
        assert worker is not None and report["model_loaded"] is True
        assert e.unload_model() is True and not e.is_loaded
        assert wait_until(lambda: not psutil.pid_exists(worker["worker_pid"]))
        again = e.embed_numpy(texts)  # a reload after the unload
    assert min_cosine(got, want) >= MIN_COSINE
    assert np.abs(got - again).max() < 1e-6


# ---- exports and Dense modules -----------------------------------------------------------

DENSE = FIXTURES / "bert-dense-chain"


def test_an_export_followed_by_a_dense_chain(tmp_path: Path) -> None:
    """The folder's own graph (here: the one lazyembed converted, with its external data,
    moved into onnx/) then the Dense chain: sentence-transformers' vectors."""
    folder = tmp_path / "model"
    shutil.copytree(DENSE, folder)
    with embedder(folder, tmp_path / "native") as e:
        converted = e.prepare().converted
    (folder / "onnx").mkdir()
    shutil.copy(converted.path, folder / DEFAULT_EXPORT)
    shutil.copy(converted.data_path, folder / "onnx" / converted.data_path.name)
    data: dict[str, Any] = json.loads((DENSE / "reference.json").read_text())
    with embedder(folder, tmp_path / "cache", onnx_file=DEFAULT_EXPORT) as e:
        got = e.embed_numpy(data["texts"])
        prepared = e.prepare()
        assert prepared.converted.path == folder / DEFAULT_EXPORT
        assert len(prepared.spec.dense) == 2
    assert min_cosine(got, np.asarray(data["vectors"])) >= MIN_COSINE


def test_the_vectors_width_is_the_last_dense_not_the_graph() -> None:
    import dataclasses

    from lazyembed.models.info import read_model_info
    from lazyembed.models.onnx_export import GraphInfo, fit_info

    info = read_model_info(DENSE)
    one = dataclasses.replace(info, dense=info.dense[:1], dimension=info.dense[0].out_features)
    graph = GraphInfo(("input_ids", "attention_mask"), "last_hidden_state", 32, ())
    assert fit_info(one, graph, DENSE / DEFAULT_EXPORT).dimension == 64
    plain = dataclasses.replace(info, dense=(), dimension=16)
    assert fit_info(plain, graph, DENSE / DEFAULT_EXPORT).dimension == 32
    wider = GraphInfo(("input_ids", "attention_mask"), "last_hidden_state", 48, ())
    with pytest.raises(ModelConversionError, match="in_features 32 does not match the width 48"):
        fit_info(info, wider, DENSE / DEFAULT_EXPORT)
    pooled = GraphInfo(("input_ids", "attention_mask"), "sentence_embedding", 32, ())
    with pytest.raises(UnsupportedModelError, match="applied them already"):
        fit_info(info, pooled, DENSE / DEFAULT_EXPORT)
