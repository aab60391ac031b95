"""Ray Data adapter: every row's vector is the library's; one Embedder per actor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import ray
import ray.data

from lazyembed import Embedder
from lazyembed.errors import InvalidInputError
from lazyembed.integrations import ray as lazyembed_ray
from lazyembed.integrations.ray import LazyEmbedBatchEmbedder, actor_pool_arguments, embed_dataset

TEXTS = [f"note {i}: topic {i % 23} in words {'x' * (i % 7)}" for i in range(2000)]


@pytest.mark.usefixtures("ray_cluster")
def test_every_row_gets_the_library_vector_across_two_actors(shared_embedder: Embedder) -> None:
    ds = ray.data.from_items([{"id": i, "body": t} for i, t in enumerate(TEXTS)])
    out = embed_dataset(
        ds,
        text_column="body",
        output_column="vec",
        batch_size=250,
        concurrency=2,
        num_cpus=1,
        cache_memory_mb=0,
    )
    rows = out.take_all()
    assert len(rows) == len(TEXTS)
    assert set(rows[0]) == {"id", "body", "vec"}
    rows.sort(key=lambda row: row["id"])
    got = np.stack([row["vec"] for row in rows])
    assert got.dtype == np.float32
    assert [row["body"] for row in rows] == TEXTS
    expected = shared_embedder.embed_numpy(TEXTS)
    assert np.allclose(got, expected, rtol=0, atol=1e-6)


def test_the_callable_class_matches_threads_to_cpus_and_keeps_the_batch() -> None:
    embedder = LazyEmbedBatchEmbedder(num_cpus=2, cache_memory_mb=0)
    assert embedder.embedder.settings.intra_op_threads == 2
    assert LazyEmbedBatchEmbedder(num_cpus=0.5).embedder.settings.intra_op_threads == 1
    assert LazyEmbedBatchEmbedder(intra_op_threads=3).embedder.settings.intra_op_threads == 3
    batch = {"text": np.array(["a", "b"], dtype=object), "n": np.array([1, 2])}
    result = embedder(batch)
    assert set(result) == {"text", "n", "embedding"}
    assert np.array_equal(result["n"], [1, 2])
    assert result["embedding"].shape == (2, 384)
    empty = embedder({"text": np.array([], dtype=object)})
    assert empty["embedding"].shape == (0, 384)
    with pytest.raises(InvalidInputError, match="no column 'text'"):
        embedder({"body": np.array(["a"], dtype=object)})
    embedder.embedder.close()


def test_an_actor_unloads_when_idle(clock: Any) -> None:
    actor = LazyEmbedBatchEmbedder(idle_timeout=60, cache_memory_mb=0, clock=clock)
    actor({"text": np.array(["load me"], dtype=object)})
    assert actor.embedder.is_loaded
    clock.now += 61
    assert actor.embedder._lifecycle.poll() == "idle"
    assert not actor.embedder.is_loaded
    actor.embedder.close()


def test_actor_pool_arguments_follow_the_ray_version(monkeypatch: pytest.MonkeyPatch) -> None:
    modern = actor_pool_arguments(2)
    assert set(modern) == {"compute"}
    assert isinstance(modern["compute"], ray.data.ActorPoolStrategy)
    autoscaling = actor_pool_arguments((1, 3))["compute"]
    assert (autoscaling.min_size, autoscaling.max_size) == (1, 3)
    monkeypatch.setattr(lazyembed_ray.ray, "__version__", "2.40.0")
    assert actor_pool_arguments(2) == {"concurrency": 2}
