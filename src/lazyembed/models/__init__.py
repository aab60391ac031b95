"""Model files: resolving a model spec to local files, and converting weights to ONNX."""

from __future__ import annotations
