"""A KV cache of fixed slots, one sequence per slot, each written at its own positions.

Why not transformers' DynamicCache: it appends the same number of columns to every row, so a
batch whose rows are at different stages (one decoding, one parked while its code runs, one
taking 40 interpreter tokens) must pad every row for every step, and rows can join or leave only
by copying the whole cache. Here every slot owns columns ``[0, length)`` of a preallocated buffer;
a forward pass writes each row's new keys and values at that row's next columns, padding queries
write to a trash column, and the engine passes a 4-D mask it built itself. Parked slots cost
nothing, and a continuation feeds only its new tokens.

Layout of one layer's buffer (``keys`` and ``values`` alike)::

    [slots, kv_heads, capacity, head_dim]   column capacity-1 is the trash column

What this does not do: paging, eviction policy, or sharing columns between slots (prefix sharing
copies columns; see ``copy_prefix``).
"""

from __future__ import annotations

import torch


class SlotKVCache:
    """Duck-types the ``update(key, value, layer_idx)`` call that transformers' attention makes."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int, capacity: int, dtype, device) -> None:
        self.shape = (layers, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [torch.zeros(slots, kv_heads, capacity, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        # set by prepare() for the forward pass in flight
        self._rows: torch.Tensor | None = None
        self._write_cols: torch.Tensor | None = None
        self._kv_len = 0
        self._all_rows = False

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def trash(self) -> int:
        return self.capacity - 1

    def grow(self, capacity: int) -> None:
        """More columns per slot (a copy of the buffer). Slots are fixed at construction."""
        if capacity <= self.capacity:
            return
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = torch.zeros(old.shape[0], old.shape[1], capacity, old.shape[3], dtype=self.dtype, device=self.device)
                new[:, :, : old.shape[2] - 1] = old[:, :, :-1]  # the old trash column is not data
                buffers[i] = new

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Give slot ``dst`` the first ``length`` columns of slot ``src`` (shared prompt prefix)."""
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[dst, :, :length] = layer[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first ``length`` columns of slots ``a`` and ``b``."""
        for buffers in (self.keys, self.values):
            for layer in buffers:
                held = layer[a, :, :length].clone()
                layer[a, :, :length] = layer[b, :, :length]
                layer[b, :, :length] = held

    def prepare(self, rows: list[int], lengths: list[int], new_counts: list[int], width: int) -> torch.Tensor:
        """Set up one forward pass and return its 4-D additive attention mask.

        ``rows[b]`` is the slot of batch row b, ``lengths[b]`` the columns it already holds,
        ``new_counts[b]`` how many of the ``width`` query positions are real; real queries are
        right-aligned (padding first), so the last position of every row is a real token when
        ``new_counts[b] > 0``.
        """
        b = len(rows)
        lengths_t = torch.tensor(lengths, device=self.device)
        counts_t = torch.tensor(new_counts, device=self.device)
        t = torch.arange(width, device=self.device)
        j = t[None, :] - (width - counts_t[:, None])  # index among the row's real new tokens, <0 = padding
        real = j >= 0
        cols = torch.where(real, lengths_t[:, None] + j, torch.full_like(j, self.trash))
        self._kv_len = int((lengths_t + counts_t).max())
        if self._kv_len >= self.trash:
            raise RuntimeError(f"KV slot capacity {self.capacity} exceeded; grow() first")
        self._write_cols = cols
        self._rows = torch.tensor(rows, device=self.device)
        self._all_rows = rows == list(range(b)) and b <= self.slots
        key_pos = torch.arange(self._kv_len, device=self.device)
        visible = key_pos[None, None, :] <= cols[:, :, None]  # causal over the row's own columns
        visible &= real[:, :, None]
        visible[:, :, 0] |= ~real  # a padding query looks at column 0 only (its output is ignored)
        mask = torch.zeros(b, 1, width, self._kv_len, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~visible[:, None], torch.finfo(self.dtype).min)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this pass's keys/values at each row's own columns; return what attention reads."""
        rows, cols = self._rows, self._write_cols
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[rows[:, None], :, cols] = key.transpose(1, 2).to(self.dtype)  # [B, T, H, D] into [slot, H, col, D]
        values[rows[:, None], :, cols] = value.transpose(1, 2).to(self.dtype)
        if self._all_rows:
            return keys[: len(rows), :, : self._kv_len], values[: len(rows), :, : self._kv_len]
        return keys[rows, :, : self._kv_len], values[rows, :, : self._kv_len]

    # transformers may ask these of a cache; with explicit positions and a 4-D mask they are not used
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.keys)
