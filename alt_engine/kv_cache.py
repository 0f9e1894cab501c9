"""A KV cache whose rows come and go: preallocated per-layer buffers written in place.

Used by ``TransformersBackend``'s decode loop: ``SlotLayer`` avoids ``DynamicLayer``'s ``torch.cat`` per step,
``merge_layers`` builds the next batch's cache from the rows still decoding and the ones just prefilled.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

HEADROOM = 64  # columns allocated ahead, so a buffer grows (one copy) every 64 steps at most


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values for the rows being decoded: [rows, heads, capacity, head_dim] buffers.

    ``update`` writes the new positions in place and returns views up to the current length (no
    ``torch.cat`` per step, unlike ``DynamicLayer``). Rows are right-aligned (left padding): a row's real
    positions are the last ones; the columns before them are masked out.
    """

    is_sliding = False

    def __init__(self):
        super().__init__()
        self.length = 0

    def lazy_initialization(self, key_states, value_states) -> None:  # first update (prefill)
        rows, heads, n, dim = key_states.shape
        self.keys = key_states.new_zeros(rows, heads, n + HEADROOM, dim)
        self.values = value_states.new_zeros(rows, value_states.shape[1], n + HEADROOM, value_states.shape[-1])
        self.length, self.is_initialized = 0, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.length + n > self.keys.shape[-2]:
            self.resize(self.keys.shape[-2] + n + HEADROOM)
        self.keys[:, :, self.length:self.length + n] = key_states
        self.values[:, :, self.length:self.length + n] = value_states
        self.length += n
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]

    def resize(self, capacity: int) -> None:
        grow = capacity - self.keys.shape[-2]
        self.keys = torch.nn.functional.pad(self.keys, (0, 0, 0, grow))
        self.values = torch.nn.functional.pad(self.values, (0, 0, 0, grow))

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


def merge_layers(parts: list[tuple[SlotLayer, torch.Tensor, int]], width: int) -> SlotLayer:
    """One layer holding chosen rows of other layers, right-aligned in ``width`` columns.

    ``parts``: (layer, row indices, columns in use at its end); earlier columns of a row are padding.
    """
    first = parts[0][0]
    rows = sum(len(idx) for _, idx, _ in parts)
    merged = SlotLayer()
    merged.keys = first.keys.new_zeros(rows, first.keys.shape[1], width + HEADROOM, first.keys.shape[-1])
    merged.values = first.values.new_zeros(rows, first.values.shape[1], width + HEADROOM, first.values.shape[-1])
    merged.length, merged.is_initialized = width, True
    at = 0
    for layer, idx, cols in parts:
        src = slice(layer.length - cols, layer.length)
        merged.keys[at:at + len(idx), :, width - cols:width] = layer.keys[idx, :, src]
        merged.values[at:at + len(idx), :, width - cols:width] = layer.values[idx, :, src]
        at += len(idx)
    return merged
