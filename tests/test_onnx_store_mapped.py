"""A process that has the model's weights memory-mapped survives a heal done by another.

ONNX Runtime maps ``<stem>.onnx.data``. A rebuild must replace that file (new inode,
rename), never truncate or rewrite it in place: the mapping process would die of SIGBUS
or compute with changed weights. The process here keeps its session open while another
process rebuilds the model under it, and must keep embedding exactly as before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lazyembed.models.convert import ConvertedModel, ensure_onnx
from lazyembed.models.convert_child import ensure_onnx_in_child

# Holds a session like the runtime does (pre-optimized graph, optimizations off); on each
# line of stdin runs one batch and prints the output's bytes, or (on "reopen") opens a
# second session from the files now in the cache and runs that.
_HOLDER = r"""
import sys
import numpy as np
import onnxruntime as ort

def session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], np.int64)
feed = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
held = session(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    sess = session(sys.argv[1]) if line.strip() == "reopen" else held
    print(sess.run(["last_hidden_state"], feed)[0].tobytes().hex(), flush=True)
"""


def _mapped_files(pid: int) -> dict[int, set[str]]:
    """inode -> the names under which process ``pid`` maps it (`` (deleted)`` when unlinked)."""
    found: dict[int, set[str]] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and int(fields[4]) != 0:
            found.setdefault(int(fields[4]), set()).add(fields[5])
    return found


def test_a_mapped_model_survives_a_heal_by_another_process(
    model_dir: Path, session_dir: Path, tmp_path: Path
) -> None:
    pristine: ConvertedModel = ensure_onnx(model_dir, cache_dir=session_dir / "cache")
    cache = tmp_path / "cache"
    cache.mkdir()
    for src in (pristine.path.with_suffix(".json"), pristine.path, pristine.data_path):
        shutil.copyfile(src, cache / src.name)
    model = ensure_onnx(model_dir, cache_dir=cache)
    assert not model.converted
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(model.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "ready"
        holder.stdin.write("run\n")
        holder.stdin.flush()
        before = holder.stdout.readline().strip()
        inode = os.stat(model.data_path).st_ino
        assert _mapped_files(holder.pid)[inode] == {str(model.data_path)}  # really mapped

        # The manifest is damaged: another process heals by rebuilding both model files.
        model.path.with_suffix(".json").write_text(json.dumps({"damaged": True}))
        healed = ensure_onnx_in_child(model_dir, cache_dir=cache)
        assert healed.converted

        # The holder's weights were replaced, not rewritten: its inode is gone, not reused.
        names = _mapped_files(holder.pid)[inode]
        assert all(name.endswith(" (deleted)") for name in names), names
        assert os.stat(healed.data_path).st_ino != inode
        holder.stdin.write("run\nreopen\n")
        holder.stdin.flush()
        after, reopened = holder.stdout.readline().strip(), holder.stdout.readline().strip()
        assert after == before  # the held session: same weights, same numbers
        assert reopened == before  # the healed files: the same model
    finally:
        holder.stdin.close()
        try:
            code = holder.wait(timeout=120)
        finally:  # a holder that does not end is killed and reaped, the test failed
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            holder.stdout.close()
    assert code == 0  # not killed (SIGBUS would be -7)
