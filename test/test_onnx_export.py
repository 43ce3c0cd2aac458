"""The generic ONNX exporter: nested outputs flattened and named, optional dynamic image size."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return f.mean(dim=1, keepdim=True), {"feat": f, "pooled": torch.nn.functional.avg_pool2d(f, 2)}


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_names_outputs_and_matches_torch(tmp_path, dynamic):
    from scale_field_ros.onnx_export import export_onnx

    module = _TwoHeads().eval()
    path = export_onnx(module, tmp_path / "m.onnx", (32, 48), ["depth", "feat", "pooled"], dynamic=dynamic)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["depth", "feat", "pooled"]
    hw = (64, 40) if dynamic else (32, 48)
    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})
    with torch.inference_mode():
        depth, feats = module(torch.from_numpy(x))
    for a, b in zip(got, [depth, feats["feat"], feats["pooled"]], strict=True):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers


def test_export_refuses_a_wrong_number_of_names(tmp_path):
    from scale_field_ros.onnx_export import export_onnx

    with pytest.raises(ValueError, match="3 tensors but 2 output names"):
        export_onnx(_TwoHeads().eval(), tmp_path / "m.onnx", (32, 32), ["depth", "feat"])
