import numpy as np
import numpy.typing as npt

def hash64(key: str | bytes | bytearray | memoryview | int) -> int:
    """Return the stable 64-bit XXH3 hash of ``key``."""

def hash64_many(keys: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Hash a 1-D array of uint64 keys, each as ``hash64(int(k))``."""
