"""Scoring, routing-vs-truth, queries and the feature cache, on small hand-made files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from brainatt.contracts.features import FeatureCache, features_writer
from brainatt.contracts.ground_truth import read_true_responses
from brainatt.encoding.attention_maps import roi_attention, voxel_queries
from brainatt.encoding.data import QUERY_MODES, SubjectData, assign_queries, validation_split
from brainatt.encoding.encoders import build_model, split_settings
from brainatt.encoding.evaluate import summarize, voxel_scores
from brainatt.encoding.readout import VoxelReadout
from brainatt.io import BrainattError
from brainatt.models.spec import ModelSpec
from brainatt.synth.brain import sample_voxel_params
from brainatt.synth.scenes import CATEGORIES, render_many
from brainatt.synth.world import WorldSpec, load_brain, visual_features, world_scenes
from brainatt.truth.routing import map_variability, object_masks, routing_scores, truth_maps

GRID = (4, 4)


def _subject(n_vox: int = 6, n_test: int = 50, seed: int = 0) -> SubjectData:
    rng = np.random.default_rng(seed)
    return SubjectData(
        path=Path("responses.h5"),
        train_ids=np.arange(100, 130),
        train_y=rng.normal(size=(30, n_vox)).astype(np.float32),
        test_ids=np.arange(n_test),
        test_y=rng.normal(size=(n_test, n_vox)).astype(np.float32),
        nc=np.array([50.0, 50.0, 2.0, 50.0, 50.0, 50.0])[:n_vox],
        roi=np.array(["FFA-1", "FFA-1", "FFA-1", "V1v", "V1v", "rest"])[:n_vox],
        hemi=np.array(["lh", "lh", "lh", "lh", "lh", "rh"])[:n_vox],
        family=np.array(["category"] * 3 + ["retinotopic"] * 2 + ["other"])[:n_vox],
        ijk=np.arange(n_vox * 3).reshape(n_vox, 3),
    )


def test_queries_per_roi_per_voxel_and_mixed() -> None:
    sub = _subject()
    names, index = assign_queries(sub, "roi")
    assert names == ["lh.FFA-1", "lh.V1v", "rh.rest"]
    assert index.tolist() == [0, 0, 0, 1, 1, 2]
    names, index = assign_queries(sub, "retinotopic-voxel")
    assert names == ["lh.FFA-1", "lh.V1v#3", "lh.V1v#4", "rh.rest"]
    assert index.tolist() == [0, 0, 0, 1, 2, 3]
    names, index = assign_queries(sub, "voxel")
    assert len(names) == 6 and len(set(index)) == 6
    # Per-voxel queries follow the voxels, whatever their names sort to: voxel v reads query v.
    flipped = dataclasses.replace(sub, **{k: getattr(sub, k)[::-1] for k in ("roi", "hemi", "family")})
    names, index = assign_queries(flipped, "voxel")
    assert index.tolist() == list(range(6)) and [n.split("#")[1] for n in names] == [str(v) for v in range(6)]
    assert VoxelReadout(index, 4).own_queries
    names, index = assign_queries(flipped, "retinotopic-voxel")
    assert names == ["rh.rest", "lh.V1v#1", "lh.V1v#2", "lh.FFA-1"] and index.tolist() == [0, 1, 2, 3, 3, 3]
    names, index = assign_queries(sub, "hemisphere")
    assert names == ["lh", "rh"] and index.tolist() == [0, 0, 0, 0, 0, 1]
    with pytest.raises(BrainattError, match="query mode"):
        assign_queries(sub, "hemis")


def test_config_schema_accepts_every_query_mode_and_no_other() -> None:
    root = Path(__file__).parents[1]
    schema = yaml.safe_load((root / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    for mode in QUERY_MODES:
        config["encoding"]["transformer"] = {"queries": mode}
        jsonschema.validate(config, schema)
    config["encoding"]["transformer"] = {"queries": "hemisphere", "positions": False}
    jsonschema.validate(config, schema)
    config["encoding"]["transformer"] = {"queries": "hemis"}
    with pytest.raises(jsonschema.ValidationError, match="hemis"):
        jsonschema.validate(config, schema)


def test_validation_split_is_fixed_disjoint_and_complete() -> None:
    fit_a, val_a = validation_split(100, 0.1, seed=3)
    fit_b, val_b = validation_split(100, 0.1, seed=3)
    assert (fit_a == fit_b).all() and (val_a == val_b).all()
    assert len(val_a) == 10 and not set(fit_a) & set(val_a) and len(fit_a) + len(val_a) == 100
    assert not (validation_split(100, 0.1, seed=4)[1] == val_a).all()


def test_scores_and_nc_filter() -> None:
    sub = _subject()
    pred = sub.test_y.copy()
    pred[:, 1] = -pred[:, 1]  # anti-correlated: counts as 0 after max(r, 0)
    scores = voxel_scores(sub, pred, truth=sub.test_y)
    np.testing.assert_allclose(scores["r"], [1, -1, 1, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(scores["nc_norm"], [2, 0, 50, 2, 2, 2], atol=1e-6)  # r² / (NC/100)
    table = summarize(scores, "subj01", "ridge")
    ffa = table[table.roi == "FFA-1"].iloc[0]
    assert ffa.n_voxels == 3
    assert ffa.nc_norm == pytest.approx(1.0)  # the NC = 2% voxel is left out
    assert ffa.nc_norm_all == pytest.approx(52 / 3)
    assert {"family:category", "family:retinotopic", "family:other", "all"} <= set(table.roi)


def test_truth_is_aligned_by_voxel_coordinates(tmp_path: Path) -> None:
    sub = _subject()
    truth = np.random.default_rng(1).normal(size=(60, 6)).astype(np.float32)
    order = np.array([5, 3, 0, 1, 4, 2])  # the truth file lists voxels in another order
    with h5py.File(tmp_path / "subj01.h5", "w") as f:
        f["ijk"] = sub.ijk[order]
        f["responses"] = truth[:, order]
    np.testing.assert_array_equal(
        read_true_responses(tmp_path / "subj01.h5", sub.ijk, sub.test_ids, sub.path), truth[sub.test_ids]
    )
    sub.ijk = sub.ijk + 100
    with pytest.raises(BrainattError, match="missing from the ground truth"):
        read_true_responses(tmp_path / "subj01.h5", sub.ijk, sub.test_ids, sub.path)


SPEC = WorldSpec(n_subjects=1, n_train=30, n_shared=10, image_size=32, trials_per_session=40)


ROUTING_SCORES = pd.DataFrame({"voxel": [2, 0, 1, 3], "roi": ["V1v", "FFA-1", "FFA-1", "V1v"], "hemi": ["lh"] * 4})


def _routing_world(
    tmp_path: Path, face_maps, v1_maps, head_mean=None, ids: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """A ground-truth folder for SPEC's scenes, attention maps from the given functions of the face masks.

    ``head_mean``, if given, makes the plain head-mean maps (the headline) from the face masks: one function for both
    queries, or a pair (face, V1v); without it the file has one set of maps. ``ids``: the test scenes (default all
    of them).
    """
    gt = tmp_path / "ground_truth"
    gt.mkdir(exist_ok=True)
    scenes, _ = world_scenes(SPEC)
    listed = [{"objects": [{"category": o.category, "cx": o.cx} for o in sc.objects]} for sc in scenes]
    (gt / "scenes.json").write_text(json.dumps(listed))
    (gt / "world.json").write_text(json.dumps({"spec": SPEC.as_dict()}))
    kinds = ["face", "face:mixed", "V1v", "V1v"]
    params = sample_voxel_params(np.array([2, 2, 1, 1]), kinds, np.full((4, 3), -20.0), np.random.default_rng(0))
    params.prf_x, params.prf_y = np.array([0.5, 0.5, 0.6, 0.9]), np.array([0.5, 0.5, 0.1, 0.1])
    with h5py.File(gt / "subj01.h5", "w") as f:
        f["kind"] = np.array(kinds, dtype="S")
        for key, value in params.as_dict().items():
            f[f"params/{key}"] = value
        f["readout/mean"], f["readout/std"] = np.zeros(4, np.float32), np.ones(4, np.float32)
        f.attrs["grid"] = SPEC.image_size // 4
    ids = np.arange(SPEC.n_images) if ids is None else ids
    faces = object_masks(gt, ids, GRID)[:, CATEGORIES.index("face")]
    with h5py.File(tmp_path / "attention.h5", "w") as f:
        f["queries"] = np.array([b"lh.FFA-1", b"lh.V1v"])
        f["nsd_ids"] = ids
        f["maps"] = np.stack([face_maps(faces), v1_maps(faces)]).astype(np.float16)
        if head_mean:
            face_mean, v1_mean = head_mean if isinstance(head_mean, tuple) else (head_mean, head_mean)
            f["maps_head_mean"] = np.stack([face_mean(faces), v1_mean(faces)]).astype(np.float16)
        f.attrs["grid"] = list(GRID)
    return routing_scores(tmp_path / "attention.h5", ROUTING_SCORES, gt, "subj01").set_index("query"), faces


def test_object_masks_are_the_rendered_objects(tmp_path: Path) -> None:
    _, faces = _routing_world(tmp_path, lambda m: np.full(m.shape, 1 / 16), lambda m: np.full(m.shape, 1 / 16))
    scenes, _ = world_scenes(SPEC)
    has_face = np.array(["face" in sc.categories() for sc in scenes])
    assert has_face.any() and (faces.any((1, 2)) == has_face).all()


def _on_faces(m: np.ndarray) -> np.ndarray:
    """All attention on the face patches, uniform where there is none."""
    m = m.astype(float)
    m[~m.any((1, 2))] = 1
    return m / m.sum((1, 2), keepdims=True)


def _uniform(m: np.ndarray) -> np.ndarray:
    return np.full(m.shape, 1 / 16)


def _patch(column: int):
    """All attention on the top-row patch ``column``, centred at ((column + 0.5) / 4, 0.125)."""

    def maps(m: np.ndarray) -> np.ndarray:
        out = np.zeros(m.shape)
        out[:, 0, column] = 1
        return out

    return maps


def test_routing_scores_recover_planted_routing(tmp_path: Path) -> None:
    corner = _patch(3)  # centred at (0.875, 0.125); the pRFs' mean is (0.75, 0.1)
    table, faces = _routing_world(tmp_path, _on_faces, corner)
    share = faces[faces.any((1, 2))].mean((1, 2)).mean()
    assert table.loc["lh.FFA-1", "truth"] == "face"
    assert table.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(1 / share, rel=1e-3)
    assert table.loc["lh.FFA-1", "peak_on_object"] == 1.0
    assert table.loc["lh.FFA-1", "peak_chance"] == pytest.approx(share)
    assert table.loc["lh.V1v", "distance"] == pytest.approx(np.hypot(0.125, 0.025), abs=1e-3)
    assert table.loc["lh.V1v", "distance"] < table.loc["lh.V1v", "distance_uniform"]
    # attention that follows the faces changes with the image; a fixed patch's does not
    assert table.loc["lh.V1v", "variability"] == 0.0 < table.loc["lh.FFA-1", "variability"]
    assert not table.columns.str.endswith("_weighted").any()  # an attention.h5 with one set of maps


def test_the_headline_scores_the_plain_head_mean_and_the_weighted_maps_stand_beside_it(tmp_path: Path) -> None:
    corner = _patch(3)
    planted, _ = _routing_world(tmp_path, _on_faces, corner)
    # the weighted maps (`maps`) uniform, the plain head mean routing: the headline is the head mean's
    table, _ = _routing_world(tmp_path, _uniform, _uniform, head_mean=(_on_faces, corner))
    for column in ("mass_ratio", "peak_on_object", "distance", "variability"):
        assert table[column].to_dict() == pytest.approx(planted[column].to_dict(), rel=1e-6, nan_ok=True), column
    assert table.loc["lh.FFA-1", "mass_ratio_weighted"] == pytest.approx(1.0, rel=1e-3)
    assert (table["variability_weighted"] == 0).all()
    assert table.loc["lh.V1v", "distance_weighted"] == pytest.approx(table.loc["lh.V1v", "distance_uniform"], abs=1e-3)
    # and the other way round
    swapped, _ = _routing_world(tmp_path, _on_faces, corner, head_mean=_uniform)
    assert swapped.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert swapped.loc["lh.FFA-1", "mass_ratio_weighted"] == pytest.approx(planted.loc["lh.FFA-1", "mass_ratio"])


def test_the_name_only_maps_are_scored_beside_the_attention(tmp_path: Path) -> None:
    table, faces = _routing_world(tmp_path, _uniform, _uniform)
    # lh.V1v by its name alone: the right (contralateral) upper quarter, centre (0.75, 0.25); the pRFs' mean (0.75, 0.1)
    assert table.loc["lh.V1v", "distance_name_only"] == pytest.approx(0.15, abs=1e-6)
    # lh.FFA-1 by its name alone: uniform over the central quarter of the image (the centre 2 × 2 cells of 4 × 4)
    has = faces.any((1, 2))
    central = faces[has][:, 1:3, 1:3].sum((1, 2)).mean() / 4
    expected = central / faces[has].mean((1, 2)).mean()
    assert table.loc["lh.FFA-1", "mass_ratio_name_only"] == pytest.approx(expected, rel=1e-6)


def test_a_static_map_gets_no_credit_for_following_the_objects(tmp_path: Path) -> None:
    table, _ = _routing_world(tmp_path, lambda m: np.broadcast_to(_on_faces(m).mean(0), m.shape), _uniform)
    face = table.loc["lh.FFA-1"]
    assert face["variability"] == 0.0
    assert face["mass_ratio"] == pytest.approx(face["mass_ratio_static"], rel=1e-3)
    assert "mass_ratio_best_static" not in table  # every scene is a test scene: nothing to place a static map from
    assert "over_best_static" not in table


def test_the_best_static_map_is_placed_from_the_scenes_outside_the_test_set(tmp_path: Path) -> None:
    test_ids = np.arange(24)
    tracking, _ = _routing_world(tmp_path, _on_faces, _uniform, ids=test_ids)
    others = object_masks(tmp_path / "ground_truth", np.arange(24, SPEC.n_images), GRID)[:, CATEGORIES.index("face")]
    cell = np.unravel_index(others.mean(0).argmax(), GRID)

    def on_cell(m: np.ndarray) -> np.ndarray:
        out = np.zeros(m.shape)
        out[:, cell[0], cell[1]] = 1
        return out

    placed, _ = _routing_world(tmp_path, on_cell, _uniform, ids=test_ids)
    best = tracking.loc["lh.FFA-1", "mass_ratio_best_static"]
    assert placed.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(best, rel=1e-3)
    assert best < tracking.loc["lh.FFA-1", "mass_ratio"]  # attention on every image's faces beats any fixed patch
    ratio = tracking.loc["lh.FFA-1", "over_best_static"]
    assert ratio == pytest.approx(tracking.loc["lh.FFA-1", "mass_ratio"] / best) and ratio > 1
    assert placed.loc["lh.FFA-1", "over_best_static"] == pytest.approx(1.0, rel=1e-3)
    # leave one out: the tracking maps' mean over the other images is not credited with this image's faces
    assert 1.0 < tracking.loc["lh.FFA-1", "mass_ratio_static"] < tracking.loc["lh.FFA-1", "mass_ratio"]


def test_map_variability_is_the_mean_total_variation_distance_to_the_mean_map() -> None:
    one_hot = np.eye(4).reshape(4, 2, 2)
    assert map_variability(one_hot[:2]) == pytest.approx(0.5)
    assert map_variability(one_hot) == pytest.approx(1 - 1 / 4)
    assert map_variability(np.broadcast_to(one_hot[:1], (3, 2, 2))) == 0.0


def test_routing_marks_rois_of_mixed_kinds(tmp_path: Path) -> None:
    table, _ = _routing_world(tmp_path, _uniform, _uniform)
    assert not table["mixed"].any()  # FFA-1's voxels are half face, half face:mixed
    with h5py.File(tmp_path / "ground_truth/subj01.h5", "r+") as f:
        f["kind"][:2] = np.array([b"face:mixed"] * 2)
    gt = tmp_path / "ground_truth"
    mixed = routing_scores(tmp_path / "attention.h5", ROUTING_SCORES, gt, "subj01").set_index("query")
    assert mixed["mixed"].to_dict() == {"lh.FFA-1": True, "lh.V1v": False}


def test_routing_scores_each_roi_whatever_its_voxels_queries(tmp_path: Path) -> None:
    roi_table, faces = _routing_world(tmp_path, _on_faces, _patch(3))
    gt, scores = tmp_path / "ground_truth", pd.DataFrame({"voxel": range(4), "roi": ["FFA-1"] * 2 + ["V1v"] * 2})
    scores["hemi"] = "lh"
    # one query per voxel: a ROI attends to the mean of its voxels' maps
    per_voxel = [_on_faces(faces), _uniform(faces), _patch(3)(faces), _patch(2)(faces)]
    with h5py.File(tmp_path / "attention.h5", "r+") as f:
        del f["queries"], f["maps"]
        f["queries"] = np.array([f"lh.{r}#{v}" for v, r in enumerate(scores["roi"])], dtype="S")
        f["maps"] = np.stack(per_voxel).astype(np.float16)
        f["voxel_query"] = np.arange(4)
    table = routing_scores(tmp_path / "attention.h5", scores, gt, "subj01").set_index("query")
    assert list(table.index) == ["lh.FFA-1", "lh.V1v"] and table["n_voxels"].tolist() == [2, 2]
    ratio = roi_table.loc["lh.FFA-1", "mass_ratio"]
    assert table.loc["lh.FFA-1", "mass_ratio"] == pytest.approx((ratio + 1) / 2, rel=1e-3)
    assert table.loc["lh.V1v", "distance"] == pytest.approx(0.025, abs=1e-3)  # centroid (0.75, 0.125)
    # one query per hemisphere: every ROI attends to its map
    with h5py.File(tmp_path / "attention.h5", "r+") as f:
        del f["queries"], f["maps"], f["voxel_query"]
        f["queries"], f["maps"], f["voxel_query"] = np.array([b"lh"]), per_voxel[0][None].astype(np.float16), [0] * 4
    table = routing_scores(tmp_path / "attention.h5", scores, gt, "subj01").set_index("query")
    assert table.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(ratio, rel=1e-6)
    with h5py.File(tmp_path / "attention.h5", "r+") as f:
        del f["voxel_query"]
        f["voxel_query"] = [0] * 3
    with pytest.raises(BrainattError, match="maps of 3 voxels and 1 queries for 4 scored voxels"):
        routing_scores(tmp_path / "attention.h5", scores, gt, "subj01")
    with pytest.raises(BrainattError, match="every voxel 0 … V−1 once"):
        routing_scores(tmp_path / "attention.h5", scores.assign(voxel=scores["voxel"] + 1), gt, "subj01")


def test_files_without_voxel_query_are_read_by_query_name(tmp_path: Path) -> None:
    labels = np.array(["lh.V1v", "lh.V1v", "lh.FFA-1", "rh.rest"])
    with h5py.File(tmp_path / "attention.h5", "w") as f:
        f["queries"] = np.array([b"lh.FFA-1", b"lh.V1v#0", b"lh.V1v#1"])  # per-voxel V1v queries, no rest query
        assert voxel_queries(f, labels).tolist() == [1, 2, 0, -1]
        f["voxel_query"] = [0, 1, 2, 3]  # query 3 does not exist
        with pytest.raises(BrainattError, match="4 voxels and 3 queries"):
            voxel_queries(f, labels)


def test_roi_attention_is_the_mean_map_of_the_queries_its_voxels_read() -> None:
    maps = np.random.default_rng(0).random((5, 3, 2, 2))
    voxel_query = np.array([4, 1, 1, -1, 0, 4, 4])
    voxels = np.array([0, 1, 2, 3, 5, 6])
    np.testing.assert_allclose(roi_attention(maps, voxel_query, voxels), maps[[4, 1, 1, 4, 4]].mean(0))
    np.testing.assert_array_equal(roi_attention(maps, voxel_query, np.array([1, 2])), maps[1])  # one query: its map
    assert roi_attention(maps, voxel_query, np.array([3])) is None
    many = np.random.default_rng(1).random((40, 2, 2, 2))  # more queries than one chunk
    np.testing.assert_allclose(roi_attention(many, np.arange(40), np.arange(40)), many.mean(0))


def test_truth_routes_to_its_objects_and_attention_equal_to_it_scores_the_same(tmp_path: Path) -> None:
    table, _ = _routing_world(tmp_path, lambda m: np.full(m.shape, 1 / 16), lambda m: np.full(m.shape, 1 / 16))
    assert table.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert table.loc["lh.FFA-1", "truth_mass_ratio"] > 2.5  # the truth's pooling looks at the faces
    assert table.loc["lh.FFA-1", "truth_variability"] > 0.1  # wherever they are
    brain = load_brain(tmp_path / "ground_truth", "subj01")
    images, _ = render_many(world_scenes(SPEC)[0], SPEC.image_size, SPEC.image_size // 4)
    cats = visual_features(brain.visual, images)[1]
    truth = truth_maps(brain.readout, cats, CATEGORIES.index("face"), np.array([0, 1]), GRID)
    planted, _ = _routing_world(tmp_path, lambda m: truth, lambda m: np.full(m.shape, 1 / 16))
    assert planted.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(table.loc["lh.FFA-1", "truth_mass_ratio"], rel=2e-3)


def test_routing_scores_give_no_credit_to_uniform_attention(tmp_path: Path) -> None:
    table, _ = _routing_world(tmp_path, lambda m: np.full(m.shape, 1 / 16), lambda m: np.full(m.shape, 1 / 16))
    assert table.loc["lh.FFA-1", "mass_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert table.loc["lh.V1v", "distance"] == pytest.approx(table.loc["lh.V1v", "distance_uniform"], abs=1e-3)
    assert "mass_ratio_weighted" not in table  # an attention.h5 with one set of maps


def test_routing_scores_give_no_credit_to_attention_beside_the_object(tmp_path: Path) -> None:
    def beside(m: np.ndarray) -> np.ndarray:  # everywhere but the face patches
        m = (~m).astype(float)
        return m / m.sum((1, 2), keepdims=True)

    table, _ = _routing_world(tmp_path, beside, lambda m: np.full(m.shape, 1 / 16))
    assert table.loc["lh.FFA-1", "mass_ratio"] == 0.0
    assert table.loc["lh.FFA-1", "peak_on_object"] == 0.0


def test_routing_refuses_scenes_the_generator_did_not_make(tmp_path: Path) -> None:
    _routing_world(tmp_path, lambda m: np.full(m.shape, 1 / 16), lambda m: np.full(m.shape, 1 / 16))
    listed = json.loads((tmp_path / "ground_truth/scenes.json").read_text())
    listed[0]["objects"] = [{"category": "face", "cx": 0.123}]
    (tmp_path / "ground_truth/scenes.json").write_text(json.dumps(listed))
    with pytest.raises(BrainattError, match="differs from the generator"):
        object_masks(tmp_path / "ground_truth", np.array([0]), GRID)


def test_feature_cache_returns_rows_in_the_order_asked(tmp_path: Path) -> None:
    path = tmp_path / "feats.h5"
    ids = np.array([7, 3, 11, 5])
    spec = ModelSpec("backbone", "some/model", layers=(-1,))
    with features_writer(path, {}, ids, spec, (2, 2), "0123") as w:
        w.write(
            0,
            {
                "pooled": np.arange(4)[:, None] * np.ones((1, 3)),
                -1: np.arange(4)[:, None, None, None] * np.ones((1, 2, 2, 3)),
            },
        )
    cache = FeatureCache(path)
    assert cache.spec == spec and cache.fingerprint == "0123"
    assert cache.grid == (2, 2) and cache.layers == [-1]
    np.testing.assert_array_equal(cache.pooled(np.array([11, 7, 11]))[:, 0], [2, 0, 2])
    np.testing.assert_array_equal(cache.tokens(-1, np.array([5, 3]))[:, 0, 0, 0], [3, 1])
    with pytest.raises(BrainattError, match="not in the feature cache"):
        cache.pooled(np.array([4]))
    with pytest.raises(BrainattError, match="layer -2 not cached"):
        cache.tokens(-2, ids)


def test_transformer_settings_reach_the_model() -> None:
    sub = _subject()
    arch, _ = split_settings({"positions": False, "queries": "hemisphere", "heads": 2}, "transformer")
    model, names = build_model("transformer", arch, sub, GRID, 8)
    assert names == ["lh", "rh"] and model.layers[0].heads == 2
    assert not model.pos.any()
    model, _ = build_model("transformer", {"heads": 2}, sub, GRID, 8)
    assert model.pos.abs().sum() > 0
