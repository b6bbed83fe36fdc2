# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training / validation / test split: seeded 8:1:1 by patient (by vertebra when there are too few), or
given per patient (``--split`` or the ``split`` column of a source list)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from scripts.data.errors import DataError

__all__ = ["SPLITS", "SPLIT_ALIASES", "parse_split", "split_counts", "split_items", "split_given"]

SPLITS = ("training", "validation", "test")
#: Other names accepted for the splits.
SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "testing": "test"}
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


def _split_name(text: str, spec: Any) -> str:
    name = SPLIT_ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in SPLITS:
        raise DataError(None, f"--split {spec!r}: unknown split {text.strip()!r}", f"use {', '.join(SPLITS)}")
    return name


def parse_split(spec: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Parse ``--split``: ``"verse081=validation,colonog0532=test"`` -> ``{patient: split}``.

    A mapping, or a list of ``patient=split`` strings, is accepted as well; ``None`` or ``""`` gives ``{}``.

    Raises:
        DataError: an entry without ``=``, an unknown split name, or a patient given twice.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        parts = spec.split(",") if isinstance(spec, str) else [str(p) for p in spec]
        pairs = []
        for part in (p.strip() for p in parts if p.strip()):
            if "=" not in part:
                fix = "write patient=split pairs, e.g. --split verse081=validation,colonog0532=test"
                raise DataError(None, f"--split entry {part!r} lacks '='", fix)
            patient, name = part.split("=", 1)
            pairs.append((patient.strip(), name))
    out: dict[str, str] = {}
    for patient, name in pairs:
        split = _split_name(name, spec)
        if out.get(patient, split) != split:
            raise DataError(None, f"--split gives patient {patient!r} twice", "name each patient once")
        out[patient] = split
    return out


def split_given(
    items: Sequence[T], patient: Callable[[T], str], group: Callable[[T], Any], given: Mapping[str, str]
) -> dict[str, list[T]]:
    """Split ``items`` as given per patient; patients not named go to training.

    All patients of one group (the person scanned) must land in one split: an unnamed patient follows
    the named patients of its group.

    Args:
        items: the things to split.
        patient: the patient of an item (the key of ``given``).
        group: the group (subject) of an item.
        given: patient -> ``training`` / ``validation`` / ``test``.

    Raises:
        DataError: two patients of one group are given different splits.
    """
    by_group: dict[Any, str] = {}
    for item in items:
        p, g = patient(item), group(item)
        if p in given:
            if by_group.setdefault(g, given[p]) != given[p]:
                fix = "give every scan of one person the same split"
                raise DataError(None, f"--split puts scans of subject {g!r} in {by_group[g]} and {given[p]}", fix)
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for item in items:
        out[by_group.get(group(item), SPLITS[0])].append(item)
    return out
