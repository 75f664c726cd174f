"""Turn tokenized examples into fixed-shape training batches: packed, bucketed or padded.

Padding every example to `sequence_length` (the reference notebooks' recipe)
spends most of each step on padding for HC3-like lengths (docs/facts.md#packing:
12.4k useful of 49.6k computed tokens/s on an H100). "pack" (the default)
puts several examples in one row; "bucket" pads each example only to the next
of a few lengths (powers of two), so JAX compiles few shapes; "pad" is the
reference recipe, kept for benchmarks.

Each example of n ids contributes n - 1 positions: `token_ids = ids[:-1]`,
`target_ids = ids[1:]`, `loss_weights = loss_mask[1:]`. The shift is done per
example, so a target never belongs to the next example in the row.

A batch is a dict of NumPy arrays, all `(batch_size, length)`:
`token_ids`, `target_ids` (int32), `loss_weights` (float32: 1.0 where the
target carries loss, 0.0 at padding and prompt tokens) and `segment_ids`
(int32: 0 = padding, 1, 2, ... = which example of the row). The model must
let position i attend to j only if j <= i and `segment_ids[i] ==
segment_ids[j] != 0` (`kerasgemma.forward`). Positions restart at 0 for each
example (`kerasgemma.attention.segment_positions`): RoPE is relative in exact arithmetic, but in
bfloat16 an example packed after others came out ~0.05 off the same example
alone (docs/facts.md#packing), so each example gets the positions it has at
generation time.
"""

import bisect

import numpy as np

MODES = ("pack", "bucket", "pad")
MIN_BUCKET = 64


class Batches:
    """The batches of one dataset, the same every epoch up to a seeded shuffle.

    Packing is done once (best-fit decreasing, ties broken by `seed`); each
    epoch shuffles the rows (and, for buckets, the examples within a bucket)
    with `(seed, epoch)`, so `epoch(e, start_batch=b)` resumes exactly where
    a checkpoint taken before batch b of epoch e left off. The last batch of
    each shape is filled up with empty rows (all padding) to keep the shape.

    Args:
        examples: list of `TokenizedExample`, each at most
            `sequence_length + 1` ids long.
        batch_size: int. Rows per batch.
        sequence_length: int. Row length for "pack" and "pad"; the longest
            bucket for "bucket".
        mode: str. "pack", "bucket" or "pad".
        seed: int. Seed for tie-breaking and per-epoch shuffling.

    Example:
    >>> import numpy as np
    >>> from kerasgemma.data.tokenize import TokenizedExample
    >>> examples = [TokenizedExample(np.arange(2, 2 + n, dtype=np.int32), np.ones(n, np.int8))
    ...             for n in (5, 4, 3, 6)]
    >>> batches = Batches(examples, batch_size=2, sequence_length=8)
    >>> len(batches), batches.non_padding_fraction
    (1, 0.875)
    >>> batch = next(batches.epoch(0))
    >>> batch["segment_ids"].tolist()
    [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2, 0, 0]]
    """

    def __init__(self, examples, batch_size, sequence_length, mode="pack", seed=0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if batch_size < 1 or sequence_length < 1:
            raise ValueError("batch_size and sequence_length must be positive.")
        lengths = np.array([len(example.token_ids) - 1 for example in examples], np.int64)
        too_long = np.flatnonzero(lengths > sequence_length)
        if too_long.size:
            first = examples[too_long[0]]
            raise ValueError(
                f"{too_long.size} examples are longer than sequence_length + 1 = "
                f"{sequence_length + 1} ids (first: {first.source}, {lengths[too_long[0]] + 1} ids); "
                "tokenize with max_tokens=sequence_length + 1."
            )
        if (lengths < 1).any():
            raise ValueError("Every example needs at least 2 token ids.")
        self.examples = examples
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.mode = mode
        self.seed = seed
        self._groups = _row_groups(lengths, sequence_length, mode, seed)
        slots = sum(
            length * _ceil_div(len(rows), batch_size) * batch_size
            for length, rows in self._groups.items()
        )
        self.non_padding_fraction = float(lengths.sum() / slots) if slots else 0.0

    def __len__(self):
        """Batches per epoch."""
        return sum(_ceil_div(len(rows), self.batch_size) for rows in self._groups.values())

    @property
    def shapes(self):
        """The distinct `(batch_size, length)` shapes, one compilation each."""
        return [(self.batch_size, length) for length in sorted(self._groups)]

    def epoch_plan(self, epoch):
        """The batches of one epoch as `(length, rows)`, rows being lists of example indices."""
        rng = np.random.default_rng([self.seed, epoch])
        plan = []
        for length in sorted(self._groups):
            rows = self._groups[length]
            order = rng.permutation(len(rows))
            for start in range(0, len(rows), self.batch_size):
                plan.append((length, [rows[i] for i in order[start : start + self.batch_size]]))
        return [plan[i] for i in rng.permutation(len(plan))]

    def epoch(self, epoch, start_batch=0):
        """Yield the batches of `epoch` from index `start_batch` on."""
        for length, rows in self.epoch_plan(epoch)[start_batch:]:
            yield self._assemble(length, rows)

    def _assemble(self, length, rows):
        shape = (self.batch_size, length)
        batch = {
            "token_ids": np.zeros(shape, np.int32),
            "target_ids": np.zeros(shape, np.int32),
            "loss_weights": np.zeros(shape, np.float32),
            "segment_ids": np.zeros(shape, np.int32),
        }
        for row, indices in enumerate(rows):
            offset = 0
            for segment, index in enumerate(indices, start=1):
                example = self.examples[index]
                end = offset + len(example.token_ids) - 1
                batch["token_ids"][row, offset:end] = example.token_ids[:-1]
                batch["target_ids"][row, offset:end] = example.token_ids[1:]
                batch["loss_weights"][row, offset:end] = example.loss_mask[1:]
                batch["segment_ids"][row, offset:end] = segment
                offset = end
        return batch


def pack_rows(lengths, capacity, seed=0):
    """Best-fit-decreasing packing of lengths into rows of `capacity`.

    Longest first, each into the fullest row that still has room; equal
    lengths are ordered by `seed`. O(n log n) with a sorted free list.

    Args:
        lengths: sequence of int, each <= capacity.
        capacity: int. Row length.
        seed: int. Tie-breaking seed.

    Returns:
        A list of rows, each a list of indices into `lengths`.

    Example:
    >>> pack_rows([5, 4, 3, 6], capacity=8)
    [[3], [0, 2], [1]]
    """
    lengths = np.asarray(lengths, np.int64)
    shuffled = np.random.default_rng(seed).permutation(len(lengths))
    order = shuffled[np.argsort(-lengths[shuffled], kind="stable")]
    rows, free = [], []  # free: sorted (room left, row index) of rows with room.
    for index in order:
        length = int(lengths[index])
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            rows.append([int(index)])
            room, row = capacity - length, len(rows) - 1
        else:
            room, row = free.pop(slot)
            rows[row].append(int(index))
            room -= length
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


def bucket_length(length, sequence_length):
    """The smallest power of two >= `length` (at least `MIN_BUCKET`), capped at `sequence_length`.

    Example:
    >>> [bucket_length(n, 512) for n in (10, 65, 300, 512)]
    [64, 128, 512, 512]
    """
    bucket = max(MIN_BUCKET, 1 << (int(length) - 1).bit_length())
    return min(bucket, sequence_length)


def _row_groups(lengths, sequence_length, mode, seed):
    """Rows (lists of example indices) keyed by row length."""
    if mode == "pack":
        return {sequence_length: pack_rows(lengths, sequence_length, seed)}
    groups = {}
    for index, length in enumerate(lengths):
        key = sequence_length if mode == "pad" else bucket_length(length, sequence_length)
        groups.setdefault(key, []).append([index])
    return groups


def _ceil_div(a, b):
    return -(-a // b)
