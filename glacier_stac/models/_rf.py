"""Receptive-field arithmetic shared by the models.

A model states its receptive field so inference can size halos and patch margins. We walk the
deepest path of the network (the path through the bottleneck dominates every skip path) with the
classic recurrence rf += (k - 1) * jump; jump *= stride, and then widen it by the pooling phase:
an output pixel at any phase inside its deepest cell may reach `divisor - 1` pixels further on one
side. The result is conservative: no input farther than `receptive_field // 2` can change an output.
"""

from __future__ import annotations

from collections.abc import Iterable

Op = tuple[str, int]  # ("conv", kernel) | ("pool", factor) | ("up", factor) | ("window", tokens)


def receptive_field(ops: Iterable[Op], divisor: int = 1) -> int:
    """Conservative full receptive-field width (odd, in input pixels) of a chain of ops."""
    rf, jump = 1.0, 1.0
    for kind, n in ops:
        if kind == "conv":
            rf += (n - 1) * jump
        elif kind == "pool":
            rf += (n - 1) * jump
            jump *= n
        elif kind == "up":  # transposed conv, kernel == stride: each output sees one input cell
            jump /= n
        elif kind == "window":  # attention inside fixed windows of n tokens: reach n - 1 tokens each way
            rf += 2 * (n - 1) * jump
        else:
            raise ValueError(f"unknown receptive-field op {kind!r}")
    width = int(rf) + divisor - 1  # pooling phase: the deepest cell may sit off-centre
    return width if width % 2 else width + 1
