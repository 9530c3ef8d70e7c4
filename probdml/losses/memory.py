"""Cross-batch memory (XBM; Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020), with
pytorch-metric-learning's CrossBatchMemory semantics.

A FIFO queue of the last M samples' outputs (embeddings, and any other per-sample output a similarity
reads, such as the introspective metric's uncertainty) and labels, with static shapes: [M, ...] buffers,
a write pointer and a fill count. Each step

1. enqueues the batch (a stop-gradient copy) at slots ptr, ptr + 1, ... (mod M), overwriting the oldest;
2. compares the batch (queries i, with gradient) with the filled slots (references j, constants),
   x_ij = s(f(q_i), m_j) or d(f(q_i), m_j), an [B, M] matrix with ref_labels r_j;
3. computes a pair loss of MEMORY_LOSSES on it, over the pairs (i, j) with j filled and j != slot(i) (a
   query is not its own positive): pos_ij = [y_i = r_j] [j != slot(i)], neg_ij = [y_i != r_j].

For the contrastive loss, for example, L = mean_{pos, l > 0} [d_ij - m+]_+ + mean_{neg, l > 0} [m- - d_ij]_+,
the means over the batch-to-memory pairs. A miner (`probdml.mining.MEMORY_MINERS`) mines the [B, M] pairs
before the self pairs are removed (as pytorch-metric-learning's miner sees them).
Until M samples have been enqueued only the filled slots count (pytorch-metric-learning's
`embedding_memory[:queue_idx]`); the batch is always in the memory, so the first step is the batch
against itself.

With an `enqueue_mask` ([B] bool, pytorch-metric-learning's argument), the samples with True are only
enqueued and those with False are only queries (e.g. a momentum encoder's keys and the online queries);
no self pairs exist then. Difference: pytorch-metric-learning marks the memory as full after an enqueue
of zero samples (its wrap-around test `queue_idx <= previous queue_idx` holds); here the count only
grows by what was enqueued.

pytorch-metric-learning's CrossBatchMemory also accepts four losses that MEMORY_LOSSES leaves out:
AngularLoss (the angular loss here reads s(p, n) between two references, an [M, M] matrix), LiftedStructureLoss
(with a memory its negatives are selected by comparing memory indices with batch indices), NCALoss (it
ignores the pairs and keeps each query's own memory copy as a positive at distance 0) and
SignalToNoiseRatioContrastiveLoss (the objective computes the SNR distance of the batch with itself).

Usage in JAX code (the trainer does the same with `loss.memory_size`, see `probdml.objective`):

    memory = CrossBatchMemory.create(1024, {"embedding": jnp.zeros((1, 128))})
    memory, slots = memory.enqueue({"embedding": e}, labels)
    pair = similarity.get_similarity("cosine")({"embedding": e}, memory.outputs)
    loss = losses.contrastive(pair.distance, labels, **memory.references(slots))
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from probdml.losses.pair import MEMORY_LOSSES

Array = jax.Array

__all__ = ["MEMORY_LOSSES", "CrossBatchMemory", "self_pairs"]


def self_pairs(slots: Array, size: int) -> Array:
    """[B, M] bool: True at (i, slots[i]), the memory copy of query i (slot `size` = not enqueued: none)."""
    return slots[:, None] == jnp.arange(size, dtype=slots.dtype)[None, :]


@flax.struct.dataclass
class CrossBatchMemory:
    """FIFO memory of the last M samples (a pytree of arrays: part of the train state, checkpointed).

    outputs: {name: [M, ...]} the stored per-sample outputs ('embedding', optionally 'uncertainty');
    labels: [M] int32; ptr: int32 scalar, the next slot to write (samples enqueued so far, mod M);
    count: int32 scalar, the filled slots (min(samples enqueued, M)); slots >= count are empty.
    """

    outputs: dict
    labels: Array
    ptr: Array
    count: Array

    @classmethod
    def create(cls, size: int, like: dict[str, Any], label_dtype: Any = jnp.int32) -> CrossBatchMemory:
        """An empty memory of `size` slots for per-sample outputs shaped like `like` ({name: array or
        jax.ShapeDtypeStruct with a leading batch axis}); all slots zero."""
        if size < 1:
            raise ValueError(f"cross-batch memory: size must be a positive number of slots, got {size}")
        outputs = {k: jnp.zeros((size, *v.shape[1:]), v.dtype) for k, v in like.items()}
        return cls(outputs=outputs, labels=jnp.zeros((size,), label_dtype), ptr=jnp.zeros((), jnp.int32),
                   count=jnp.zeros((), jnp.int32))

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    @property
    def valid(self) -> Array:
        """[M] bool: the filled slots."""
        return jnp.arange(self.size) < self.count

    def enqueue(self, outputs: dict[str, Array], labels: Array,
                enqueue_mask: Array | None = None) -> tuple[CrossBatchMemory, Array]:
        """Write the batch (all samples, or those with `enqueue_mask` True, in batch order) at slots ptr,
        ptr + 1, ... (mod M) as stop-gradient copies. Returns (the new memory, slots [B] int32: the slot
        of each sample, M for samples not enqueued). The batch must not exceed the memory (B <= M)."""
        b = labels.shape[0]
        if b > self.size:
            raise ValueError(f"cross-batch memory: the batch ({b}) must fit in the memory ({self.size} slots)")
        if set(outputs) != set(self.outputs):
            raise ValueError(f"cross-batch memory: outputs {sorted(outputs)} differ from the memory's "
                             f"{sorted(self.outputs)}")
        if enqueue_mask is None:
            enqueue_mask = jnp.ones((b,), bool)
        enqueue_mask = enqueue_mask.astype(bool)
        rank = jnp.cumsum(enqueue_mask.astype(jnp.int32)) - 1
        slots = jnp.where(enqueue_mask, (self.ptr + rank) % self.size, self.size).astype(jnp.int32)
        n = jnp.sum(enqueue_mask.astype(jnp.int32))
        stored = {k: self.outputs[k].at[slots].set(jax.lax.stop_gradient(v).astype(self.outputs[k].dtype),
                                                   mode="drop")
                  for k, v in outputs.items()}
        new = self.replace(
            outputs=stored,
            labels=self.labels.at[slots].set(labels.astype(self.labels.dtype), mode="drop"),
            ptr=((self.ptr + n) % self.size).astype(jnp.int32),
            count=jnp.minimum(self.count + n, self.size).astype(jnp.int32),
        )
        return new, slots

    def last_slots(self, batch_size: int) -> Array:
        """[B] the slots the last enqueue of a whole batch of `batch_size` (no enqueue_mask) wrote."""
        return ((self.ptr - batch_size + jnp.arange(batch_size)) % self.size).astype(jnp.int32)

    def references(self, slots: Array, *, pos_mask: Array | None = None, neg_mask: Array | None = None,
                   triplets: Array | bool | None = None, enqueue_mask: Array | None = None) -> dict[str, Array]:
        """Keyword arguments for a loss of MEMORY_LOSSES on the [B, M] batch-to-memory matrix:
        ref_labels, ref_mask (the filled slots), and the pairs without the self pairs: pos_mask (mined
        `pos_mask` or all) minus (i, slots[i]), neg_mask as mined; or, for triplet losses, `triplets`
        (mined [B, M, M], or True for all) minus the triplets whose positive is the anchor's own slot.
        With `enqueue_mask`, the enqueued samples are no queries (sample_mask = ~enqueue_mask)."""
        own = self_pairs(slots, self.size)
        kwargs = {"ref_labels": self.labels, "ref_mask": self.valid}
        if triplets is None:
            kwargs["pos_mask"] = ~own if pos_mask is None else pos_mask & ~own
            if neg_mask is not None:
                kwargs["neg_mask"] = neg_mask
        else:
            keep = ~own[:, :, None]
            kwargs["triplets"] = (jnp.broadcast_to(keep, (*own.shape, self.size)) if triplets is True
                                  else triplets * keep)
        if enqueue_mask is not None:
            kwargs["sample_mask"] = ~enqueue_mask.astype(bool)
        return kwargs
