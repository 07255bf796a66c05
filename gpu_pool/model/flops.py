"""The encoder's arithmetic per token, for sizing and for comparing throughput with a device's
peak. Torch-free: the benchmarks import it without loading a model."""

from __future__ import annotations


def flops_per_token(layers: int, hidden: int, intermediate: int) -> int:
    """Matrix-product FLOPs per token of the encoder: per layer, the query, key, value and
    output projections (8·d²) and the feed-forward (4·d·ffn). Attention's scores, which grow
    with a text's length (about 2% at 512 tokens), are left out."""
    return layers * (8 * hidden * hidden + 4 * hidden * intermediate)
