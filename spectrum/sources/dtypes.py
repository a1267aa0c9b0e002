"""Stored dtypes: the safetensors dtype table, and `StoredArray`, a weight's bytes as NumPy in its stored dtype.

Here rather than with the NumPy route that computes on them, so that the sources, which read the
bytes, import nothing from the scoring room. No torch at import: a cached run never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

# safetensors dtype -> (torch dtype name, bytes per element). Header checks need only the sizes,
# so this module imports torch only when it reads a tensor (a cached run never does).
_DTYPE_TABLE: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "BOOL": ("bool", 1),
}
DTYPE_SIZES: dict[str, int] = {name: size for name, (_, size) in _DTYPE_TABLE.items()}


def torch_dtype(name: str) -> "torch.dtype | None":
    """The torch dtype of a safetensors dtype name; None when unknown or this torch lacks it."""
    import torch

    entry = _DTYPE_TABLE.get(name)
    return getattr(torch, entry[0], None) if entry else None


def __getattr__(attribute: str):
    """`DTYPES`: safetensors dtype -> (torch dtype or None, bytes per element), built on first use."""
    if attribute == "DTYPES":
        return {name: (torch_dtype(name), size) for name, size in DTYPE_SIZES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})  # scored as stored, upcast exactly
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})


HOST_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})  # stored dtypes NumPy reads (bfloat16 as its bits)
_NUMPY_TYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16"}  # bfloat16 as its bits


@dataclass(frozen=True)
class StoredArray:
    """A weight's bytes as a NumPy array in its stored dtype; bfloat16 (which NumPy lacks) as its
    uint16 bit patterns.

    Args:
        values: the array, of `_NUMPY_TYPES[dtype]`.
        dtype: the safetensors dtype name (F64, F32, F16, BF16).
    """

    values: np.ndarray
    dtype: str

    @classmethod
    def from_bytes(cls, buffer, dtype: str, shape: tuple[int, ...]) -> "StoredArray":
        import numpy as np  # here: reading headers (a cached run) needs no NumPy

        return cls(np.frombuffer(buffer, dtype=_NUMPY_TYPES[dtype]).reshape(shape), dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def nbytes(self) -> int:
        return self.values.nbytes

    def __getitem__(self, index) -> "StoredArray":
        """One expert of a fused (experts, out, in) tensor, say."""
        return StoredArray(self.values[index], self.dtype)

    def to_float64(self, out: np.ndarray, bits: np.ndarray | None = None) -> None:
        """Convert into `out` (same shape, float64) exactly; `bits`, a uint32 array of that shape,
        holds bfloat16's widened bits (a scratch buffer)."""
        import numpy as np

        with np.errstate(invalid="ignore"):  # NaN entries (signalling ones too) are found later, from the Gram diagonal
            if self.dtype != "BF16":
                out[...] = self.values
                return
            if bits is None:
                bits = np.empty(self.values.shape, dtype=np.uint32)
            np.left_shift(self.values, 16, out=bits, dtype=np.uint32)  # bfloat16 = the high half of a float32
            out[...] = bits.view(np.float32)
