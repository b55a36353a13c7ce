"""Whole-volume scores against direct numpy counting and a brute-force surface reference."""

import math

import numpy as np
import pytest

from flexunet_k3.volume_scores import score_volume, summarize, surface_scores

SPACING = (0.7, 0.7, 2.5)
SHAPE = (12, 10, 8)
CLASS_ID = 2
SCORE_KEYS = ("dice", "iou", "precision", "recall", "hd95", "surface_dice")


# --- random shapes (boolean masks) ------------------------------------------------------------


def blob(rng, shape=SHAPE):
    """A random ellipsoid, possibly cut by the array's edge."""
    grid = np.indices(shape, dtype=np.float64)
    center = [rng.uniform(0, n - 1) for n in shape]
    radii = [rng.uniform(1.0, max(1.5, n / 2.5)) for n in shape]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True))
    mask = distance <= 1.0
    if not mask.any():
        mask[tuple(int(round(c)) for c in center)] = True
    return mask


def components(rng, shape=SHAPE):
    """Several small blobs and stray voxels: many connected components."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(2, 5)):
        mask |= blob(rng, shape) & (rng.random(shape) < 0.9)
    mask |= rng.random(shape) < 0.03
    return mask


def thin(rng, shape=SHAPE):
    """A one-voxel-thick sheet or rod touching the array's edge."""
    mask = np.zeros(shape, dtype=bool)
    axis = rng.integers(3)
    index = [slice(None)] * 3
    index[axis] = rng.choice([0, shape[axis] - 1, rng.integers(shape[axis])])
    if rng.random() < 0.5:  # a rod instead of a sheet
        other = (axis + 1) % 3
        index[other] = rng.integers(shape[other])
    mask[tuple(index)] = True
    holed = mask & (rng.random(shape) < 0.9)
    return holed if holed.any() else mask


SHAPES = {"blob": blob, "components": components, "thin": thin}


def labels(rng, mask):
    """A label volume: the class where `mask`, other labels (0, 1, 3) elsewhere."""
    return np.where(mask, CLASS_ID, rng.choice([0, 0, 0, 1, 3], size=mask.shape))


def random_pairs():
    """(seed, truth kind, prediction kind) over every combination of kinds."""
    return [(seed, t, p) for seed in range(3) for t in SHAPES for p in SHAPES]


def masks_for(seed, truth_kind, pred_kind):
    rng = np.random.default_rng(seed)
    truth = SHAPES[truth_kind](rng)
    pred = SHAPES[pred_kind](rng) if truth_kind != pred_kind else _perturbed(rng, truth)
    return rng, truth, pred


def _perturbed(rng, mask):
    """The mask shifted by a voxel along a random axis, with a few voxels flipped."""
    shifted = np.roll(mask, rng.choice([-1, 1]), axis=rng.integers(3))
    return shifted ^ (rng.random(mask.shape) < 0.02)


# --- brute-force reference ---------------------------------------------------------------------


def reference_border(mask):
    """Mask voxels with a face neighbour outside the mask, the array's outside counting as empty."""
    padded = np.pad(mask, 1)
    core = padded[1:-1, 1:-1, 1:-1]
    interior = core.copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~interior


def reference_surface(truth, pred, spacing, tolerance_mm):
    """HD95 and surface Dice from all point-pair distances between the border voxels."""
    truth_points = np.argwhere(reference_border(truth)) * np.asarray(spacing)
    pred_points = np.argwhere(reference_border(pred)) * np.asarray(spacing)
    pairs = np.sqrt(((pred_points[:, None, :] - truth_points[None, :, :]) ** 2).sum(-1))
    pred_to_truth, truth_to_pred = pairs.min(1), pairs.min(0)
    hd95 = max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))
    within = (pred_to_truth <= tolerance_mm).sum() + (truth_to_pred <= tolerance_mm).sum()
    return hd95, within / (pred_to_truth.size + truth_to_pred.size)


# --- overlap scores ------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "truth_kind", "pred_kind"), random_pairs())
def test_overlap_scores_equal_direct_counting(seed, truth_kind, pred_kind):
    rng, truth, pred = masks_for(seed, truth_kind, pred_kind)
    row = score_volume(labels(rng, truth), labels(rng, pred), CLASS_ID, SPACING)
    t, p = int(truth.sum()), int(pred.sum())
    both = int((truth & pred).sum())
    assert (row["true_voxels"], row["pred_voxels"], row["intersection"]) == (t, p, both)
    assert row["dice"] == 2 * both / (t + p)
    assert row["iou"] == both / (t + p - both)
    assert row["precision"] == both / p
    assert row["recall"] == both / t
    assert row["both_empty"] is False


def test_row_holds_plain_python_values():
    rng, truth, pred = masks_for(0, "blob", "blob")
    row = score_volume(labels(rng, truth), labels(rng, pred), CLASS_ID, SPACING)
    assert list(row) == [
        "true_voxels", "pred_voxels", "intersection", *SCORE_KEYS[:4], "hd95", "surface_dice",
        "both_empty",
    ]
    assert all(type(row[key]) is int for key in ("true_voxels", "pred_voxels", "intersection"))
    assert all(type(row[key]) is float for key in SCORE_KEYS)
    assert type(row["both_empty"]) is bool


# --- surface scores ------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance_mm", [1.0, 1.8])
@pytest.mark.parametrize(("seed", "truth_kind", "pred_kind"), random_pairs())
def test_surface_scores_match_brute_force(seed, truth_kind, pred_kind, tolerance_mm):
    rng, truth, pred = masks_for(seed, truth_kind, pred_kind)
    row = score_volume(labels(rng, truth), labels(rng, pred), CLASS_ID, SPACING, tolerance_mm)
    hd95, surface_dice = reference_surface(truth, pred, SPACING, tolerance_mm)
    assert row["hd95"] == pytest.approx(hd95, abs=1e-3)
    assert row["surface_dice"] == pytest.approx(surface_dice, abs=1e-3)


def test_identical_masks_score_perfectly():
    rng = np.random.default_rng(7)
    for make in SHAPES.values():
        volume = labels(rng, make(rng))
        row = score_volume(volume, volume, CLASS_ID, SPACING)
        assert (row["dice"], row["iou"], row["precision"], row["recall"]) == (1, 1, 1, 1)
        assert (row["hd95"], row["surface_dice"]) == (0.0, 1.0)


def test_known_distance_along_the_coarse_axis():
    """A slab shifted by one slice along the 2.5 mm axis: every border voxel is 2.5 mm off
    or on the other border; HD95 is 2.5 mm."""
    truth = np.zeros((12, 12, 12), dtype=np.int64)
    truth[3:9, 3:9, 3:6] = CLASS_ID
    pred = np.roll(truth, 1, axis=2)
    row = score_volume(truth, pred, CLASS_ID, SPACING)
    assert row["hd95"] == pytest.approx(2.5)
    assert score_volume(truth, pred, CLASS_ID, SPACING, tolerance_mm=2.5)["surface_dice"] == 1.0


# --- empty masks ---------------------------------------------------------------------------------


def test_both_empty_is_all_nan_and_flagged():
    volume = np.random.default_rng(0).choice([0, 1, 3], size=SHAPE)  # no voxel of the class
    row = score_volume(volume, volume, CLASS_ID, SPACING)
    assert row["both_empty"] is True
    assert (row["true_voxels"], row["pred_voxels"], row["intersection"]) == (0, 0, 0)
    assert all(math.isnan(row[key]) for key in SCORE_KEYS)


@pytest.mark.parametrize("empty", ["truth", "prediction"])
def test_one_empty_scores_zero_and_nan_hd95(empty):
    rng = np.random.default_rng(1)
    full, none = labels(rng, blob(rng)), np.zeros(SHAPE, dtype=np.int64)
    truth, pred = (none, full) if empty == "truth" else (full, none)
    row = score_volume(truth, pred, CLASS_ID, SPACING)
    assert row["both_empty"] is False
    assert (row["dice"], row["iou"], row["precision"], row["recall"]) == (0, 0, 0, 0)
    assert row["surface_dice"] == 0.0
    assert math.isnan(row["hd95"])  # MONAI's percentile Hausdorff distance gives NaN here


# --- cropping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "truth_kind", "pred_kind"), random_pairs())
def test_cropped_equals_whole_volume(seed, truth_kind, pred_kind):
    rng, truth, pred = masks_for(seed, truth_kind, pred_kind)
    row = score_volume(labels(rng, truth), labels(rng, pred), CLASS_ID, SPACING)
    whole = surface_scores(truth, pred, SPACING)
    assert (row["hd95"], row["surface_dice"]) == (whole["hd95"], whole["surface_dice"])


@pytest.mark.parametrize("seed", range(3))
def test_padding_the_volume_changes_nothing(seed):
    """A volume whose shapes touch its edges, embedded in a larger empty one."""
    rng, truth, pred = masks_for(seed, "thin", "components")
    small = score_volume(truth * CLASS_ID, pred * CLASS_ID, CLASS_ID, SPACING, 1.8)
    offset = tuple(int(o) for o in rng.integers(1, 6, size=3))
    big = [np.zeros((30, 25, 20), dtype=np.int64) for _ in range(2)]
    window = tuple(slice(o, o + n) for o, n in zip(offset, SHAPE, strict=True))
    big[0][window], big[1][window] = truth * CLASS_ID, pred * CLASS_ID
    assert score_volume(big[0], big[1], CLASS_ID, SPACING, 1.8) == small


# --- input checks --------------------------------------------------------------------------------


def test_bad_inputs_raise():
    volume = np.zeros(SHAPE, dtype=np.int64)
    with pytest.raises(ValueError, match="same shape"):
        score_volume(volume, volume[:-1], CLASS_ID, SPACING)
    with pytest.raises(ValueError, match="3D"):
        score_volume(volume[0], volume[0], CLASS_ID, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        score_volume(volume, volume, CLASS_ID, (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        score_volume(volume, volume, CLASS_ID, SPACING, tolerance_mm=-1.0)


# --- summary -------------------------------------------------------------------------------------


def test_summarize_leaves_out_nan_and_counts_both_empty():
    nan = math.nan
    rows = [
        {"dice": 0.8, "hd95": 2.0, "both_empty": False},
        {"dice": 0.6, "hd95": 4.0, "both_empty": False},
        {"dice": 0.1, "hd95": 9.0, "both_empty": False},
        {"dice": 0.0, "hd95": nan, "both_empty": False},  # a missed tumor
        {"dice": nan, "hd95": nan, "both_empty": True},
        {"dice": nan, "hd95": nan, "both_empty": True},
    ]
    summary = summarize(rows, ["dice", "hd95"])
    dice = np.array([0.8, 0.6, 0.1, 0.0])
    assert summary["dice"] == {
        "mean": pytest.approx(dice.mean()), "std": pytest.approx(dice.std()),
        "median": pytest.approx(0.35), "counted": 4, "both_empty": 2, "not_finite": 0,
    }
    assert summary["hd95"] == {
        "mean": pytest.approx(5.0), "std": pytest.approx(np.std([2.0, 4.0, 9.0])),
        "median": 4.0, "counted": 3, "both_empty": 2, "not_finite": 1,
    }


def test_summarize_with_nothing_counted_gives_nan():
    rows = [{"dice": math.nan, "both_empty": True}, {"dice": math.inf, "both_empty": False}]
    summary = summarize(rows, ["dice"])["dice"]
    assert all(math.isnan(summary[name]) for name in ("mean", "std", "median"))
    assert (summary["counted"], summary["both_empty"], summary["not_finite"]) == (0, 1, 1)
    assert summarize([], ["dice"])["dice"]["counted"] == 0


def test_summarize_rows_from_score_volume():
    rng = np.random.default_rng(3)
    empty = np.zeros(SHAPE, dtype=np.int64)
    volumes = [labels(rng, blob(rng)) for _ in range(4)]
    rows = [score_volume(volumes[i], volumes[i + 1], CLASS_ID, SPACING) for i in range(3)]
    rows += [score_volume(empty, empty, CLASS_ID, SPACING)]
    rows += [score_volume(volumes[0], empty, CLASS_ID, SPACING)]
    summary = summarize(rows, SCORE_KEYS)
    assert summary["dice"]["counted"] == 4 and summary["dice"]["both_empty"] == 1
    assert (summary["hd95"]["counted"], summary["hd95"]["not_finite"]) == (3, 1)
    assert summary["hd95"]["mean"] == pytest.approx(np.mean([row["hd95"] for row in rows[:3]]))
