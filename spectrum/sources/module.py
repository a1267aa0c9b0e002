"""A model already in memory as a tensor source: a `torch.nn.Module`'s parameters, read where they are.

A notebook or a training loop holds the model it trains; reading its checkpoint again (or having none:
a model changed by training) is what a live scan avoids. The module's parameters are the source's
tensors, under the module's own names, so the scan that scores a checkpoint scores them too (the same
batching, CPU workers, progress and arithmetic), and the scores equal a scan of the same weights saved
to safetensors:

- parameters on the CPU in float64/32/16 or bfloat16 are served to the NumPy route as `StoredArray`
  views of their own memory (bfloat16 as its bits), exactly as a checkpoint's bytes are;
- parameters on a CUDA device are read as they are (detached, no copy) and batched on that device.

Nothing copies the whole model: a matrix is read when a worker is about to score it. torch is imported
only inside the methods (the module itself is what holds it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError
from .base import ShardInfo, SourceDescription, TensorInfo, TensorSource
from .dtypes import StoredArray

if TYPE_CHECKING:
    import torch

LIVE_KIND = "live"  # the provenance's source kind of a live scan: its names are the model's own


def dtype_name(dtype: "torch.dtype") -> str:
    """The safetensors spelling of a torch dtype (`BF16`, `F32`); other dtypes by their torch name, which
    the inventory treats as not floating (a bitsandbytes `uint8` weight is not a matrix to score)."""
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    return names.get(dtype, str(dtype).replace("torch.", "").upper())


def model_name(model) -> str:
    """What the scores of a live model are named after: its `name_or_path` (a transformers model loaded with
    `from_pretrained`), else its class name."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name if isinstance(name, str) and name else type(model).__name__


class ModelSource(TensorSource):
    """A live module's parameters as a tensor source: one "shard" per device, tensors in
    `named_parameters()` order (tied weights once, under their first name, as `save_pretrained` stores them).

    Args:
        model: the module; it is only read, one parameter at a time, never copied whole.
        name: what `describe()` calls it (default: `model_name`).
    """

    def __init__(self, model, name: str | None = None) -> None:
        self._name = name or model_name(model)
        self._parameters: dict[str, "torch.Tensor"] = {}
        by_device: dict[str, list[TensorInfo]] = {}
        for parameter_name, parameter in model.named_parameters():
            if parameter.device.type == "meta":
                raise UsageError(
                    f"{parameter_name} of {type(model).__name__} is on the meta device (offloaded or not loaded), "
                    "so it has no values to score; load the model onto the CPU or a GPU (no disk offload)"
                )
            self._parameters[parameter_name] = parameter
            device = str(parameter.device)
            by_device.setdefault(device, []).append(
                TensorInfo(parameter_name, dtype_name(parameter.dtype), tuple(parameter.shape), device)
            )
        self._infos = [info for infos in by_device.values() for info in infos]
        self.reads_arrays = list(by_device) in ([], ["cpu"])  # the NumPy route reads CPU memory only
        self.compute_device: "torch.device | None" = None  # set when the weights span devices (see `read`)

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def devices(self) -> list[str]:
        """The devices the parameters are on, in order of first appearance."""
        return self.shard_order()

    def read(self, shard: str, infos: list[TensorInfo]):
        """Each parameter as it is, detached (its own memory, on its own device); on a model spread over several
        devices, one parameter at a time is copied to `compute_device`, so that a CUDA batch stacks tensors
        of one device."""
        for info in infos:
            tensor = self._parameters[info.name].detach()
            if self.compute_device is not None and tensor.device != self.compute_device:
                tensor = tensor.to(self.compute_device)
            yield info, tensor

    def read_arrays(self, shard: str, infos: list[TensorInfo]):
        """Each CPU parameter as a `StoredArray` over its own memory: what the NumPy route reads."""
        import torch

        for info in infos:
            tensor = self._parameters[info.name].detach()
            if info.dtype == "BF16":  # NumPy has no bfloat16: its bits, as a checkpoint's BF16 bytes are read
                yield info, StoredArray(tensor.view(torch.int16).numpy().view("uint16"), "BF16")
            else:
                yield info, StoredArray(tensor.numpy(), info.dtype)

    def describe(self) -> SourceDescription:
        sizes: dict[str, int] = {}
        for info in self._infos:
            parameter = self._parameters[info.name]
            sizes[info.shard] = sizes.get(info.shard, 0) + parameter.numel() * parameter.element_size()
        return SourceDescription(LIVE_KIND, self._name, None, [ShardInfo(shard, size) for shard, size in sizes.items()])
