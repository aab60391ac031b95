"""Dense modules (sentence-transformers' ``Dense``) after the pooling, in numpy.

The fixture ``bert-dense-chain`` (BERT, mean pooling, Dense 32→64 Tanh, Dense 64→32
Identity, Normalize) is checked against sentence-transformers' vectors in
tests/test_model_fixtures.py; here: what the folder says is read and refused as it
should be, and the activations are torch's.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.dense import ACTIVATIONS, read_dense
from lazyembed.models.info import read_model_info

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "bert-dense-chain"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(FIXTURE, copy)
    return copy


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_the_chain_is_read_in_order() -> None:
    info = read_model_info(FIXTURE)
    assert [(d.in_features, d.out_features, d.activation) for d in info.dense] == [
        (32, 64, "Tanh"),
        (64, 32, "Identity"),
    ]
    assert info.dimension == 32 and info.normalize
    assert "dense=32>64,Tanh" in info.fingerprint_part()


def test_unknown_activation_is_refused_by_name(folder: Path) -> None:
    edit_json(folder / "2_Dense" / "config.json", activation_function="torch.nn.Hardswish")
    with pytest.raises(UnsupportedModelError, match=r"'torch\.nn\.Hardswish'.*Tanh"):
        read_model_info(folder)
    edit_json(folder / "2_Dense" / "config.json", activation_function="mypackage.MyAct")
    with pytest.raises(UnsupportedModelError, match=r"mypackage\.MyAct"):
        read_model_info(folder)


def test_missing_activation_is_tanh_as_in_sentence_transformers(folder: Path) -> None:
    config = folder / "2_Dense" / "config.json"
    data = json.loads(config.read_text())
    del data["activation_function"]
    config.write_text(json.dumps(data))
    assert read_dense(folder / "2_Dense").activation == "Tanh"


def test_pytorch_bin_only_names_the_conversion(folder: Path) -> None:
    weights = folder / "3_Dense" / "model.safetensors"
    weights.rename(weights.with_name("pytorch_model.bin"))
    with pytest.raises(UnsupportedModelError, match=r"pytorch_model\.bin.*save_file"):
        read_model_info(folder)


def test_sizes_that_do_not_chain_are_refused(folder: Path) -> None:
    edit_json(folder / "3_Dense" / "config.json", in_features=48)
    with pytest.raises(ModelConversionError, match=r"linear\.weight should have shape \[32, 48\]"):
        read_model_info(folder)


def test_dense_before_the_pooling_is_refused(folder: Path) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    modules[1], modules[2] = modules[2], modules[1]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="only after the Pooling"):
        read_model_info(folder)


def test_dense_on_token_embeddings_is_refused(folder: Path) -> None:
    edit_json(folder / "2_Dense" / "config.json", module_input_name="token_embeddings")
    with pytest.raises(UnsupportedModelError, match="token_embeddings"):
        read_model_info(folder)


@pytest.mark.parametrize(
    ("name", "x", "want"),
    [  # torch.nn's values (default arguments)
        ("GELU", 1.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))),
        ("SiLU", 1.0, 1 / (1 + math.exp(-1))),
        ("Sigmoid", 0.0, 0.5),
        ("ReLU", -2.0, 0.0),
        ("LeakyReLU", -1.0, -0.01),
        ("ELU", -1.0, math.exp(-1) - 1),
        ("Softplus", 0.0, math.log(2)),
        ("Mish", 1.0, math.tanh(math.log1p(math.e))),
        ("Softsign", 1.0, 0.5),
        ("Tanh", 0.5, math.tanh(0.5)),
        ("Identity", -3.0, -3.0),
    ],
)
def test_activations_are_torchs(name: str, x: float, want: float) -> None:
    got = ACTIVATIONS[name](np.array([[x]], dtype=np.float32))
    assert got.dtype == np.float32
    assert float(got[0, 0]) == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_a_dense_that_does_not_take_the_previous_width_is_refused(folder: Path) -> None:
    from safetensors.numpy import save_file

    dense = folder / "3_Dense"
    edit_json(dense / "config.json", in_features=48)
    rng = np.random.default_rng(0)
    save_file(
        {
            "linear.weight": rng.standard_normal((32, 48)).astype(np.float32),
            "linear.bias": np.zeros(32, dtype=np.float32),
        },
        str(dense / "model.safetensors"),
    )
    with pytest.raises(ModelConversionError, match="in_features 48 does not match"):
        read_model_info(folder)


def test_bfloat16_weights_are_widened_exactly(folder: Path) -> None:
    """numpy has no bfloat16: the file is read as the safetensors format defines it."""
    import struct

    from safetensors.numpy import load_file

    from lazyembed.models.dense import DenseStack

    weights = folder / "2_Dense" / "model.safetensors"
    tensors = load_file(str(weights))
    header: dict[str, object] = {}
    blobs = b""
    for name in sorted(tensors):
        bits = (tensors[name].astype("<f4").view("<u4") >> 16).astype("<u2")
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensors[name].shape),
            "data_offsets": [len(blobs), len(blobs) + bits.nbytes],
        }
        blobs += bits.tobytes()
    encoded = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + blobs)
    layer = read_dense(folder / "2_Dense")
    x = np.ones((1, 32), dtype=np.float32)
    truncated = (tensors["linear.weight"].view("<u4") & 0xFFFF0000).view("<f4")
    bias = (tensors["linear.bias"].view("<u4") & 0xFFFF0000).view("<f4")
    want = np.tanh(x @ truncated.T + bias)
    np.testing.assert_allclose(DenseStack([layer]).apply(x), want, rtol=1e-6, atol=1e-6)
