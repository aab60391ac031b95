"""Where the time of a batch-32 encode goes, and how close it is to the CPU's arithmetic.

Needs only lazyembed (run it in .venv or .venv-bench, from the repository root):

    .venv/bin/python -m bench.profile_encode [--sentences 2000] [--repeats 3]

It embeds the benchmark corpus the way `Embedder.embed_numpy` does (length-sorted,
padding-aware runs of at most 32) and splits the wall time into tokenisation, building the
padded inputs, ONNX Runtime's run and pooling. From the padded shapes it counts the
floating-point operations the encoder has to do (6 layers: QKV, attention, output
projection, feed-forward) and prints the rate reached, so the distance to the machine's
ceiling is a measured number. With ``--ort-profile`` it also prints ONNX Runtime's own
per-operator split (session profiling), which says whether the matrix products dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench import corpus

#: Rows of the lone GEMM: a batch of 32 sentences of 36 tokens, this corpus's typical run.
GEMM_ROWS = 1152


def encoder_flops(width: int, rows: int, hidden: int, intermediate: int, layers: int) -> float:
    """Multiply-adds x 2 of one padded run of `rows` x `width` tokens through the encoder."""
    tokens = rows * width
    dense = 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 2.0 * 2.0 * rows * width * width * hidden  # QK^T and AV
    return layers * (dense + attention)


def profile(texts: Sequence[str], repeats: int, ort_profile: bool) -> dict[str, Any]:
    import onnxruntime as ort

    from lazyembed import Embedder
    from lazyembed.pooling import pool
    from lazyembed.runtime import OnnxRuntime, padded_inputs, plan_batches, session_options

    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    prepared = embedder.prepare()
    spec = prepared.spec
    runtime = OnnxRuntime(spec)
    runtime.encode(["warm-up"])
    session = runtime._session  # the profile needs the raw session; nothing else does
    assert session is not None
    config = json.loads((Path(prepared.resolved.directory) / "config.json").read_text())
    hidden, intermediate = config["hidden_size"], config["intermediate_size"]
    layers = config["num_hidden_layers"]

    phases: dict[str, list[float]] = defaultdict(list)
    flops = 0.0
    padded = 0
    for _ in range(repeats):
        spent = dict.fromkeys(("tokenize", "inputs", "ort_run", "pool"), 0.0)
        flops, padded = 0.0, 0
        started = time.perf_counter()
        t0 = time.perf_counter()
        encodings = runtime.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        spent["tokenize"] += time.perf_counter() - t0
        for start, end in plan_batches(lengths[order].tolist(), spec.batch_size):
            t0 = time.perf_counter()
            rows = order[start:end]
            width = int(lengths[rows[-1]])
            ids, mask = padded_inputs(encodings, rows, width)
            t1 = time.perf_counter()
            hidden_states = session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask},
                runtime._run_options,
            )[0]
            t2 = time.perf_counter()
            pool(hidden_states, mask, spec.pooling, normalize=spec.normalize)
            t3 = time.perf_counter()
            spent["inputs"] += t1 - t0
            spent["ort_run"] += t2 - t1
            spent["pool"] += t3 - t2
            padded += ids.size
            flops += encoder_flops(width, len(rows), hidden, intermediate, layers)
        total = time.perf_counter() - started
        for key, value in spent.items():
            phases[key].append(value)
        phases["total"].append(total)
    result: dict[str, Any] = {
        "texts": len(texts),
        "threads": spec.threads,
        "real_tokens": int(sum(len(e.ids) for e in encodings)),
        "padded_tokens_per_pass": padded,
        "gflop_per_pass": flops / 1e9,
        "phases_s": {key: statistics.median(values) for key, values in phases.items()},
    }
    total = result["phases_s"]["total"]
    result["sentences_per_s"] = len(texts) / total
    result["gflops_overall"] = flops / 1e9 / total
    result["gflops_in_ort_run"] = flops / 1e9 / result["phases_s"]["ort_run"]

    result["gemm_alone_gflops"] = gemm_ceiling(spec, hidden, intermediate)
    if ort_profile:
        result["ort_ops"] = _ort_operator_split(spec, texts, session_options, ort, plan_batches)
    runtime.close()
    return result


def _ort_operator_split(
    spec: Any, texts: Sequence[str], session_options: Any, ort: Any, plan_batches: Any
) -> dict[str, float]:
    """ONNX Runtime's session profiler: % of kernel time per operator type."""
    from lazyembed.runtime import load_tokenizer, padded_inputs

    options = session_options(
        spec.threads, pre_optimized=spec.pre_optimized, prepack=spec.prepack_at_load
    )
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(
            spec.onnx_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        tok = load_tokenizer(spec.tokenizer_path, spec.max_seq_length)
        encodings = tok.encode_batch(list(texts[:512]), add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        for start, end in plan_batches([lengths[i] for i in order], spec.batch_size):
            rows = order[start:end]
            ids, mask = padded_inputs(encodings, rows, lengths[rows[-1]])
            session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        path = session.end_profiling()
        events = json.loads(Path(path).read_text(encoding="utf-8"))
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    total = sum(by_op.values()) or 1.0
    return {op: 100.0 * us / total for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}


def gemm_ceiling(spec: Any, hidden: int, intermediate: int, rows: int = GEMM_ROWS) -> float:
    """GFLOP/s of one lone MatMul of the feed-forward's shape, same threads and options.

    The rate ONNX Runtime's GEMM reaches on this machine when nothing else runs: the
    practical ceiling the whole encoder's rate is compared with.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lazyembed.runtime import session_options

    rng = np.random.default_rng(0)
    weight = rng.random((hidden, intermediate), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, intermediate])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = session_options(spec.threads, pre_optimized=False, prepack=spec.prepack_at_load)
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    x = rng.random((rows, hidden), dtype=np.float32)
    session.run(None, {"x": x})
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            session.run(None, {"x": x})
        best = min(best, (time.perf_counter() - started) / 20)
    return 2.0 * rows * hidden * intermediate / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ort-profile", action="store_true", help="per-operator split")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = profile(corpus.sentences(args.sentences), args.repeats, args.ort_profile)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    total = result["phases_s"]["total"]
    print(
        f"{result['texts']} sentences, {result['threads']} threads, batch 32, median of "
        f"{args.repeats}: {result['sentences_per_s']:.0f} sentences/s"
    )
    print("| phase | s | % |\n|---|---|---|")
    for key in ("tokenize", "inputs", "ort_run", "pool", "total"):
        seconds = result["phases_s"][key]
        print(f"| {key} | {seconds:.3f} | {100 * seconds / total:.1f} |")
    print(
        f"\ntokens: {result['real_tokens']} real, {result['padded_tokens_per_pass']} padded; "
        f"encoder work: {result['gflop_per_pass']:.1f} GFLOP per pass; "
        f"{result['gflops_overall']:.0f} GFLOP/s overall, "
        f"{result['gflops_in_ort_run']:.0f} GFLOP/s inside ORT's run; a lone feed-forward "
        f"MatMul of {GEMM_ROWS} rows reaches {result['gemm_alone_gflops']:.0f} GFLOP/s"
    )
    if "ort_ops" in result:
        print("\n| ORT operator | % of kernel time |\n|---|---|")
        for op, share in list(result["ort_ops"].items())[:10]:
            print(f"| {op} | {share:.1f} |")


if __name__ == "__main__":
    main()
