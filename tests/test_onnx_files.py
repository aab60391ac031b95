"""``onnx_files``: each model of one process (a `Models` registry, so the server) runs from
its own ONNX export, while ``onnx_file`` alone would name one file for every model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest

from lazyembed import Models
from lazyembed.config import for_model, load_settings
from lazyembed.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "models"
VARIANT = "onnx/model_variant.onnx"


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    """An MPNet export with a second export beside the default, and a native BERT folder."""
    mpnet = tmp_path / "mpnet"
    shutil.copytree(FIXTURES / "mpnet-onnx-mean-norm", mpnet)
    shutil.copyfile(mpnet / "onnx" / "model.onnx", mpnet / VARIANT)
    return {"mpnet": str(mpnet), "bert": str(FIXTURES / "bert-mean-norm")}


@pytest.fixture
def models(folders: dict[str, str], tmp_path: Path) -> Iterator[Models]:
    registry = Models(
        share="never",
        model_cache_dir=tmp_path / "cache",
        onnx_files={folders["mpnet"]: VARIANT},
    )
    yield registry
    registry.close()


def _reference(name: str) -> tuple[list[str], np.ndarray]:
    data = json.loads((FIXTURES / name / "reference.json").read_text())
    return data["texts"], np.asarray(data["vectors"], dtype=np.float32)


def test_each_model_runs_its_own_export_in_one_registry(
    models: Models, folders: dict[str, str]
) -> None:
    mpnet, bert = models.get(folders["mpnet"]), models.get(folders["bert"])
    assert mpnet.settings.onnx_file == VARIANT and bert.settings.onnx_file is None
    chosen = mpnet.prepare().transformer
    assert chosen is not None and chosen.export is not None
    assert chosen.export.name == "model_variant.onnx"
    native = bert.prepare().transformer
    assert native is None or native.export is None  # converted, as without onnx_files
    for name, folder in (("mpnet-onnx-mean-norm", "mpnet"), ("bert-mean-norm", "bert")):
        texts, expected = _reference(name)
        got = models.embed_numpy(texts, model=folders[folder])
        cosine = np.sum(got * expected, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        )
        assert cosine.min() >= 0.99999, (name, cosine.min())


def test_a_model_without_an_entry_keeps_the_process_wide_onnx_file(
    folders: dict[str, str],
) -> None:
    settings = load_settings(
        onnx_file="onnx/model.onnx", onnx_files={"nomic-embed-text": "onnx/model_q.onnx"}
    )
    assert for_model(settings, folders["mpnet"]).onnx_file == "onnx/model.onnx"
    # Matched by any catalogue name of the model.
    nomic = for_model(settings, "nomic-ai/nomic-embed-text-v1.5")
    assert nomic.onnx_file == "onnx/model_q.onnx"
    assert nomic.model == "nomic-ai/nomic-embed-text-v1.5"
    # A folder matches however it is spelled.
    relative = load_settings(onnx_files={folders["mpnet"] + "/": VARIANT})
    assert for_model(relative, folders["mpnet"]).onnx_file == VARIANT


def test_onnx_files_come_from_a_toml_table_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[onnx_files]\n"qwen3-embedding:0.6b" = "onnx/model_fp16.onnx"\n')
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(config))
    assert load_settings().onnx_files == (("qwen3-embedding:0.6b", "onnx/model_fp16.onnx"),)
    monkeypatch.setenv("LAZYEMBED_ONNX_FILES", "a=onnx/x.onnx, /m/b=onnx/y.onnx")
    assert load_settings().onnx_files == (("a", "onnx/x.onnx"), ("/m/b", "onnx/y.onnx"))
    monkeypatch.setenv("LAZYEMBED_ONNX_FILES", "onnx/x.onnx")
    with pytest.raises(ConfigError, match="onnx_files"):
        load_settings()
    monkeypatch.delenv("LAZYEMBED_ONNX_FILES")
    with pytest.raises(ConfigError, match="onnx_files"):
        load_settings(onnx_files={"a": ""})


def test_a_server_serves_each_model_from_its_own_export(
    folders: dict[str, str], tmp_path: Path
) -> None:
    from lazyembed.server import create_app
    from server_helpers import LiveServer

    settings = load_settings(
        share="never",
        model_cache_dir=tmp_path / "cache",
        model=folders["bert"],
        serve_models=[folders["mpnet"]],
        onnx_files={folders["mpnet"]: VARIANT},
    )
    registry = Models(settings=settings)
    try:
        with LiveServer(create_app(registry)) as live:
            for name, folder in (("mpnet-onnx-mean-norm", "mpnet"), ("bert-mean-norm", "bert")):
                texts, expected = _reference(name)
                answer = httpx.post(
                    f"{live.url}/v1/embeddings",
                    json={"model": folders[folder], "input": texts},
                    timeout=120,
                )
                assert answer.status_code == 200, answer.text
                got = np.array([d["embedding"] for d in answer.json()["data"]], np.float32)
                assert np.allclose(got, expected, atol=1e-5), name
        chosen = registry.get(folders["mpnet"]).prepare().transformer
        assert chosen is not None and chosen.export is not None
        assert chosen.export.name == "model_variant.onnx"
    finally:
        registry.close()


def test_serve_flags_name_an_export_per_model_or_for_all() -> None:
    from lazyembed.cli.parser import build_parser
    from lazyembed.cli.serve import serve_settings

    args = build_parser().parse_args(
        ["serve", "--model", "a", "--onnx-file", "a=onnx/model_O2.onnx", "--onnx-file", "x.onnx"]
    )
    settings = serve_settings(args)
    assert settings.onnx_files == (("a", "onnx/model_O2.onnx"),)
    assert settings.onnx_file == "x.onnx"
    assert for_model(settings, "a").onnx_file == "onnx/model_O2.onnx"
    assert for_model(settings, "b").onnx_file == "x.onnx"


def test_a_lone_embedder_and_a_daemon_request_take_their_models_entry(
    folders: dict[str, str], tmp_path: Path
) -> None:
    """A config file's ``[onnx_files]`` reaches ``lazyembed embed`` too: the Embedder of
    the model it names, and the options a shared-daemon request carries."""
    from lazyembed import Embedder
    from lazyembed.daemon.client import request_options
    from lazyembed.daemon.shared import SharedEmbedder

    settings = load_settings(
        model=folders["mpnet"],
        share="never",
        model_cache_dir=tmp_path / "cache",
        onnx_files={folders["mpnet"]: VARIANT},
    )
    embedder = Embedder(settings=settings)
    try:
        assert embedder.settings.onnx_file == VARIANT
        chosen = embedder.prepare().transformer
        assert chosen is not None and chosen.export is not None
        assert chosen.export.name == "model_variant.onnx"
    finally:
        embedder.close()
    other = Embedder(settings=load_settings(model=folders["bert"], onnx_files=settings.onnx_files))
    assert other.settings.onnx_file is None
    other.close()
    assert request_options(for_model(settings, folders["mpnet"]))["onnx_file"] == VARIANT
    shared = SharedEmbedder(settings, cast(Any, None), in_process=lambda s: None)
    assert shared.settings.onnx_file == VARIANT  # what its requests carry
