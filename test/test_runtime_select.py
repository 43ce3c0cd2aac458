"""`runtime: auto` and explicit requests against faked machine capabilities (pure function)."""

from __future__ import annotations

import pytest

from scale_field_ros.runtime_select import (
    ORT_CPU,
    ORT_CUDA,
    TENSORRT,
    TFLITE,
    TORCH_CPU,
    TORCH_CUDA,
    RuntimeAvailability,
    RuntimeUnavailable,
    device_index,
    probe_runtimes,
    select_runtime,
)

CPU_ONLY = RuntimeAvailability(onnxruntime_providers=("CPUExecutionProvider",), torch=True, tflite=True)
TORCH_GPU = RuntimeAvailability(
    cuda_device="NVIDIA RTX 4090", onnxruntime_providers=("CPUExecutionProvider",), torch=True
)
FULL_GPU = RuntimeAvailability(
    cuda_device="Orin",
    tensorrt_version="10.3.0",
    onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    torch=True,
)
ONNX_FILE = (TENSORRT, ORT_CUDA, ORT_CPU)


def test_auto_prefers_tensorrt_then_torch_cuda_then_onnxruntime_cpu():
    runtime, reason = select_runtime("auto", FULL_GPU)
    assert runtime == TENSORRT and "Orin" in reason
    choice = select_runtime("auto", TORCH_GPU)
    assert choice.runtime == TORCH_CUDA and choice.device == "cuda"
    assert "tensorrt not installed" in choice.reason  # says why the faster one was skipped
    choice = select_runtime("auto", CPU_ONLY)
    assert choice.runtime == ORT_CPU and choice.device == "cpu"
    assert "torch sees no CUDA device" in choice.reason


def test_auto_respects_model_support_and_device():
    # An exported .onnx cannot run in torch: a torch-only GPU box falls to ONNX Runtime on CPU.
    assert select_runtime("auto", TORCH_GPU, supported=ONNX_FILE).runtime == ORT_CPU
    assert select_runtime("auto", FULL_GPU, device="cpu").runtime == ORT_CPU
    # TensorRT installed without a CUDA device is skipped with that reason.
    no_gpu = RuntimeAvailability(tensorrt_version="10.3.0", onnxruntime_providers=("CPUExecutionProvider",))
    choice = select_runtime("auto", no_gpu)
    assert choice.runtime == ORT_CPU and "no CUDA device" in choice.reason
    # A TFLite-only model on a machine with everything still gets TFLite.
    assert select_runtime("auto", CPU_ONLY, supported=(TFLITE,)).runtime == TFLITE


def test_families_pick_the_device():
    assert select_runtime("torch", TORCH_GPU).runtime == TORCH_CUDA
    assert select_runtime("torch", TORCH_GPU, device="cpu").runtime == TORCH_CPU
    assert select_runtime("torch", CPU_ONLY).runtime == TORCH_CPU
    assert select_runtime("onnxruntime", FULL_GPU).runtime == ORT_CUDA
    assert select_runtime("onnxruntime", TORCH_GPU).runtime == ORT_CPU


def test_explicit_requests_that_cannot_run_fail_clearly():
    with pytest.raises(RuntimeUnavailable, match="tensorrt not installed"):
        select_runtime("tensorrt", TORCH_GPU)
    with pytest.raises(RuntimeUnavailable, match="not supported for this model"):
        select_runtime("torch", FULL_GPU, supported=ONNX_FILE)
    with pytest.raises(RuntimeUnavailable, match="device cuda requested"):
        select_runtime("torch-cpu", CPU_ONLY, device="cuda")
    with pytest.raises(ValueError, match="unknown runtime"):
        select_runtime("openvino", CPU_ONLY)
    with pytest.raises(ValueError, match="device"):
        select_runtime("auto", CPU_ONLY, device="tpu")


def test_probe_reports_this_machine():
    available = probe_runtimes()
    assert available.torch  # the venv has torch
    assert "CPUExecutionProvider" in available.onnxruntime_providers
    choice = select_runtime("auto", available)
    assert choice.runtime in (TENSORRT, TORCH_CUDA, ORT_CUDA, ORT_CPU)
    assert (choice.device == "cuda") == (available.cuda_device is not None)


def test_device_index_of_device_strings():
    assert [device_index(d) for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:3")] == [0, 0, 0, 0, 3]
    with pytest.raises(ValueError, match="cuda:N"):
        device_index("cuda:one")
