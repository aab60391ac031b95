"""Convert in a short-lived child process, so a long-running one never holds the cost.

Converting imports onnx and the ONNX Runtime optimizer and peaks at ~500 MB of RSS. Done
in the embedding process it put that peak into the application, left it ~100 MB larger
until the next heap trim, and ~16 MB larger for good (measured here, fresh cache: RSS
41 MB before; 142 MB after converting in-process, 60 MB with the child; after a later
load + unload 91 MB in-process, 75 MB with the child). The child
(``python -m lazyembed.models.convert_child``) converts and exits, taking all of that
with it; the parent only verifies the cached files. It costs an interpreter start
(~0.1 s) on a conversion of ~1.5 s that happens once per model and version.

Errors: a conversion error in the child comes back as `ModelConversionError` with the
child's message (`ModelCacheError` when a damaged cached file cannot be removed); a
child killed by a signal (the OOM killer) is a `ModelConversionError` too (retrying in
the parent would risk killing the application). When the child cannot run at all (no
usable ``sys.executable``, as in some embedded interpreters, or lazyembed not importable
there), the conversion runs in this process instead, with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lazyembed.errors import ModelCacheError, ModelConversionError, UnsupportedModelError
from lazyembed.models.convert import ConvertedModel, Variant, ensure_onnx, find_converted

logger = logging.getLogger("lazyembed")

#: Exit status of a child that met a ModelConversionError (its message is on stderr).
CONVERSION_ERROR_EXIT = 3
#: Exit status of a child that met a ModelCacheError (its message is on stderr).
CACHE_ERROR_EXIT = 4
#: Exit status of a child that met an UnsupportedModelError (its message is on stderr).
UNSUPPORTED_EXIT = 5


def ensure_onnx_in_child(
    model_dir: Path, *, variant: Variant = "fp32", cache_dir: Path
) -> ConvertedModel:
    """`ensure_onnx`, but a needed conversion runs in a child process (see module doc)."""
    start = time.perf_counter()
    model_dir, cache_dir = Path(model_dir).resolve(), Path(cache_dir).resolve()
    cached = find_converted(model_dir, variant=variant, cache_dir=cache_dir)
    if cached is not None:
        return cached
    command = [
        sys.executable,
        "-m",
        __name__,
        "--model-dir",
        str(model_dir),
        "--variant",
        variant,
        "--cache-dir",
        str(cache_dir),
    ]
    env = child_env()
    logger.info("converting %s to ONNX (%s) in a child process", model_dir, variant)
    try:
        if not sys.executable:
            raise OSError("sys.executable is empty")
        child = subprocess.run(
            command,
            env=env,
            cwd=cache_dir,  # not the application's directory: nothing there shadows lazyembed
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        return _convert_here(model_dir, variant, cache_dir, f"cannot start a child: {exc}")
    message = _last_line(child.stderr)
    if child.returncode == UNSUPPORTED_EXIT:
        raise UnsupportedModelError(message or f"{model_dir} cannot be converted")
    if child.returncode == CACHE_ERROR_EXIT:
        raise ModelCacheError(message or f"the cached model of {model_dir} is damaged")
    if child.returncode == CONVERSION_ERROR_EXIT:
        raise ModelConversionError(message or f"converting {model_dir} failed")
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise ModelConversionError(
            f"the conversion process was killed by {name} (out of memory? converting "
            f"peaks at ~500 MB); {model_dir} was not converted"
        )
    if child.returncode != 0:
        return _convert_here(
            model_dir, variant, cache_dir, f"the child exited with {child.returncode}: {message}"
        )
    converted = find_converted(model_dir, variant=variant, cache_dir=cache_dir)
    if converted is None:
        raise ModelConversionError(
            f"the conversion process finished but left no valid model in {cache_dir}"
        )
    if child.stderr.strip():
        logger.debug("conversion process said: %s", child.stderr.strip())
    seconds = time.perf_counter() - start
    logger.info("converted %s in a child process in %.2f s", model_dir, seconds)
    return dataclasses.replace(converted, converted=True, seconds=seconds)


def child_env() -> dict[str, str]:
    """The environment of a child ``python -m lazyembed...``: it must import this very
    lazyembed, even when it is found through sys.path entries the application added at
    run time."""
    path = os.pathsep.join([entry for entry in sys.path if entry])
    inherited = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": path + (os.pathsep + inherited if inherited else "")}


def last_line(text: str) -> str:
    """The last non-blank line of a child's stderr (its one-line error message)."""
    return _last_line(text)


def _convert_here(model_dir: Path, variant: Variant, cache_dir: Path, why: str) -> ConvertedModel:
    logger.warning("converting in this process instead of a child (%s)", why)
    return ensure_onnx(model_dir, variant=variant, cache_dir=cache_dir)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    """The child: convert once, report a conversion error as one stderr line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--variant", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        ensure_onnx(args.model_dir, variant=args.variant, cache_dir=args.cache_dir)
    except UnsupportedModelError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return UNSUPPORTED_EXIT
    except ModelConversionError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return CACHE_ERROR_EXIT if isinstance(exc, ModelCacheError) else CONVERSION_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
