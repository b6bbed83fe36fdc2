# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Seeded 8:1:1 training / validation / test split by patient (by vertebra when there are too few)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["SPLITS", "split_counts", "split_items"]

SPLITS = ("training", "validation", "test")
T = TypeVar("T")


def split_counts(n: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """How many of ``n`` units go to training, validation and test.

    Validation and test get ``round(n * ratio)`` units but at least one each when ``n >= 3``; with two
    units one goes to validation, with one it goes to training.
    """
    if n <= 0:
        return 0, 0, 0
    if n == 1:
        return 1, 0, 0
    if n == 2:
        return 1, 1, 0
    total = float(sum(ratios))
    n_val = max(1, round(n * ratios[1] / total))
    n_test = max(1, round(n * ratios[2] / total))
    while n - n_val - n_test < 1:  # keep at least one training unit
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def _which(k: int, n_train: int, n_val: int) -> str:
    return SPLITS[0] if k < n_train else SPLITS[1] if k < n_train + n_val else SPLITS[2]


def split_items(
    items: Sequence[T],
    group: Callable[[T], Any],
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    min_groups: int = 3,
) -> tuple[dict[str, list[T]], str]:
    """Split ``items`` 8:1:1 so that all items of one group (patient) fall in the same split.

    Groups are sorted, then shuffled with ``random.Random(seed)``, so the split depends only on the set of
    groups and the seed. With fewer than ``min_groups`` groups the items themselves are split (their
    positions shuffled the same way), so pass them in a fixed order.

    Args:
        items: the things to split (e.g. datalist entries).
        group: the group (patient) of an item.
        seed: random seed.
        ratios: training, validation, test proportions.
        min_groups: fewest groups for a split by group.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` (each in input order), and ``"patient"``
        or ``"vertebra"``: what was split.
    """
    groups = sorted({group(i) for i in items}, key=str)
    rng = random.Random(seed)
    if len(groups) >= min_groups:
        rng.shuffle(groups)
        n_train, n_val, _ = split_counts(len(groups), ratios)
        where = {g: _which(k, n_train, n_val) for k, g in enumerate(groups)}
        assign = [where[group(i)] for i in items]
        by = "patient"
    else:
        order = list(range(len(items)))
        rng.shuffle(order)
        n_train, n_val, _ = split_counts(len(items), ratios)
        assign = [""] * len(items)
        for k, idx in enumerate(order):
            assign[idx] = _which(k, n_train, n_val)
        by = "vertebra"
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for item, s in zip(items, assign):
        out[s].append(item)
    return out, by
