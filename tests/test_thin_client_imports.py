"""A process that uses the daemon never imports ONNX Runtime, tokenizers or numpy (unless
it asks for arrays), and neither does ``lazyembed embed`` with a warm daemon.

Each check runs in a fresh interpreter (this test process has imported everything
already), against a daemon in the test's private runtime folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from daemon_helpers import DaemonEnv, private_daemon_env

HEAVY = ("onnxruntime", "tokenizers", "numpy", "lazyembed.runtime", "lazyembed.models.convert")


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonEnv]:
    yield from private_daemon_env(monkeypatch)


def python(daemon: DaemonEnv, code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=daemon.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_library_surface_through_the_daemon_stays_thin(daemon: DaemonEnv) -> None:
    out = python(
        daemon,
        f"""
import sys, json
import lazyembed
e = lazyembed.Embedder(share="always")
assert e.shared and isinstance(e, lazyembed.Embedder)
one = e.embed("a text through the daemon")
many = e.embed(["one", "two"])
q = e.embed_query("a query")
counts = e.count_tokens(["one two three"])
dim = e.get_embedding_dimension()
usage = e.get_memory_usage()
m = lazyembed.Models(share="always")
m.embed("through a registry")
e.close()
print(json.dumps({{
    "heavy": [name for name in {HEAVY!r} if name in sys.modules],
    "lengths": [len(one), len(many), len(many[0]), len(q), dim],
    "counts": counts,
    "shared": usage["shared"],
}}))
""",
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["lengths"] == [384, 2, 384, 384, 384]
    assert result["counts"] == [5]
    assert result["shared"] is True


def test_import_lazyembed_and_the_classes_stay_light(daemon: DaemonEnv) -> None:
    out = python(
        daemon,
        f"""
import sys
import lazyembed
lazyembed.Embedder, lazyembed.Models, lazyembed.embed, lazyembed.get_memory_usage
print([name for name in {HEAVY!r} if name in sys.modules])
""",
    )
    assert out.strip() == "[]"


def test_arrays_import_numpy_only_when_asked(daemon: DaemonEnv) -> None:
    out = python(
        daemon,
        """
import sys
import lazyembed
e = lazyembed.Embedder(share="always")
e.embed("first")
before = "numpy" in sys.modules
array = e.embed_numpy(["second", "third"])
print(before, array.shape, array.dtype, "onnxruntime" in sys.modules)
""",
    )
    assert out.strip() == "False (2, 384) float32 False"


def test_the_cli_with_a_warm_daemon_imports_no_model_code(daemon: DaemonEnv) -> None:
    first = daemon.run(["embed", "warm it up"])  # the CLI's default: share always
    assert first.returncode == 0, first.stderr
    assert daemon.daemon_pids()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lazyembed", "embed", "a CLI text"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "lazyembed.cli" in imported  # the import log is what we think it is
    assert not imported & {*HEAVY, "tqdm"}
    shared = json.loads(done.stdout)
    local = daemon.run(["embed", "--share", "never", "a CLI text"])
    assert local.returncode == 0, local.stderr
    expected = json.loads(local.stdout)
    assert len(shared) == 1 and len(shared[0]) == 384
    assert max(abs(a - b) for a, b in zip(shared[0], expected[0], strict=True)) <= 1e-6


def test_the_cli_share_never_starts_no_daemon(daemon: DaemonEnv) -> None:
    done = daemon.run(["embed", "--share", "never", "in this process"])
    assert done.returncode == 0, done.stderr
    assert not daemon.daemon_pids()
    assert not daemon.paths.socket.exists()


def test_the_cli_writes_every_format_through_the_daemon(daemon: DaemonEnv) -> None:
    import numpy as np

    texts = ["first line", "second line"]
    for share in ("always", "never"):
        out = daemon.root / f"{share}.npy"
        done = daemon.run(["embed", "--share", share, "--format", "npy", "-o", str(out), *texts])
        assert done.returncode == 0, done.stderr
        lines = daemon.run(["embed", "--share", share, "--format", "jsonl", *texts])
        assert lines.returncode == 0, lines.stderr
        rows = [json.loads(line) for line in lines.stdout.splitlines()]
        assert np.allclose(np.load(out), np.asarray(rows, dtype=np.float32), atol=1e-6)
    assert daemon.daemon_pids()  # "always" started it
    shared, local = np.load(daemon.root / "always.npy"), np.load(daemon.root / "never.npy")
    assert shared.shape == (2, 384) and shared.dtype == np.float32
    assert np.abs(shared - local).max() <= 1e-6
