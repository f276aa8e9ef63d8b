"""CacheSpec: the one description of a key/value cache that layers, models and export share.

A self-attention cache is one tensor per layer of shape
`(batch, 2, num_key_value_heads, length, head_dim)`: keys at index 0, values at index 1. With
grouped-query attention only the key/value heads are cached. Export graphs carry the same
keys and values as separate `(batch, num_key_value_heads, length, head_dim)` tensors.
"""

import dataclasses

from keras import ops

from keras_transformer.layers._validation import check_dims, check_rank

LAYOUT = "(batch, 2, num_key_value_heads, length, head_dim)"


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """Shape and dtype of a stack's key/value caches.

    Attributes:
        num_layers: caches in the stack (one per attention layer).
        num_key_value_heads: heads stored in each cache.
        head_dim: width of each head.
        dtype: dtype of the cache tensors (the layers' compute dtype).

    Example:
    >>> spec = CacheSpec(num_layers=2, num_key_value_heads=2, head_dim=8)
    >>> spec.shape(batch=3, length=16)
    (3, 2, 2, 16, 8)
    """

    num_layers: int
    num_key_value_heads: int
    head_dim: int
    dtype: str = "float32"

    def shape(self, batch, length):
        """The shape of one layer's cache (either argument may be None: unknown)."""
        return (batch, 2, self.num_key_value_heads, length, self.head_dim)

    def zeros(self, batch, length):
        """Zeroed caches, one tensor per layer."""
        return tuple(
            ops.zeros(self.shape(batch, length), dtype=self.dtype) for _ in range(self.num_layers)
        )

    def check(self, name, cache):
        """ValueError naming `name` unless `cache` (a tensor or shape) fits this spec."""
        check_rank(name, cache, 5)
        check_dims(name, getattr(cache, "shape", cache), self.shape(None, None), LAYOUT)

    def to_dict(self):
        """A JSON-friendly form (stored in export metadata)."""
        return dataclasses.asdict(self)
