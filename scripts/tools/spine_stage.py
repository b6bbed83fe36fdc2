# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The view stage of :class:`scripts.networks.TwoStageEAR`: train it, then join it to an EAR model file.

Usage::

    python -m scripts.tools.spine_stage train --dataset_dir data/body64 --out runs/spine_stage
    python -m scripts.tools.spine_stage combine --view_weights runs/spine_stage/stage2d.pt \\
        --volume_weights models/cpu/model.pt --out runs/two_stage/model.pt
    python -m scripts.tools.spine_stage views --model runs/two_stage/model.pt --split validation \\
        --figure runs/two_stage/views.png

``train``:

1. A pool of training windows: for each training vertebra and each of ``--draws`` seeded draws of the training's
   window shift and pose (``configs/body.json``), three X-rays of the window, each as
   :class:`~scripts.networks.TwoStageEAR` sees it (expanded and read back): the whole body (``DRRd`` of the
   patient's scan, 10^6 photons), the spine alone (:class:`scripts.transforms.SpineDRRd`) and the isolated
   vertebra (``DRRd`` of ``gt``, noise-free). The pool is kept in ``<out>/pool_raw_<draws>_<seed>.pt`` and reused.
2. A 2-D MONAI ``BasicUNet`` maps each z-scored body view (or both at once, as two channels, with
   ``--joint_views True``) to the ``--target`` view (``spine``: the spine alone; ``isolated``: the vertebra alone)
   by an L1 loss (Adam, ``--lr`` 1e-3, batches of 8 windows, random half turns about the long axis,
   :func:`half_turn`) for ``--minutes`` of wall time; ``--volume_weight`` adds a loss on ``--model_3d``'s
   reconstruction from the stage's output (``train``'s arguments). With probability ``--mix`` a window's body
   X-ray is replaced by its spine-only X-ray plus the rest of the body (body minus spine) of another window of the
   pool: line integrals add, so this is a body X-ray of the same spine in other surroundings, and 4 training
   patients give the stage many more. The
   realism draws of ``configs/body.json`` follow, drawn anew at every step. ``--bone_density "(0.3, 1.5)"``
   draws a bone density factor ``f`` per window, uniform in that range, and adds ``(f - 1) * 0.2`` times the
   spine-only X-ray to the body X-ray (:data:`BONE_EXCESS_SHARE`): the vertebrae's attenuation above water's
   scaled by ``f``, as between an osteoporotic spine and a dense one (the target views are left as they are).
   ``--pose_deg "(35, 15, 15)"`` bounds the pose draw about the left-right, front-back and long axes in place of
   the configs' ``rotation_deg`` (15 degrees about each): a wider forward and backward tilt, as of lordotic lumbar
   vertebrae. ``--window_shift_mm 15`` moves the windows farther off their vertebra (the configs': 7 mm).
   ``--scale_range 0.2`` scales each window's vertebra and body along x, y and z in its views (``train``'s
   arguments).
   Every ``--score_every`` steps (200) it is scored on the validation patient's body windows (normalised
   cross-correlation with their true target views; with ``--volume_weight``, the Dice through ``--model_3d``), the
   best is kept (``<out>/stage2d.pt``), the curve drawn (``<out>/curve.png``) and the whole state saved
   (``<out>/last.pt``): a second call resumes and trains ``--minutes`` more.
3. ``--model_3d``, an EAR trained on the target's X-rays (``configs/lab/recipes/spine_only.json`` for ``spine``,
   the shipped ``models/cpu/model.pt`` for ``isolated``), reconstructs each validation vertebra from its true
   target views, from the 2-D stage's views, and from the 2-D stage's views of the vertebra seven places further
   (one place with a multiple of 7 validation vertebrae; the swap test); Dice at -500 HU by MONAI's
   ``compute_dice``. Written to ``<out>/report.json``.

``combine`` writes the two stages' weights as one :class:`~scripts.networks.TwoStageEAR` state dict, the
``--pretrained`` of a joint fine-tune with ``configs/lab/recipes/two_stage.json``. ``views`` shows what a two-stage
model's view stage gives and what its EAR stage makes of it (:func:`views`). ``train --holdout P`` leaves one
training patient out, and ``stack`` fine-tunes the EAR stage on such folds' views of their held-out patients
(:func:`stack`; docs/body-xrays.md measures both).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scripts.errors import BundleInputError

__all__ = ["BONE_EXCESS_SHARE", "scale_bone_density", "half_turn", "stage_parser", "train", "stack", "views", "combine"]

ROOT = Path(__file__).resolve().parents[2]
_VIEWS = [[0.0, 0.0], [90.0, 0.0]]
#: the share of a vertebra's attenuation above water's at about 250 HU, near the training patients' mean vertebra
#: HU (200-310): mu / mu_water = 1 + HU / 1000 = 1.25, so 0.25 / 1.25. What the bone density draw scales.
BONE_EXCESS_SHARE = 0.2
#: the configs of the body windows, in order
_BODY_CONFIGS = ("train.json", "cpu.json", "body.json")
#: a BasicUNet state dict's convolutions whose output widths are its six ``features``
_VIEW_FEATURE_KEYS = ("conv_0.conv_0", "down_1.convs.conv_0", "down_2.convs.conv_0", "down_3.convs.conv_0",
                      "down_4.convs.conv_0", "upcat_1.convs.conv_0")  # fmt: skip


def scale_bone_density(body: torch.Tensor, spine: torch.Tensor, factor: float) -> torch.Tensor:
    """A body X-ray (line integrals) with its vertebrae's attenuation above water's scaled by ``factor``.

    ``spine`` is the X-ray of the vertebrae alone. A vertebra of ``h`` HU attenuates ``1 + h / 1000`` times as much
    as water, so at 250 HU a share of :data:`BONE_EXCESS_SHARE` (0.2) of its line integral is above water's; that
    share is scaled. Exact for vertebrae of 250 HU, approximate for others (and for a polychromatic beam).
    """
    return body + (float(factor) - 1.0) * BONE_EXCESS_SHARE * spine


def half_turn(views: torch.Tensor, volume: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A window's views ``(B, 2, H, W)`` and its volume ``(B, C, X, Y, Z)`` with the patient turned by 180 degrees
    about its long axis (seen from behind): both views' columns flipped (the AP's run along X, the lateral's along
    Y), the volume flipped along X and Y. Exact for parallel rays; in a cone beam a point's magnification also
    changes with its depth, which the turn reverses: by up to 4 % within 25 mm of the window's centre (a vertebra)
    at the configs' source-isocentre distance of 700 mm.
    """
    return views.flip(-1), None if volume is None else volume.flip([2, 3])


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean normalised cross-correlation of the views of ``a`` and ``b``."""
    from scripts.functional import normalised_cross_correlation

    return float(normalised_cross_correlation(a, b).mean())


def stage_parser(
    dataset_dir: str, pose_deg: float | tuple[float, float, float] | None = None, window_shift_mm: float | None = None
) -> Any:
    """The body-window configs (``train.json``, ``cpu.json``, ``body.json``) the view stage draws its windows with.

    Args:
        dataset_dir: the prepared dataset.
        pose_deg: the pose draw's bound about x (left-right), y and z (degrees, one value or three), in place of the
            configs' ``rotation_deg``.
        window_shift_mm: the largest move of the window off the vertebra's centre (mm), in place of the configs'
            ``window_shift_mm`` (7 mm in ``body.json``).

    Returns:
        a ``monai.bundle.ConfigParser`` with ``probe_training`` and ``probe_validation``, the splits' body items.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in _BODY_CONFIGS])
    parser["dataset_dir"] = dataset_dir
    parser["probe_training"] = "$@scripts.workflow.load_split(@dataset_dir, 'training', 'body')"
    parser["probe_validation"] = "$@scripts.workflow.load_split(@dataset_dir, 'validation', 'body')"
    if pose_deg is not None:
        bound = np.broadcast_to(np.asarray(pose_deg, dtype=np.float64), (3,))
        if np.any(bound < 0) or np.any(bound > 180):
            raise BundleInputError(f"pose_deg must be one or three angles in [0, 180] degrees, got {pose_deg!r}.")
        parser["rotation_deg"] = bound.tolist()
    if window_shift_mm is not None:
        if not 0 <= float(window_shift_mm) <= 40:
            raise BundleInputError(f"window_shift_mm must be in [0, 40] mm, got {window_shift_mm!r}.")
        parser["window_shift_mm"] = float(window_shift_mm)
    return parser


def train(
    dataset_dir: str = "data/body64",
    model_3d: str = "models/cpu/model.pt",
    minutes: float = 19.0,
    draws: int = 24,
    mix: float = 0.0,
    target: str = "isolated",
    joint_views: bool = True,
    bone_density: tuple[float, float] | None = None,
    pose_deg: float | tuple[float, float, float] | None = None,
    window_shift_mm: float | None = None,
    scale_range: float | tuple[float, float, float] | None = None,
    lateral_weight: float = 1.0,
    highpass_px: float | None = None,
    seed: int = 0,
    holdout: str | None = None,
    volume_weight: float = 0.0,
    init: str | None = None,
    init_member: int = 0,
    lr: float = 1e-3,
    score_every: int = 200,
    out: str = "runs/spine_stage",
) -> dict[str, Any]:
    """Train the view stage and score it with ``model_3d`` (module docstring); returns the report.

    The defaults are the settings of the view stage chosen on the validation patient (docs/body-xrays.md).

    Args (beyond the module docstring's):
        scale_range: scale each training window's vertebra and body by factors drawn from ``[1 - r, 1 + r]``
            along x, y and z (one ``r`` or three; in 80 % of the windows, drawn anew at every step), in its
            body and target views alike (:class:`scripts.transforms.RandViewPairScaled`): vertebrae of other
            sizes and proportions than the training patients'. Not with ``volume_weight`` (the ground truth
            volumes are not scaled).
        lateral_weight: the weight of the lateral view's L1 loss against the AP view's 1 (the loss stays the
            mean of the two for the default 1): the lateral view's error costs the EAR stage more
            (:func:`views`' ``dice_isolated_ap`` and ``dice_isolated_lateral``).
        highpass_px: the view stage reads each z-scored view minus its Gaussian blur of this sigma (pixels,
            :func:`scripts.functional.highpass_images`), z-scored again: what varies slowly over the window (the
            body's thickness, a wide gas-filled bowel) is gone from its input. The target stays the isolated view.
        holdout: a training patient whose windows the view stage does not train on. They stay in the pool, so the
            runs of one pool that each leave out another patient (the folds of :func:`stack`) share the pool file
            (copy it into each run's folder).
        volume_weight: with a value above 0, each step also passes the view stage's output through ``model_3d``
            (frozen, eval mode: only the view stage learns) and adds ``volume_weight`` times
            :class:`scripts.losses.EARLoss` between the reconstruction and the window's ground truth (z-scored
            with ``model_3d``'s contract): the view stage learns what the 3-D stage needs, not only the X-ray.
            The checkpoint kept is then the one of best validation Dice through ``model_3d`` (else best NCC).
        init: a view stage to start from: a ``stage2d.pt`` (e.g. to fine-tune a trained one with the volume loss),
            or a :class:`~scripts.networks.TwoStageEAR` model file such as the shipped ``models/body/model.pt``
            (to fine-tune its view stage on your own patients).
        init_member: which view stage of a model file holding several (``view_members``) to start from (0: the
            first); 0 for a ``stage2d.pt``, which holds one. A run folder resumes only the start it was begun from.
        lr: Adam's learning rate.
        score_every: steps between two validation scores and checkpoints.
    """
    import torch.nn.functional as F
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Compose
    from scripts.functional import highpass_images, item_seed, zscore_images
    from scripts.io.plot_training import plot_scalars
    from scripts.losses import EARLoss
    from scripts.networks import TwoStageEAR, stack_views, volume_from_views
    from scripts.networks.model_info import load_state_dict_file, read_model_info
    from scripts.tools.input_sensitivity import bone_dice
    from scripts.transforms import DimensionExpansiond, DRRd, RandViewPairScaled, SeededDRRd, SpineDRRd
    from scripts.utils import atomic_path
    from tqdm import tqdm

    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    parser = stage_parser(dataset_dir, pose_deg, window_shift_mm)
    if target not in ("spine", "isolated"):
        raise BundleInputError(f"target must be 'spine' or 'isolated', got {target!r}.")
    if volume_weight < 0 or score_every < 1:
        raise BundleInputError(
            f"volume_weight must be >= 0 and score_every >= 1, got {volume_weight!r}, {score_every!r}."
        )
    if not float(lateral_weight) > 0:
        raise BundleInputError(f"lateral_weight must be > 0, got {lateral_weight!r}.")
    if highpass_px is not None and not float(highpass_px) > 0:
        raise BundleInputError(f"highpass_px must be > 0 pixels (or left out), got {highpass_px!r}.")
    if scale_range is not None and volume_weight > 0:
        raise BundleInputError(
            "scale_range scales the views but not the ground truth volumes that volume_weight compares with; "
            "give one of the two."
        )
    try:
        rescale = RandViewPairScaled(["x", "y"], scale_range, prob=0.8) if scale_range is not None else None
    except ValueError as e:
        raise BundleInputError(f"--scale_range: {e}") from None
    if bone_density is not None:
        bone_density = tuple(float(f) for f in bone_density)
        if len(bone_density) != 2 or not 0 <= bone_density[0] <= bone_density[1]:
            raise BundleInputError(f"bone_density must be (low, high) with 0 <= low <= high, got {bone_density!r}.")
    if init_member and not init:
        raise BundleInputError(
            f"init_member ({init_member}) needs --init, the model file whose view stage to start from."
        )
    if holdout is not None:  # before the pool: a wrong name stops now
        items = parser.get_parsed_content("probe_training")
        _pool_indices(items, len(items), holdout)
    init_state, init_member = (
        _init_view_stage(init, init_member, joint_views) if init else (None, None)
    )  # before the pool
    weights, last = Path(out) / "stage2d.pt", Path(out) / "last.pt"
    criterion = "val_dice" if volume_weight > 0 else "val_ncc"  # what picks the best checkpoint
    state = torch.load(last, map_location="cpu", weights_only=False) if last.exists() else None  # resume
    if state is not None and state.get("criterion", "val_ncc") != criterion:
        raise BundleInputError(
            f"{last} is a run that keeps the best {state.get('criterion', 'val_ncc')}, this one the best "
            f"{criterion} (--volume_weight {volume_weight}); give another --out, or the run's own --volume_weight."
        )
    if state is not None and init and state.get("init") != [init, init_member]:  # the resumed weights would win
        raise BundleInputError(
            f"{last} is a run started from {state.get('init') or 'scratch'}, not from {init} (member {init_member}); "
            "it resumes with its own weights: give another --out to start from --init."
        )
    if state is not None and state.get("highpass_px") != highpass_px:
        raise BundleInputError(
            f"{last} is a run with highpass_px {state.get('highpass_px')}, not {highpass_px}; give another --out, or "
            "the run's own --highpass_px."
        )
    if state is not None and state.get("holdout") != holdout:
        raise BundleInputError(
            f"{last} is a run that left out {state.get('holdout') or 'no patient'}, not {holdout or 'none'}; give "
            "another --out, or the run's own --holdout."
        )
    spine = SpineDRRd(dataset_dir, angles=_VIEWS)
    body = DRRd("body", ref_key="gt", output_keys="p_b", angles=_VIEWS, photon_count=1e6)
    isolated = DRRd("gt", ref_key="gt", output_keys="p_v", angles=_VIEWS, photon_count=None)
    k_target = 1 if target == "spine" else 2
    draw = Compose(
        parser.get_parsed_content("load_transforms")
        + parser.get_parsed_content("window_transforms")
        + parser.get_parsed_content("augment_transforms")
    )
    realism = Compose(parser.get_parsed_content("realism_transforms"))
    expand = DimensionExpansiond("drr", mode="replicate", ref_key="gt")

    def grid_views(d: dict, image: torch.Tensor) -> torch.Tensor:
        """``image`` (a view pair of ``d``'s window) as TwoStageEAR's view stage sees it: expanded, read back."""
        geo = {"drr_geometry": d["drr_geometry"], "gt": d["gt"]}
        return stack_views(expand({"drr": image, **geo})["image"][None].as_tensor())[0].float()

    t0 = time.perf_counter()
    Path(out).mkdir(parents=True, exist_ok=True)
    pool_file = Path(out) / f"pool_raw_{draws}_{seed}.pt"
    pool = torch.load(pool_file, weights_only=True) if pool_file.exists() else []
    for k in tqdm(range(0 if pool else int(draws)), desc="pool of windows, draws", disable=bool(pool)):
        for item in parser.get_parsed_content("probe_training"):
            draw.set_random_state(seed=item_seed(item["id"], 1000 * seed + k))
            body.set_random_state(seed=item_seed(item["id"], 1000 * seed + k + 1))
            d = isolated(spine(body(draw(dict(item)))))
            spacing = torch.as_tensor(np.asarray(d["drr"].meta.get("pixel_spacing", [1.0, 1.0]), dtype=np.float64))
            views = [grid_views(d, d[key]) for key in ("p_b", "drr", "p_v")]
            pool.append((*views, spacing.reshape(-1)[:2]))
    if not pool_file.exists():
        with atomic_path(pool_file) as tmp:  # a killed run leaves no half-written pool to resume from
            torch.save(pool, tmp)
    model_state = load_state_dict_file(model_3d)
    contract = read_model_info(model_state)
    gt_mean, gt_std = float(contract["gt_mean"]), float(contract["gt_std"])
    gt_pool: list[torch.Tensor] = []
    if volume_weight > 0:  # each pool window's ground truth: the same seeded window draws, without projecting
        gt_pool = _pool_ground_truths(parser, pool, pool_file, draws, seed, gt_mean, gt_std)
    pool_s = time.perf_counter() - t0
    allowed = _pool_indices(parser.get_parsed_content("probe_training"), len(pool), holdout)
    load = Compose(parser.get_parsed_content("load_transforms"))
    seeded = SeededDRRd("body", ref_key="gt", output_keys="p_b", angles=_VIEWS, photon_count=1e6)
    val = [isolated(spine(seeded(load(dict(it))))) for it in parser.get_parsed_content("probe_validation")]
    p3 = ConfigParser()
    p3.read_config([str(ROOT / "configs" / c) for c in (*_BODY_CONFIGS, "lab/recipes/spine_only.json")])
    p3["dataset_dir"] = dataset_dir
    model = p3.get_parsed_content("network")  # on the configs' device: CUDA where present
    model.load_state_dict(model_state)
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    dev = next(model.parameters()).device  # both networks and every batch there; the pools stay in memory
    vx = torch.stack([grid_views(v, v["p_b"]) for v in val]).to(dev)
    vy = torch.stack([grid_views(v, v["drr" if target == "spine" else "p_v"]) for v in val]).to(dev)
    net = TwoStageEAR(joint_views=joint_views).view_net.to(dev)  # the view stage exactly as TwoStageEAR builds it
    if init_state is not None:
        net.load_state_dict(init_state)
    opt = torch.optim.Adam(net.parameters(), lr=float(lr))
    volume_loss = EARLoss(edge_weight=0.0)
    threshold = (-500.0 - gt_mean) / gt_std
    val_gt = [((v["gt"][0].float() - gt_mean) / gt_std).to(dev) for v in val]

    def stage(x: torch.Tensor) -> torch.Tensor:
        z = zscore_images(x)
        if highpass_px is not None:
            z = zscore_images(highpass_images(z, highpass_px))
        if joint_views:
            return net(z)
        b, v, h, w = z.shape
        return net(z.reshape(b * v, 1, h, w)).reshape(b, v, h, w)

    def dice(a: torch.Tensor, b: torch.Tensor) -> float:
        return bone_dice(a, b, threshold)

    def volume(views: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) -> EAR's expanded input
        z = zscore_images(views)
        return volume_from_views(z[:, 0], z[:, 1], z.shape[-1], z.shape[-1])

    def val_dice() -> float:
        """Mean validation Dice through ``model_3d`` from the view stage's views."""
        with torch.no_grad():
            rec = torch.cat([model(volume(stage(vx[i : i + 4])))[:, 0] for i in range(0, len(vx), 4)])
        return float(np.mean([dice(r, g) for r, g in zip(rec, val_gt)]))

    baseline = _ncc(torch.stack([pool[i][k_target] for i in allowed]).mean(0).to(dev).expand_as(vy), vy)
    curve, best, step, start = [], -1.0, 0, time.perf_counter()
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        curve, best, step = state["curve"], state["best"], state["step"]
        rng.set_state(state["rng"])

    def sample(i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Window ``i``'s target views and a body X-ray of them: its own, or (``mix``) its spine in the rest of
        the body of another window (line integrals add), then the scale and realism draws."""
        body_i, spine_i, spacing = pool[i][0], pool[i][1], pool[i][3]
        x, y = body_i, pool[i][k_target]
        if rng.rand() < mix:
            j = int(allowed[rng.randint(len(allowed))])
            x = spine_i + (pool[j][0] - pool[j][1])
        if bone_density is not None:  # the vertebrae's density above water scaled by f (module docstring)
            x = scale_bone_density(x, spine_i, rng.uniform(*bone_density))
        if rescale is not None:  # one draw for the body X-ray and its target
            pair = rescale.set_random_state(seed=int(rng.randint(2**31)))({"x": x, "y": y})
            x, y = pair["x"], pair["y"]
        x = MetaTensor(x.clone(), meta={"pixel_spacing": spacing.tolist()})
        x = realism.set_random_state(seed=int(rng.randint(2**31)))({"drr": x})["drr"]
        return torch.as_tensor(x).float(), y, i

    def checkpoint(loss: float) -> None:
        """Score on the validation windows, keep the best, save the whole state (atomically)."""
        nonlocal best
        net.eval()
        with torch.no_grad():
            ncc = _ncc(stage(vx), vy)
        curve.append({"step": step, "loss": None if np.isnan(loss) else round(loss, 4), "val_ncc": round(ncc, 4)})
        score = ncc
        if volume_weight > 0:
            score = curve[-1]["val_dice"] = round(val_dice(), 4)
        net.train()
        print(json.dumps(curve[-1]), flush=True)
        if score > best:
            best = score
            with atomic_path(weights) as tmp:
                torch.save(net.state_dict(), tmp)
        state = {"net": net.state_dict(), "opt": opt.state_dict(), "curve": curve, "best": best, "step": step,
                 "rng": rng.get_state(), "criterion": criterion,
                 "init": [init, init_member] if init else None, "holdout": holdout,
                 "highpass_px": highpass_px}  # fmt: skip
        with atomic_path(last) as tmp:
            torch.save(state, tmp)
        draw_curve()

    def draw_curve() -> None:
        """``<out>/curve.png``: the validation scores and the loss of the batch before each, against the step."""
        loss_tag = "loss (the batch before each score)"
        names = {"val_ncc": "val_ncc", "val_dice": "val_dice", "loss": loss_tag}
        series = {names[k]: [(c["step"], c[k]) for c in curve if c.get(k) is not None] for k in names}
        scalars = {k: tuple(zip(*v)) for k, v in series.items() if v}
        plot_scalars(scalars, Path(out) / "curve.png", loss_tag, loss_x="step", metric_x="step")

    loss = torch.zeros(())
    if init and not curve:  # the starting view stage's score: what the run must beat to change it
        checkpoint(float("nan"))
    while time.perf_counter() - start < minutes * 60:
        batch = [sample(int(allowed[i])) for i in rng.randint(len(allowed), size=8)]
        x, y = torch.stack([b[0] for b in batch]).to(dev), torch.stack([b[1] for b in batch]).to(dev)
        g = torch.stack([gt_pool[b[2]].float() for b in batch]).to(dev) if volume_weight > 0 else None  # (B,1,X,Y,Z)
        if rng.rand() < 0.5:
            (x, g), y = half_turn(x, g), half_turn(y)[0]
        out_views = stage(x)
        if lateral_weight == 1:
            loss = F.l1_loss(out_views, y)
        else:  # the two views' L1 losses, the lateral's weighted: the mean of the two at weight 1
            loss = (F.l1_loss(out_views[:, 0], y[:, 0]) + lateral_weight * F.l1_loss(out_views[:, 1], y[:, 1])) / 2
        if g is not None:
            loss = loss + volume_weight * volume_loss(model(volume(out_views)), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % score_every == 0:
            checkpoint(float(loss.detach()))
    if not curve or curve[-1]["step"] != step:
        checkpoint(float(loss.detach()))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    rows = []
    with torch.no_grad():
        predicted = stage(vx)
        offset = 7 if 7 % len(val) else 1  # the swap test's other vertebra, never the vertebra itself (n > 1)
        for i, v in enumerate(val):
            other = (i + offset) % len(val)
            rec = model(volume(torch.stack([vy[i], predicted[i], predicted[other]])))[:, 0]
            row = {"id": v["id"], **{k: dice(r, val_gt[i]) for k, r in zip(("true_target", "stage_own"), rec)}}
            row["stage_swapped"] = dice(rec[2], val_gt[i]) if len(val) > 1 else None  # one vertebra: no swap test
            rows.append(row)
    means = {
        k: None if rows[0][k] is None else round(float(np.mean([r[k] for r in rows])), 4)
        for k in ("true_target", "stage_own", "stage_swapped")
    }
    report = {
        "dataset_dir": dataset_dir, "model_3d": model_3d, "draws": draws, "mix": mix, "target": target,
        "bone_density": bone_density, "pose_deg": parser["rotation_deg"], "window_shift_mm": parser["window_shift_mm"],
        "scale_range": scale_range, "lateral_weight": lateral_weight, "highpass_px": highpass_px,
        "joint_views": joint_views, "volume_weight": volume_weight, "init": init, "holdout": holdout,
        "init_member": init_member, "lr": lr,
        "pool": len(pool), "trained_windows": len(allowed), "pool_seconds": round(pool_s, 1), "seed": seed,
        "steps": step,
        "minutes": minutes,
        f"{criterion}_best": round(best, 4), "val_ncc_mean_target_baseline": round(baseline, 4), "curve": curve,
        "mean_dice": means, "vertebrae": rows,
    }  # fmt: skip
    with atomic_path(Path(out) / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")

    kept = {f"{criterion}_best": round(best, 4), "baseline": report["val_ncc_mean_target_baseline"]}
    print(json.dumps({**kept, "mean_dice": means}))
    return report


def views(
    model: str = "models/body/model.pt",
    dataset_dir: str = "data/body64",
    split: str = "test",
    configs: Sequence[str] = ("configs/train.json", "configs/cpu.json", "configs/body.json", "configs/body_model.json"),
    blur_px: Sequence[float] = (1.0, 2.0, 3.0, 4.0),
    overrides: dict[str, Any] | None = None,
    max_shift: int = 3,
    out: str | None = None,
    figure: str | None = None,
) -> dict[str, Any]:
    """What a two-stage model's view stage gives, and what its EAR stage makes of it.

    Each vertebra of ``split`` is simulated as in evaluation (seeded, clean body windows), and once more from its
    isolated vertebra (``drr_source: "gt"``, the view stage's target) through the same window. Per vertebra:
    the normalised cross-correlation of the view stage's output with the isolated views (AP, lateral), and the
    Dice (at -500 HU, MONAI's ``compute_dice``) of the EAR stage's reconstruction from the view stage's output (the
    model's own reconstruction), from the true isolated views (the ceiling of a perfect view stage) and from those
    views blurred by each Gaussian sigma of ``blur_px`` (pixels): how much a view stage that gets the vertebra only
    roughly right costs the EAR stage. ``dice_isolated_ap`` is the Dice from the isolated AP view with the view
    stage's lateral, ``dice_isolated_lateral`` from the view stage's AP with the isolated lateral: which view's
    error costs more. ``bone_volume_ratio`` is the model's own reconstruction's bone volume
    (> -500 HU) over the ground truth's: below 1, the reconstruction shrinks. ``dice_view_stage_best_shift`` is the
    model's own reconstruction moved by the whole-voxel shift (at most ``max_shift`` voxels along each axis) that
    fits the ground truth best, ``best_shift_vox`` that shift (voxels along the grid's axes) and ``best_shift_mm``
    its length: what a perfect correction of the reconstruction's position could gain; the rest of the error is its
    shape. ``bone_components`` counts the pieces of the model's bone mask (26-connected): at 1, keeping the largest
    connected component changes nothing. ``figure`` draws every vertebra's body views, the view stage's views and
    the isolated views (PNG); ``out`` writes the JSON report.

    Args:
        model: a :class:`~scripts.networks.TwoStageEAR` model file.
        dataset_dir: a prepared dataset with body scans.
        split: ``training``, ``validation`` or ``test``.
        configs: the configs that rebuild the model's network from the file and simulate its windows.
        blur_px: Gaussian sigmas (pixels of the views) for the blurred isolated views.
        overrides: config values set after the configs, e.g. ``{"photon_count": None}`` for noise-free windows.
        max_shift: largest move (voxels, along each axis) of the placement oracle ``dice_view_stage_best_shift``.
        out: JSON report path.
        figure: PNG path.
    """
    from monai.bundle import ConfigParser
    from monai.networks.layers import GaussianFilter
    from scipy import ndimage
    from scripts.functional import normalised_cross_correlation, zscore_images
    from scripts.networks import TwoStageEAR, stack_views, volume_from_views
    from scripts.networks.model_info import load_state_dict_file
    from scripts.tools.input_sensitivity import best_shift_bone_dice, bone_dice
    from scripts.utils import atomic_path
    from tqdm import tqdm

    def pipeline(source: str) -> tuple[Any, list[dict]]:
        parser = ConfigParser()
        parser.read_config([str(ROOT / c) for c in configs])
        parser.update({"dataset_dir": dataset_dir, "validate_perturbed": False, "model_file": model})
        for key, value in (overrides or {}).items():
            parser[key] = value
        parser["stats"] = "$@scripts.workflow.model_statistics(@model_file)"
        parser["drr_source"] = source
        parser["validate#dataset#data"] = f"$@scripts.workflow.load_split(@dataset_dir, {split!r}, 'body')"
        return parser, parser.get_parsed_content("validate#dataset#data")

    if split not in ("training", "validation", "test"):
        raise BundleInputError(f"--split must be training, validation or test, got {split!r}.")
    configs = [configs] if isinstance(configs, (str, os.PathLike)) else list(configs)
    blur_px = [float(b) for b in (blur_px if isinstance(blur_px, (list, tuple)) else [blur_px])]
    parser, items = pipeline("body")
    if not items:
        raise BundleInputError(f"{dataset_dir} holds no {split!r} vertebrae with a body scan.")
    net = parser.get_parsed_content("network")
    if not isinstance(net, TwoStageEAR):
        raise BundleInputError(f"--model {model}: not a two-stage model (TwoStageEAR); it has no view stage to show.")
    net.load_state_dict(load_state_dict_file(model))
    net.eval()
    stats = parser.get_parsed_content("stats")
    threshold = (-500.0 - stats["gt_mean"]) / stats["gt_std"]
    body_t = parser.get_parsed_content("validate#preprocessing")
    isolated_t = pipeline("gt")[0].get_parsed_content("validate#preprocessing")
    dev = next(net.parameters()).device
    spacing = float(parser.get_parsed_content("spacing"))

    def dice(pred: torch.Tensor, gt: torch.Tensor) -> float:
        return bone_dice(pred, gt, threshold)

    def pieces(rec: torch.Tensor) -> int:  # 26-connected pieces of the bone mask
        return int(ndimage.label((rec > threshold).numpy(), np.ones((3, 3, 3)))[1])

    def ear(v: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) views, z-scored here -> reconstructions (B, X, Y, Z)
        z = zscore_images(v).to(dev)
        return net.volume_net(volume_from_views(z[:, 0], z[:, 1], z.shape[-1], z.shape[-1]))[:, 0].cpu()

    rows, shown = [], []
    with torch.no_grad():
        for item in tqdm(items, desc=f"{split} vertebrae"):
            body, iso = body_t(dict(item)), isolated_t(dict(item))
            x = torch.as_tensor(body["image"]).as_subclass(torch.Tensor)[None].to(dev)
            stage = net.spine_views(x).cpu()
            true = zscore_images(stack_views(torch.as_tensor(iso["image"]).as_subclass(torch.Tensor)[None]))
            blurred = [GaussianFilter(2, float(s))(true) for s in blur_px]  # (1, 2, H, W): the views as channels
            recs = ear(torch.cat([stage, true, *_one_isolated_view(stage, true), *blurred]))
            gt = torch.as_tensor(body["label"][0]).as_subclass(torch.Tensor)
            ncc = normalised_cross_correlation(stage, true)[0]
            volume = float((recs[0] > threshold).sum() / (gt > threshold).sum().clamp(min=1))
            moved, shift = best_shift_bone_dice(recs[0], gt, threshold, max_shift)
            row = {"id": item["id"], "ncc_ap": round(float(ncc[0]), 4), "ncc_lateral": round(float(ncc[1]), 4),
                   "dice_view_stage": dice(recs[0], gt), "dice_view_stage_best_shift": round(moved, 4),
                   "best_shift_mm": round(float(np.linalg.norm(shift)) * spacing, 2), "best_shift_vox": list(shift),
                   "dice_isolated": dice(recs[1], gt),
                   "dice_isolated_ap": dice(recs[2], gt), "dice_isolated_lateral": dice(recs[3], gt),
                   "bone_volume_ratio": round(volume, 4),
                   "bone_components": pieces(recs[0])}  # fmt: skip
            row.update({f"dice_isolated_blur_{s:g}px": dice(r, gt) for s, r in zip(blur_px, recs[4:])})
            rows.append(row)
            shown.append((stack_views(x.cpu())[0], stage[0], true[0]))
    keys = [k for k in rows[0] if k not in ("id", "best_shift_vox")]
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    report = {"model": model, "dataset_dir": dataset_dir, "split": split, "configs": [str(c) for c in configs],
              "overrides": overrides or {}, "n": len(rows), "blur_px": list(blur_px), "mean": means,
              "vertebrae": rows}  # fmt: skip
    if out:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    if figure:
        _draw_views(shown, rows, figure)
    print(json.dumps({"model": model, "split": split, "n": len(rows), "mean": means}))
    return report


def _one_isolated_view(stage: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two view pairs ``(B, 2, H, W)`` (AP, lateral) with one isolated view each: the isolated AP with the view
    stage's lateral, and the view stage's AP with the isolated lateral."""
    return torch.stack([true[:, 0], stage[:, 1]], 1), torch.stack([stage[:, 0], true[:, 1]], 1)


def _draw_views(shown: list[tuple[torch.Tensor, ...]], rows: list[dict], path: str) -> None:
    """One column per vertebra: its body views, the view stage's views and the isolated views (AP, then lateral)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scripts.utils import atomic_path

    labels = ["AP: body", "AP: view stage", "AP: vertebra alone", "lateral: body", "lateral: view stage",
              "lateral: vertebra alone"]  # fmt: skip
    fig, axes = plt.subplots(6, len(shown), figsize=(1.3 * len(shown) + 1.2, 8.2), squeeze=False)
    for j, ((body, stage, true), row) in enumerate(zip(shown, rows)):
        for r, image in enumerate([body[0], stage[0], true[0], body[1], stage[1], true[1]]):
            ax = axes[r, j]
            ax.imshow(image.numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[r], fontsize=7)
        axes[0, j].set_title(f"{row['id']}\nDice {row['dice_view_stage']:.2f} ({row['dice_isolated']:.2f})", fontsize=6)
    fig.suptitle("Dice from the view stage's views (from the isolated views)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)


def stack(
    folds: Sequence[str],
    dataset_dir: str = "data/body64",
    view_weights: str = "models/body/model.pt",
    volume_weights: str = "models/cpu/model.pt",
    minutes: float = 20.0,
    lr: float = 1e-4,
    batch_size: int = 2,
    dice_weight: float = 0.0,
    seed: int = 0,
    score_every: int = 100,
    out: str = "runs/stack",
) -> dict[str, Any]:
    """Fine-tune the EAR stage on what view stages give for patients they never saw (stacking).

    A view stage reads its training patients' windows better than an unseen patient's, so an EAR stage fine-tuned
    on its output learns to trust views that no new patient gives. Here each training window's views come from a
    view stage trained without that window's patient: ``folds`` are ``train --holdout P`` runs, one for every
    training patient, on one shared pool (the same ``--draws`` and ``--seed``). Each step draws ``batch_size``
    pool windows, applies the realism draws of ``configs/body.json`` to their body X-rays, passes them through
    their patient's fold (frozen), and trains the EAR stage (``volume_weights``, batch-norm statistics held) on
    the configs' loss against the windows' ground truths (Adam, ``lr``, random half turns about the long axis).
    Every ``score_every`` steps the EAR stage is scored behind ``view_weights``'s view stages (those of the model
    to be built, trained on every training patient) on the validation patient's body windows (mean Dice at
    -500 HU); the best is kept as ``<out>/ear.pt``, an EAR model file with ``volume_weights``'s contract, for
    ``combine --view_weights <view_weights> --volume_weights <out>/ear.pt``. ``<out>/last.pt`` resumes the run;
    ``<out>/report.json`` holds the curve.

    Args:
        folds: the ``train --holdout`` run folders (``stage2d.pt`` and ``report.json`` in each).
        dataset_dir: the prepared dataset the folds were trained on.
        view_weights: the view stages the EAR stage is scored behind: a ``TwoStageEAR`` model file or a
            ``stage2d.pt``.
        volume_weights: the EAR model file to start from.
        minutes: wall time of training.
        lr: Adam's learning rate.
        batch_size: windows per step.
        dice_weight: with a value above 0, adds ``dice_weight`` times MONAI's ``DiceLoss`` between the
            reconstruction's soft bone mask (a sigmoid of its HU about -500 HU, 50 HU wide) and the ground truth's
            bone mask: a loss on the mask that the Dice scores, which a reconstruction that shrinks pays for.
        seed: the run's random draws.
        score_every: steps between two validation scores.
        out: the run's folder.
    """
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.losses import DiceLoss
    from monai.transforms import Compose
    from scripts.functional import zscore_images
    from scripts.networks import TwoStageEAR, volume_from_views
    from scripts.networks.model_info import load_state_dict_file, read_model_info
    from scripts.tools.input_sensitivity import bone_dice
    from scripts.transforms import DimensionExpansiond, SeededDRRd
    from scripts.utils import atomic_path

    if isinstance(folds, (str, os.PathLike)):
        folds = [folds]
    if not folds:
        raise BundleInputError("stack needs the folds: --folds \"['runs/fold_a', 'runs/fold_b', ...]\".")
    if int(batch_size) < 1 or int(score_every) < 1 or not float(dice_weight) >= 0:
        raise BundleInputError(
            f"batch_size and score_every must be >= 1 and dice_weight >= 0, got {batch_size!r}, {score_every!r}, "
            f"{dice_weight!r}."
        )
    fold_of: dict[str, Path] = {}
    draws_of: set[tuple] = set()
    for f in folds:
        report_file = Path(f) / "report.json"
        if not report_file.exists():
            raise BundleInputError(f"--folds: {report_file} is missing; train the fold first (train --holdout P).")
        report = json.loads(report_file.read_text())
        if report.get("holdout") is None:
            raise BundleInputError(f"--folds: {f} left no patient out; train it with --holdout P.")
        if report.get("target") != "isolated" or not report.get("joint_views"):
            raise BundleInputError(f"--folds: {f} is not a body model's view stage (isolated target, joint views).")
        if report.get("highpass_px") is not None:  # stack feeds each fold plain z-scored views, as the model does
            raise BundleInputError(
                f"--folds: {f} was trained on high-passed views (--highpass_px {report['highpass_px']}), which the "
                "two-stage model does not compute; train the folds without --highpass_px."
            )
        if report["holdout"] in fold_of:
            raise BundleInputError(f"--folds: {fold_of[report['holdout']]} and {f} both leave out {report['holdout']}.")
        if Path(report.get("dataset_dir", "")).resolve() != Path(dataset_dir).resolve():
            raise BundleInputError(
                f"--folds: {f} was trained on {report.get('dataset_dir')}, not --dataset_dir {dataset_dir}."
            )
        fold_of[report["holdout"]] = Path(f)
        draws_of.add((report["draws"], report.get("seed", 0), report["pool"], json.dumps(report.get("pose_deg")),
                      report.get("window_shift_mm")))  # fmt: skip
    if len(draws_of) != 1:
        raise BundleInputError(
            "--folds were trained on different pools (draws, seed, windows, pose_deg, window_shift_mm): "
            f"{sorted(draws_of)}; train every fold with the same pool."
        )
    draws, pool_seed, _, pose_deg, window_shift_mm = draws_of.pop()
    parser = stage_parser(dataset_dir, json.loads(pose_deg), window_shift_mm)  # the folds' window draws
    items = parser.get_parsed_content("probe_training")
    patients = sorted({it.get("patient", it["id"]) for it in items})
    missing = [p for p in patients if p not in fold_of]
    if missing:
        raise BundleInputError(f"--folds: no fold leaves out {missing}; train one per training patient.")
    others = sorted(set(fold_of) - set(patients))
    if others:
        raise BundleInputError(f"--folds: {others} are not training patients of {dataset_dir}; leave those folds out.")
    pool_file = fold_of[patients[0]] / f"pool_raw_{draws}_{pool_seed}.pt"
    if not pool_file.exists():
        raise BundleInputError(f"--folds: {pool_file} is missing: copy the folds' shared pool into {pool_file.parent}.")
    pool = torch.load(pool_file, weights_only=True)
    model_state = load_state_dict_file(volume_weights)
    contract = read_model_info(model_state)
    gt_mean, gt_std = float(contract["gt_mean"]), float(contract["gt_std"])
    gt_pool = _pool_ground_truths(
        parser, pool, pool_file, draws, pool_seed, gt_mean, gt_std,
        fix="the folds' pool holds other windows than --dataset_dir's draws: train the folds again on this dataset",
    )  # fmt: skip

    def view_net(path: Path) -> torch.nn.Module:
        net = TwoStageEAR(joint_views=True).view_net
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()

    stages = {p: view_net(fold_of[p] / "stage2d.pt") for p in patients}
    window_stage = [stages[items[i % len(items)].get("patient", items[i % len(items)]["id"])] for i in range(len(pool))]
    p3 = ConfigParser()
    p3.read_config([str(ROOT / "configs" / c) for c in (*_BODY_CONFIGS, "lab/recipes/spine_only.json")])
    p3["dataset_dir"] = dataset_dir
    p3["stats"] = {"gt_mean": gt_mean, "gt_std": gt_std}  # the loss's edge threshold on the ground truths' scale
    model = p3.get_parsed_content("network")
    model.load_state_dict(model_state)
    loss_fn = p3.get_parsed_content("loss")
    view_state = _state_file(view_weights, "--view_weights")
    members = _view_members(view_state)
    full = TwoStageEAR(joint_views=True, view_members=len(members)).eval()
    full.view_net.load_state_dict(members[0])
    for net, member in zip(full.more_view_nets, members[1:]):
        net.load_state_dict(member)
    for q in (*full.parameters(), *(q for n in stages.values() for q in n.parameters())):
        q.requires_grad_(False)
    realism = Compose(parser.get_parsed_content("realism_transforms"))
    load = Compose(parser.get_parsed_content("load_transforms"))
    seeded = SeededDRRd("body", ref_key="gt", output_keys="p_b", angles=_VIEWS, photon_count=1e6)
    expand = DimensionExpansiond("drr", mode="replicate", ref_key="gt")
    val = [seeded(load(dict(it))) for it in parser.get_parsed_content("probe_validation")]
    geo = "p_b_geometry"
    with torch.no_grad():  # the validation windows' views through the model's own view stages, once
        val_views = torch.cat(
            [
                full.spine_views(expand({"drr": v["p_b"], "drr_geometry": v[geo], "gt": v["gt"]})["image"][None])
                for v in val
            ]
        )
    threshold = (-500.0 - gt_mean) / gt_std
    val_gt = [(torch.as_tensor(v["gt"][0]).as_subclass(torch.Tensor).float() - gt_mean) / gt_std for v in val]
    mask_loss, soft_width = DiceLoss(), 50.0 / gt_std  # the soft bone mask's width: 50 HU on the z-scored scale

    def volume(views: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W), z-scored per view -> EAR's expanded input
        return volume_from_views(views[:, 0], views[:, 1], views.shape[-1], views.shape[-1])

    def val_dice() -> float:
        model.eval()
        with torch.no_grad():
            rec = torch.cat([model(volume(val_views[i : i + 4]))[:, 0] for i in range(0, len(val_views), 4)])
        hold_batch_norm()
        return float(np.mean([bone_dice(r, g, threshold) for r, g in zip(rec, val_gt)]))

    def hold_batch_norm() -> None:
        """Train mode, with every batch norm on its running statistics (batches of a few windows)."""
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    Path(out).mkdir(parents=True, exist_ok=True)
    weights, last = Path(out) / "ear.pt", Path(out) / "last.pt"
    curve: list[dict[str, Any]] = []
    best, step = -1.0, 0
    run_args = {"folds": [str(fold_of[p]) for p in patients], "view_weights": str(view_weights),
                "volume_weights": str(volume_weights), "lr": float(lr), "batch_size": int(batch_size),
                "dice_weight": float(dice_weight)}  # fmt: skip
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        ran = {"dice_weight": 0.0, **state.get("args", {})}  # runs from before dice_weight had none
        if ran != run_args:  # the resumed weights would win over the arguments given
            raise BundleInputError(
                f"{last} is a run of {ran}, not of {run_args}; give another --out, or that run's arguments."
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        curve, best, step = state["curve"], state["best"], state["step"]
        rng.set_state(state["rng"])

    def checkpoint(loss: float) -> None:
        nonlocal best
        score = val_dice()
        curve.append({"step": step, "loss": None if np.isnan(loss) else round(loss, 4), "val_dice": round(score, 4)})
        print(json.dumps(curve[-1]), flush=True)
        if score > best:
            best = score
            with atomic_path(weights) as tmp:
                torch.save(model.state_dict(), tmp)
        with atomic_path(last) as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "curve": curve, "best": best,
                        "step": step, "rng": rng.get_state(), "args": run_args}, tmp)  # fmt: skip

    hold_batch_norm()
    if not curve:  # the starting EAR stage's score: what the run must beat to change it
        checkpoint(float("nan"))
    loss = torch.zeros(())
    start = time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        idx = rng.randint(len(pool), size=int(batch_size))
        xs = []
        for i in idx:
            x = MetaTensor(pool[i][0].clone(), meta={"pixel_spacing": pool[i][3].tolist()})
            xs.append(
                torch.as_tensor(realism.set_random_state(seed=int(rng.randint(2**31)))({"drr": x})["drr"]).float()
            )
        x, g = torch.stack(xs), torch.stack([gt_pool[i].float() for i in idx])
        if rng.rand() < 0.5:
            x, g = half_turn(x, g)
        with torch.no_grad():
            views = torch.cat([zscore_images(window_stage[i](zscore_images(x[j : j + 1]))) for j, i in enumerate(idx)])
        pred = model(volume(views))
        loss = loss_fn(pred, g)
        if dice_weight > 0:  # the bone masks: the reconstruction's soft, the ground truth's hard
            soft = torch.sigmoid((pred[:, :1] - threshold) / soft_width)
            loss = loss + float(dice_weight) * mask_loss(soft, (g > threshold).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % score_every == 0:
            checkpoint(float(loss.detach()))
    if curve[-1]["step"] != step:
        checkpoint(float(loss.detach()))
    report = {"folds": {p: str(fold_of[p]) for p in patients}, "dataset_dir": dataset_dir,
              "view_weights": view_weights, "volume_weights": volume_weights, "lr": lr, "batch_size": batch_size,
              "dice_weight": dice_weight, "seed": seed, "steps": step, "minutes": minutes,
              "val_dice_start": curve[0]["val_dice"], "val_dice_best": round(best, 4), "curve": curve}  # fmt: skip
    with atomic_path(Path(out) / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("steps", "val_dice_start", "val_dice_best")}))
    return report


def _pool_ground_truths(
    parser: Any,
    pool: list,
    pool_file: Path,
    draws: int,
    seed: int,
    gt_mean: float,
    gt_std: float,
    fix: str = "remove both to draw them anew",
) -> list[torch.Tensor]:
    """Each pool window's ground truth, z-scored with ``(gt_mean, gt_std)`` (float16): the same seeded window
    draws as the pool's, without projecting. Kept in ``pool_gt_<draws>_<seed>.pt`` beside ``pool_file``, with the
    statistics they were z-scored with.

    Raises:
        BundleInputError: the file holds another number of windows than the pool, or was z-scored with other
            statistics (another model's).
        RuntimeError: the pool or the file holds other windows than this dataset's draws (checked on the first
            window, drawn again: its isolated X-ray and its ground truth); ``fix`` says what to do.
    """
    from monai.transforms import Compose
    from scripts.functional import item_seed
    from scripts.networks import stack_views
    from scripts.transforms import DimensionExpansiond, DRRd
    from scripts.utils import atomic_path
    from tqdm import tqdm

    items = parser.get_parsed_content("probe_training")
    draw = Compose(
        parser.get_parsed_content("load_transforms")
        + parser.get_parsed_content("window_transforms")
        + parser.get_parsed_content("augment_transforms")
    )
    gt_file = pool_file.parent / f"pool_gt_{draws}_{seed}.pt"
    gt_pool = torch.load(gt_file, weights_only=True) if gt_file.exists() else []
    if isinstance(gt_pool, dict):  # the statistics it was z-scored with (files written before hold the list alone)
        kept = (float(gt_pool["gt_mean"]), float(gt_pool["gt_std"]))
        if not np.allclose(kept, (gt_mean, gt_std), rtol=1e-6):
            raise BundleInputError(
                f"{gt_file} was z-scored with gt_mean, gt_std = {kept}, this model's are {(gt_mean, gt_std)}: "
                "remove it to draw the ground truths anew (about 3 min), or start from the model it was made for."
            )
        gt_pool = gt_pool["windows"]
    for k in tqdm(range(0 if gt_pool else int(draws)), desc="ground truths, draws", disable=bool(gt_pool)):
        for item in items:
            draw.set_random_state(seed=item_seed(item["id"], 1000 * seed + k))
            gt = torch.as_tensor(draw(dict(item))["gt"]).as_subclass(torch.Tensor)  # no meta in the file
            gt_pool.append(((gt.float() - gt_mean) / gt_std).half())
    if len(gt_pool) != len(pool):
        raise BundleInputError(f"{gt_file} holds {len(gt_pool)} windows, the pool {len(pool)}: remove one of them.")
    # both files must hold this dataset's seeded draws: the first window drawn again, its isolated X-ray and its
    # ground truth compared with theirs (a pool or a dataset made again since would pair other windows)
    isolated = DRRd("gt", ref_key="gt", output_keys="p_v", angles=_VIEWS, photon_count=None)
    draw.set_random_state(seed=item_seed(items[0]["id"], 1000 * seed))
    first = isolated(draw(dict(items[0])))
    expanded = DimensionExpansiond("drr", mode="replicate", ref_key="gt")(
        {"drr": first["p_v"], "drr_geometry": first["p_v_geometry"], "gt": first["gt"]}
    )
    views = stack_views(expanded["image"][None].as_tensor())[0].float()
    gt = ((torch.as_tensor(first["gt"]).as_subclass(torch.Tensor).float() - gt_mean) / gt_std).half().float()
    if not (torch.allclose(views, pool[0][2], atol=1e-4) and torch.allclose(gt, gt_pool[0].float(), atol=1e-3)):
        raise RuntimeError(
            f"{pool_file.name} or {gt_file.name} in {pool_file.parent} holds other windows than this dataset's "
            f"draws; {fix}."
        )
    if not gt_file.exists():
        with atomic_path(gt_file) as tmp:
            torch.save({"gt_mean": gt_mean, "gt_std": gt_std, "windows": gt_pool}, tmp)
    return gt_pool


def _pool_indices(items: Sequence[dict], size: int, holdout: str | None) -> np.ndarray:
    """The pool windows a run trains on: every one, or those of patients other than ``holdout``.

    The pool holds ``draws`` rounds of ``items`` in order (window ``i`` is of ``items[i % len(items)]``).
    """
    if holdout is None:
        return np.arange(size)
    patients = [it.get("patient", it["id"]) for it in items]
    if holdout not in patients:
        raise BundleInputError(
            f"holdout: {holdout!r} is not a training patient of this dataset; give one of {sorted(set(patients))}."
        )
    keep = np.asarray([patients[i % len(patients)] != holdout for i in range(size)])
    if not keep.any():
        raise BundleInputError(f"holdout: {holdout!r} is the only training patient; nothing is left to train on.")
    return np.flatnonzero(keep)


def _init_view_stage(init: str, member: int, joint_views: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The view stage ``train`` starts from, and its member number: ``init``'s (a ``stage2d.pt``, member 0) or its
    view stage ``member`` (a :class:`~scripts.networks.TwoStageEAR` model file), checked against the shape of the
    view stage trained."""
    import pickle

    from scripts.networks import TwoStageEAR

    what = "a view stage (a spine_stage train stage2d.pt) or a two-stage model file (e.g. models/body/model.pt)"
    if not Path(init).is_file():
        raise BundleInputError(f"init: no such file: {init}; give {what}.")
    try:
        state = torch.load(init, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # e.g. a run's last.pt (more than weights)
        raise BundleInputError(
            f"init: {init} is not {what}: it cannot be read as weights alone (a run's last.pt? give its stage2d.pt)."
        ) from e
    if not isinstance(state, dict):
        raise BundleInputError(f"init: {init} is not {what}.")
    members = _view_members(state)
    member = int(member)
    if member != 0 and not any(k.startswith("view_net.") for k in state):
        raise BundleInputError(f"init_member: {init} holds one view stage (a stage2d.pt); give --init_member 0.")
    if not 0 <= member < len(members):
        raise BundleInputError(f"init_member must be in [0, {len(members) - 1}] for {init}, got {member!r}.")
    if not all(f"{k}.conv.weight" in members[member] for k in _VIEW_FEATURE_KEYS):
        raise BundleInputError(f"init: {init} holds no view stage (e.g. an EAR model.pt); give {what}.")
    try:
        TwoStageEAR(joint_views=joint_views).view_net.load_state_dict(members[member])
    except RuntimeError as e:  # another network, or another shape (joint_views, features) than this run's
        raise BundleInputError(
            f"init: {init} is not {what} of this run's shape: its weights do not fit a view stage with "
            f"joint_views={joint_views} (give the --joint_views it was trained with)."
        ) from e
    return members[member], member


def _state_file(path: str | os.PathLike, option: str) -> dict[str, torch.Tensor]:
    """The tensors of a weight file given as ``option``, refused in one line when it is missing or is no state dict
    (e.g. a training run's ``last.pt``, which holds the optimiser and the run's state too)."""
    p = Path(path)
    if not p.is_file():
        raise BundleInputError(f"{option} {p}: no such file.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects beyond tensors, or not a torch file
        raise BundleInputError(
            f"{option} {p} is not a weight file of tensors ({type(e).__name__}); fix: give a stage2d.pt or a model.pt, "
            "not a run's last.pt."
        ) from e
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleInputError(
            f"{option} {p} holds no state dict of tensors; fix: give a stage2d.pt or a model.pt, not a run's last.pt."
        )
    return state


def _view_members(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The view stages in a state dict: the whole dict (``train``'s ``stage2d.pt``), or those of a
    :class:`~scripts.networks.TwoStageEAR` model file (``view_net`` and each of ``more_view_nets``)."""
    if not any(k.startswith("view_net.") for k in state):
        return [state]
    prefixes = ["view_net."] + sorted(
        {".".join(k.split(".")[:2]) + "." for k in state if k.startswith("more_view_nets.")},
        key=lambda q: int(q.split(".")[1]),
    )
    return [{k[len(q) :]: v for k, v in state.items() if k.startswith(q)} for q in prefixes]


def _run_highpass(folder: Path) -> float | None:
    """The ``--highpass_px`` of the ``train`` run whose folder holds a view stage: from its ``report.json`` (written at
    the end), else from its ``last.pt`` (a run stopped early); ``None`` for a folder of neither."""
    report, last = folder / "report.json", folder / "last.pt"
    if report.is_file():
        try:
            return json.loads(report.read_text()).get("highpass_px")
        except ValueError:
            return None
    if last.is_file():
        try:
            state = torch.load(last, map_location="cpu", weights_only=False)
        except Exception:  # not a run's state: nothing to say
            return None
        return state.get("highpass_px") if isinstance(state, dict) else None
    return None


def combine(
    view_weights: str | Sequence[str], volume_weights: str, out: str, drr_source: str = "body", view_scale: int = 1
) -> Path:
    """One :class:`~scripts.networks.TwoStageEAR` model file from a view stage (or several, an ensemble of the view
    stage: e.g. the same recipe trained with other seeds) and an EAR model, with its contract.

    The whole model's contract is the EAR model's (intensity statistics, spacing, crop size, views, expansion
    mode, record), with the network, the architecture fingerprint, the X-ray source it reads (``drr_source``)
    and the view stage's file and SHA-256 recorded. The file runs as it is (``--ckpt_dir``, inference and
    evaluation with ``configs/body_model.json``, which rebuilds the network from the file's record) and is the
    ``--pretrained`` of a joint fine-tune (``configs/lab/recipes/two_stage.json``).

    Args:
        view_weights: the view stage's ``BasicUNet`` state dict (``train``'s ``stage2d.pt``), or a list of them of
            one shape, whose outputs the model averages; a ``TwoStageEAR`` model file (e.g. the shipped
            ``models/body/model.pt``) gives all its view stages.
        volume_weights: an EAR ``model.pt`` of this bundle; its own contract stays with it, under ``volume_net``.
        out: the ``.pt`` file to write (atomically); a folder (an existing one, or a name without a suffix) gets
            ``model.pt`` in it, the name ``--ckpt_dir`` reads.
        drr_source: the X-ray source the combined model reads (recorded, e.g. ``body``).
        view_scale: the EAR model's pixels per view-stage pixel along each side: ``2`` for a view stage trained on
            the CPU windows (2 mm, ``train``'s default dataset) before the paper-sized EAR (1 mm, ``models/model.pt``),
            over the same 128 mm window (:class:`~scripts.networks.TwoStageEAR`'s ``view_scale``); ``1`` when
            both stages share a pixel size.
    """
    import hashlib

    from scripts.networks import TwoStageEAR, attach_model_info
    from scripts.networks.model_info import load_state_dict_file, read_model_info
    from scripts.utils import atomic_path

    files = [view_weights] if isinstance(view_weights, (str, os.PathLike)) else list(view_weights)
    if not files:
        raise BundleInputError("combine needs at least one view stage (--view_weights).")
    views, stages = [], []
    for f in files:
        highpass = _run_highpass(Path(f).parent)
        if highpass is not None:
            raise BundleInputError(
                f"--view_weights {f} was trained on high-passed views (--highpass_px {highpass}), which the "
                "two-stage model does not compute; fix: combine a view stage trained without --highpass_px."
            )
        state = _state_file(f, "--view_weights")
        members = _view_members(state)
        if not all(all(f"{k}.conv.weight" in m for k in _VIEW_FEATURE_KEYS) for m in members):
            raise BundleInputError(
                f"--view_weights {f} holds no view stage (a BasicUNet: {_VIEW_FEATURE_KEYS[0]}.conv.weight is "
                "missing); fix: give spine_stage train's stage2d.pt, or a two-stage model file such as "
                "models/body/model.pt."
            )
        digest = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        for k, member in enumerate(members):
            views.append(member)
            stages.append({"file": Path(f).name, "sha256": digest, **({"member": k} if k else {})})
    volume = load_state_dict_file(volume_weights)  # model.pt, model.ts or a training checkpoint; one-line errors
    if any(k.startswith("view_net.") for k in volume) or "conv_0.conv_0.conv.weight" in volume:
        raise BundleInputError(
            f"--volume_weights {volume_weights} is not an EAR model (it holds a view stage); fix: give the EAR "
            "model the view stage feeds, e.g. models/cpu/model.pt."
        )
    info = read_model_info(volume)
    record = dict(info["record"])
    shapes = []
    for view in views:
        features = [int(view[f"{k}.conv.weight"].shape[0]) for k in _VIEW_FEATURE_KEYS]  # BasicUNet's six widths
        joint = int(view["conv_0.conv_0.conv.weight"].shape[1]) == 2  # both views as channels
        shapes.append((tuple(features), joint))
    if len(set(shapes)) != 1:
        raise BundleInputError(f"the view stages of one model must share one shape; got {sorted(set(shapes))}.")
    features, joint = list(shapes[0][0]), shapes[0][1]
    record.update({"view_features": features, "joint_views": joint})
    if len(views) > 1:
        record["view_members"] = len(views)
    if int(view_scale) > 1:
        record["view_scale"] = int(view_scale)
    net = TwoStageEAR(
        channels=record.get("channels", (16, 32, 64, 128, 256)),
        view_features=features,
        joint_views=joint,
        view_members=len(views),
        view_scale=int(view_scale),
    )
    for member, view in zip([net.view_net, *net.more_view_nets], views):
        member.load_state_dict(view)
    net.volume_net.load_state_dict(volume)
    version = json.loads((ROOT / "configs" / "metadata.json").read_text())["version"]
    volume_record = {k: info["record"][k] for k in ("bundle_version", "drr_source") if k in info["record"]}
    record.update(
        {"drr_source": drr_source, "bundle_version": version,
         "view_stage": stages[0] if len(stages) == 1 else stages,
         "volume_stage": {"file": Path(volume_weights).name, **volume_record}}
    )  # fmt: skip
    record.pop("network", None)
    attach_model_info(
        net, {"gt_mean": info["gt_mean"], "gt_std": info["gt_std"]}, info["spacing"], info["roi_size"],
        info["views"], info["expansion_mode"], record,
    )  # fmt: skip
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / "model.pt"
    elif path.suffix != ".pt":
        raise BundleInputError(f"--out {out}: give a .pt file (e.g. runs/my_body/model.pt) or a folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return path


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    os.chdir(ROOT)
    # a misspelt option stops here, before the work
    commands = {"train": train, "stack": stack, "views": views, "combine": combine}
    check_cli_flags(commands, sys.argv[1:], "python -m scripts.tools.spine_stage")
    fire.Fire(commands, serialize=lambda result: None if isinstance(result, dict) else result)  # reports: in files
