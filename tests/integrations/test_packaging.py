"""The core install stays lean: frameworks only behind extras, never imported by lazyembed."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lazyembed.errors import ExtraNotInstalledError

FRAMEWORKS = {"langchain-core", "llama-index-core", "chromadb", "ray"}
EXTRAS = {"langchain", "llama-index", "chroma", "ray", "integrations"}


def _core_requirements(distribution: str) -> list[Requirement]:
    """What ``pip install <distribution>`` pulls: requirements without an extra marker."""
    core = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            core.append(requirement)
    return core


def test_every_framework_requirement_sits_behind_an_extra() -> None:
    framework_lines = [
        Requirement(line)
        for line in importlib.metadata.requires("lazyembed") or []
        if canonicalize_name(Requirement(line).name) in FRAMEWORKS
    ]
    assert {canonicalize_name(r.name) for r in framework_lines} == FRAMEWORKS
    for requirement in framework_lines:
        assert requirement.marker is not None and "extra ==" in str(requirement.marker), (
            f"{requirement} is not behind an extra"
        )
        assert not requirement.marker.evaluate({"extra": ""})
    extras = importlib.metadata.metadata("lazyembed").get_all("Provides-Extra") or []
    assert {canonicalize_name(e) for e in extras} >= EXTRAS


def test_the_core_install_pulls_no_framework_nor_torch_transitively() -> None:
    # Walk the installed core dependency tree (no extras anywhere) from lazyembed.
    seen: set[str] = set()
    pending = ["lazyembed"]
    while pending:
        name = pending.pop()
        for requirement in _core_requirements(name):
            dependency = canonicalize_name(requirement.name)
            if dependency in seen:
                continue
            seen.add(dependency)
            try:
                importlib.metadata.distribution(dependency)
            except importlib.metadata.PackageNotFoundError:
                continue  # not installed here (e.g. for another Python): nothing to walk
            pending.append(dependency)
    assert "onnxruntime" in seen  # the walk really ran
    assert not seen & (FRAMEWORKS | {"torch", "langchain", "llama-index"}), sorted(seen)


def test_importing_lazyembed_imports_no_framework() -> None:
    script = (
        "import json, sys\n"
        "import lazyembed, lazyembed.embedder, lazyembed.integrations\n"
        "from lazyembed import Embedder\n"
        "mods = ('langchain_core', 'llama_index', 'chromadb', 'ray', 'torch')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in mods)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("adapter", "framework", "extra"),
    [
        ("langchain", "langchain_core", "langchain"),
        ("llama_index", "llama_index", "llama-index"),
        ("chroma", "chromadb", "chroma"),
        ("ray", "ray", "ray"),
    ],
)
def test_an_adapter_without_its_framework_names_the_extra(
    adapter: str, framework: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == framework or m.startswith(framework + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setitem(sys.modules, framework, None)
    monkeypatch.delitem(sys.modules, f"lazyembed.integrations.{adapter}", raising=False)
    with pytest.raises(ExtraNotInstalledError, match=re.escape(f"lazyembed[{extra}]")) as info:
        importlib.import_module(f"lazyembed.integrations.{adapter}")
    assert isinstance(info.value, ImportError)
