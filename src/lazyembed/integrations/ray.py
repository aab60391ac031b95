"""Ray Data: `embed_dataset` and the callable class `LazyEmbedBatchEmbedder` behind it.

Install with ``pip install 'lazyembed[ray]'``. Each actor of the pool holds one lazyembed
Embedder whose ONNX Runtime threads match the CPUs the actor reserves, so actors do not
oversubscribe a node. The model loads at an actor's first batch and unloads when idle,
like anywhere else.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.embedder import Embedder
from lazyembed.errors import InvalidInputError
from lazyembed.integrations._common import missing_extra

try:
    import ray
    import ray.data
    from packaging.version import Version
except ImportError as exc:  # the extra is not installed
    raise missing_extra("ray", "ray", exc) from exc

__all__ = ["LazyEmbedBatchEmbedder", "embed_dataset"]

Batch = dict[str, npt.NDArray[Any]]
PoolSize = int | tuple[int, int]


class LazyEmbedBatchEmbedder:
    """A Ray Data callable class: adds ``output_column`` (float32, one row per text).

    For ``Dataset.map_batches(LazyEmbedBatchEmbedder, batch_format="numpy",
    fn_constructor_kwargs={...}, num_cpus=n, ...)`` in pipelines of your own. Keywords
    other than the columns are lazyembed settings; ``intra_op_threads`` defaults to the
    ``num_cpus`` the actor reserves (at least one).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        num_cpus: float = 1,
        **settings: Any,
    ) -> None:
        settings.setdefault("intra_op_threads", max(1, math.floor(num_cpus)))
        self.text_column = text_column
        self.output_column = output_column
        self.embedder = Embedder(model, **settings)

    def __call__(self, batch: Batch) -> Batch:
        column = batch.get(self.text_column)
        if column is None:
            raise InvalidInputError(
                f"the batch has no column {self.text_column!r} (it has {sorted(batch)}); "
                "pass text_column="
            )
        texts = column.tolist()
        if texts:
            vectors = self.embedder.embed_numpy(texts)
        else:
            dim = self.embedder.get_embedding_dimension()
            vectors = np.empty((0, dim), dtype=np.float32)
        return {**batch, self.output_column: vectors}


def actor_pool_arguments(size: PoolSize) -> dict[str, Any]:
    """``map_batches`` keywords for a pool of ``size`` actors, as this Ray spells them.

    Ray 2.9 to 2.50 take ``concurrency=``; Ray 2.51 deprecates it in favour of
    ``compute=ActorPoolStrategy(...)``, which older Ray took too.
    """
    parameters = inspect.signature(ray.data.Dataset.map_batches).parameters
    if "concurrency" in parameters and Version(ray.__version__).release < (2, 51):
        return {"concurrency": size}
    if isinstance(size, tuple):
        strategy = ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1])
    else:
        strategy = ray.data.ActorPoolStrategy(size=size)
    return {"compute": strategy}


def embed_dataset(
    ds: ray.data.Dataset,
    text_column: str = "text",
    output_column: str = "embedding",
    model: str | None = None,
    batch_size: int = 256,
    concurrency: PoolSize = 1,
    num_cpus: float = 1,
    **settings: Any,
) -> ray.data.Dataset:
    """``ds`` with an ``output_column`` of float32 vectors, one per ``text_column`` row.

    ``concurrency`` actors (or a ``(min, max)`` autoscaling range) each reserve
    ``num_cpus`` and run one Embedder with as many ONNX Runtime threads; other keywords
    are lazyembed settings. Lazy like any Ray Data transform: nothing runs until consumed.
    """
    return ds.map_batches(
        LazyEmbedBatchEmbedder,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model": model,
            "text_column": text_column,
            "output_column": output_column,
            "num_cpus": num_cpus,
            **settings,
        },
        num_cpus=num_cpus,
        **actor_pool_arguments(concurrency),
    )
