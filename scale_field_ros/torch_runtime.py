"""Run a graph module eagerly in torch: the CUDA fallback where TensorRT is missing, and the CPU reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class TorchRunner:
    """`GraphRunner` for a torch module on CPU or CUDA (FP32; FP16 autocast on CUDA when `half`)."""

    fixed_hw = None

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu", half: bool = False) -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("torch runtime on cuda requested but torch sees no CUDA device")
        count = torch.cuda.device_count() if self.device.type == "cuda" else 0
        if self.device.type == "cuda" and not (self.device.index or 0) < count:
            raise ValueError(f"torch runtime on {self.device} requested; torch sees {count} CUDA device(s)")
        self.module = module.eval().to(self.device)
        self.half = bool(half and self.device.type == "cuda")
        self.name = f"torch-{self.device.type}" + ("-fp16" if self.half else "")

    def run(self, image: torch.Tensor) -> list[torch.Tensor]:
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            outputs = self.module(image.to(self.device))
        return [out.float() for out in outputs]
