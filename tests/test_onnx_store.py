"""The converted-model cache: hits, pruning of older conversions, and healing.

Every kind of damage to a cached model heals on the next call, through the conversion
child as the Embedder uses it: each test damages a private copy of one pristine
conversion (shared by the session) and checks the rebuilt files are byte for byte the
pristine ones. A damaged file that cannot be removed is a `ModelCacheError`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyembed.errors import ModelCacheError
from lazyembed.models.convert import ConvertedModel, ensure_onnx, find_converted
from lazyembed.models.convert_child import ensure_onnx_in_child
from test_convert import _tiny_bert


@pytest.fixture(scope="session")
def pristine(model_dir: Path, session_dir: Path) -> ConvertedModel:
    """The session's real conversion of MiniLM (conftest.py's cache); never damaged."""
    return ensure_onnx(model_dir, variant="fp32", cache_dir=session_dir / "cache")


def _files(model: ConvertedModel) -> list[Path]:
    return [model.path.with_suffix(".json"), model.path, model.data_path]


def _fresh_copy(pristine: ConvertedModel, model_dir: Path, tmp_path: Path) -> ConvertedModel:
    """A private cache holding a copy of the pristine model, verified by this process."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for src in _files(pristine):
        shutil.copyfile(src, cache / src.name)
    seeded = ensure_onnx(model_dir, variant="fp32", cache_dir=cache)
    assert seeded.converted is False
    return seeded


def _assert_pristine(model: ConvertedModel, pristine: ConvertedModel) -> None:
    assert model.path.read_bytes() == pristine.path.read_bytes()
    assert model.data_path.read_bytes() == pristine.data_path.read_bytes()
    manifest = json.loads(model.path.with_suffix(".json").read_text())
    assert manifest["fingerprint"] == pristine.fingerprint
    leftovers = [f.name for f in model.path.parent.iterdir() if f.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------- kinds of damage


def _flip_bytes_keep_mtime(path: Path) -> None:
    """Change content in place without changing size or mtime (only a hash can tell)."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(before.st_size // 2)
        chunk = f.read(64)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def _lying_manifest(model: ConvertedModel) -> None:
    """Valid JSON, the right fingerprint, but sizes and hashes of other files."""
    path = model.path.with_suffix(".json")
    manifest = json.loads(path.read_text())
    manifest.update(size=manifest["size"] + 1, data_sha256="0" * 64)
    path.write_text(json.dumps(manifest))


Damage = Callable[[ConvertedModel], object]
DAMAGES: dict[str, Damage] = {
    "truncated data": lambda m: os.truncate(m.data_path, 45_000_000),
    "truncated graph": lambda m: os.truncate(m.path, m.path.stat().st_size // 2),
    "flipped bytes in the data": lambda m: _flip_bytes_keep_mtime(m.data_path),
    "garbage graph": lambda m: m.path.write_bytes(os.urandom(m.path.stat().st_size)),
    "garbage manifest": lambda m: m.path.with_suffix(".json").write_bytes(b"\x00{garbage"),
    "lying (valid JSON) manifest": _lying_manifest,
    "missing data": lambda m: m.data_path.unlink(),
    "missing manifest": lambda m: m.path.with_suffix(".json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_kind_of_damage_heals_on_the_next_call(
    pristine: ConvertedModel,
    model_dir: Path,
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seeded = _fresh_copy(pristine, model_dir, tmp_path)
    cache = seeded.path.parent
    DAMAGES[damage](seeded)
    # This process verified the files before the damage: it must not trust its memory.
    with caplog.at_level(logging.WARNING, logger="lazyembed"):
        assert find_converted(model_dir, variant="fp32", cache_dir=cache) is None
    # One warning, naming the first file that fails (a lying size is blamed on the graph).
    kind = "graph" if damage.startswith("lying") else damage.split()[-1]
    files = {"data": seeded.data_path, "graph": seeded.path}
    bad = files.get(kind, seeded.path.with_suffix(".json"))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"cached model file {bad}"]
    healed = ensure_onnx_in_child(model_dir, variant="fp32", cache_dir=cache)
    assert healed.converted is True
    _assert_pristine(healed, pristine)
    again = ensure_onnx_in_child(model_dir, variant="fp32", cache_dir=cache)
    assert again.converted is False


def test_a_rebuild_in_this_process_heals_with_the_cache_as_working_directory(
    pristine: ConvertedModel, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = _fresh_copy(pristine, model_dir, tmp_path)
    os.truncate(seeded.data_path, 45_000_000)
    monkeypatch.chdir(seeded.path.parent)  # where the stale data file sits
    healed = ensure_onnx(model_dir, variant="fp32", cache_dir=seeded.path.parent)
    assert healed.converted is True
    _assert_pristine(healed, pristine)


# ---------------------------------------------------------------- damage that cannot be removed


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Make paths immutable (chattr +i) for one test; skip where that is not possible."""
    marked: list[Path] = []

    def mark(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not possible here: {done.stderr.decode().strip()}")
        marked.append(path)

    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    yield mark
    for path in reversed(marked):
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_an_immutable_damaged_file_is_a_cache_error_naming_it_and_the_fix(
    pristine: ConvertedModel,
    model_dir: Path,
    tmp_path: Path,
    immutable: Callable[[Path], None],
) -> None:
    seeded = _fresh_copy(pristine, model_dir, tmp_path)
    os.truncate(seeded.data_path, 45_000_000)
    immutable(seeded.data_path)
    with pytest.raises(ModelCacheError) as caught:
        ensure_onnx_in_child(model_dir, variant="fp32", cache_dir=seeded.path.parent)
    message = str(caught.value)
    assert str(seeded.data_path) in message and "wrong size" in message
    assert "chattr -i" in message and "delete" in message
    subprocess.run(["chattr", "-i", str(seeded.data_path)], check=True)
    healed = ensure_onnx_in_child(model_dir, variant="fp32", cache_dir=seeded.path.parent)
    _assert_pristine(healed, pristine)


def test_a_damaged_model_in_a_read_only_directory_is_a_cache_error(
    pristine: ConvertedModel,
    model_dir: Path,
    tmp_path: Path,
    immutable: Callable[[Path], None],
) -> None:
    seeded = _fresh_copy(pristine, model_dir, tmp_path)
    manifest = seeded.path.with_suffix(".json")
    manifest.write_text("{")
    immutable(seeded.path.parent)
    with pytest.raises(ModelCacheError) as caught:
        ensure_onnx(model_dir, variant="fp32", cache_dir=seeded.path.parent)
    message = str(caught.value)
    assert str(manifest) in message and "writable" in message


# ---------------------------------------------------------------- hits, index, pruning


def test_second_call_is_a_cache_hit(pristine: ConvertedModel, model_dir: Path) -> None:
    cache = pristine.path.parent
    before = pristine.path.stat().st_mtime_ns
    again = ensure_onnx(model_dir, variant="fp32", cache_dir=cache)
    assert again.converted is False
    assert again.path == pristine.path
    assert again.fingerprint == pristine.fingerprint
    assert again.path.stat().st_mtime_ns == before
    manifest = json.loads(pristine.path.with_suffix(".json").read_text())
    assert manifest["size"] == pristine.path.stat().st_size
    index = json.loads((cache / "hash-index.json").read_text())
    assert pristine.weights_sha256 in index["entries"].values()


@pytest.mark.parametrize("index", ["[]", '{"entries": []}', "{", '{"entries": {"x": 1}}'])
def test_a_damaged_hash_index_costs_only_a_rehash(tmp_path: Path, index: str) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")
    cache = tmp_path / "cache"
    first = ensure_onnx(model, cache_dir=cache)
    (cache / "hash-index.json").write_text(index)
    again = ensure_onnx(model, cache_dir=cache)
    assert again.converted is False and again.fingerprint == first.fingerprint
    assert (
        first.weights_sha256
        in json.loads((cache / "hash-index.json").read_text())["entries"].values()
    )


def test_weights_live_in_an_external_data_file(pristine: ConvertedModel) -> None:
    import onnx

    graph = onnx.load(str(pristine.path), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 30  # every weight matrix of 6 layers, plus embeddings
    assert pristine.path.stat().st_size < 1_000_000 < 80_000_000 < pristine.data_path.stat().st_size
    assert pristine.data_path.stat().st_mode & 0o044 == 0o044  # readable by other users


def _fake_conversion(cache: Path, stem: str, model: ConvertedModel, **changes: str) -> list[Path]:
    """Files that look like another conversion of `model`'s weights, with `changes`."""
    manifest = json.loads(model.path.with_suffix(".json").read_text())
    manifest.update(file=f"{stem}.onnx", data_file=f"{stem}.onnx.data", **changes)
    files = [cache / f"{stem}.json", cache / f"{stem}.onnx", cache / f"{stem}.onnx.data"]
    files[0].write_text(json.dumps(manifest))
    files[1].write_bytes(b"graph")
    files[2].write_bytes(b"weights" * 1000)
    return files


def test_a_conversion_removes_only_strictly_older_ones_of_the_same_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")
    cache = tmp_path / "cache"
    first = ensure_onnx(model, cache_dir=cache)
    newest = first.path.with_suffix(".json")
    first.path.unlink()  # force a rebuild of the current version below
    older_converter = _fake_conversion(cache, "bert-fp32-old1", first, converter_version="1")
    older_ort = _fake_conversion(cache, "bert-fp32-old2", first, onnxruntime_version="1.2.0")
    newer = _fake_conversion(cache, "bert-fp32-new", first, converter_version="99")
    other_weights = _fake_conversion(
        cache, "bert-fp32-other", first, converter_version="1", weights_sha256="0" * 64
    )
    other_variant = _fake_conversion(
        cache, "bert-int8-old", first, converter_version="1", variant="int8"
    )
    (cache / "bert-fp32-junk.json").write_text("not json")
    # A manifest never names what is deleted: only <stem>.onnx and <stem>.onnx.data go.
    bystander = cache / "bystander.onnx"
    bystander.write_bytes(b"keep me")
    older_converter[0].write_text(
        json.dumps({**json.loads(older_converter[0].read_text()), "file": bystander.name})
    )

    with caplog.at_level(logging.INFO, logger="lazyembed"):
        rebuilt = ensure_onnx(model, cache_dir=cache)

    assert rebuilt.converted and rebuilt.path == first.path and newest.is_file()
    assert not any(f.exists() for f in older_converter + older_ort)
    assert all(f.exists() for f in newer + other_weights + other_variant)
    assert (cache / "bert-fp32-junk.json").exists() and bystander.exists()
    assert sum("removed superseded conversion" in r.message for r in caplog.records) == 2


def test_a_killed_build_leaves_nothing_after_the_next_one(tmp_path: Path) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")
    cache = tmp_path / "cache"
    first = ensure_onnx(model, cache_dir=cache)
    stale = cache / f".build-{first.path.stem}-killed"
    stale.mkdir()
    (stale / "raw.onnx").write_bytes(b"half a model")
    renamed_aside = cache / f".{first.data_path.name}.0123abcd.removed"  # unlink failed
    renamed_aside.write_bytes(b"old weights")
    first.path.unlink()
    assert ensure_onnx(model, cache_dir=cache).converted
    assert not stale.exists() and not renamed_aside.exists()


def _convert_in_child(model_dir: str, cache_dir: str, queue: Any) -> None:
    result = ensure_onnx(Path(model_dir), variant="fp32", cache_dir=Path(cache_dir))
    queue.put((result.converted, str(result.path)))


@pytest.mark.slow
def test_concurrent_conversion_in_two_processes(
    model_dir: Path, pristine: ConvertedModel, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    cache = tmp_path / "cache"
    procs = [
        ctx.Process(target=_convert_in_child, args=(str(model_dir), str(cache), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(converted for converted, _ in results) == [False, True]
    assert len({path for _, path in results}) == 1
    onnx_files = sorted(f.name for f in cache.iterdir() if f.suffix == ".onnx")
    assert onnx_files == [pristine.path.name]
    leftovers = [f.name for f in cache.iterdir() if f.name.startswith(".")]
    assert leftovers == []
    assert (cache / pristine.path.name).read_bytes() == pristine.path.read_bytes()


def test_a_cache_hit_imports_neither_onnx_nor_onnxruntime(
    pristine: ConvertedModel, model_dir: Path
) -> None:
    import onnxruntime

    cache = pristine.path.parent
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from lazyembed.models.convert import find_converted\n"
        f"hit = find_converted(Path({str(model_dir)!r}), cache_dir=Path({str(cache)!r}))\n"
        "loaded = ['onnx' in sys.modules, 'onnxruntime' in sys.modules]\n"
        "print(json.dumps([hit.fingerprint, *loaded]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    fingerprint, onnx_imported, ort_imported = json.loads(out)
    assert fingerprint == pristine.fingerprint
    assert f"onnxruntime={onnxruntime.__version__}" in fingerprint
    assert not onnx_imported and not ort_imported
