"""BrainSCUBA: candidate scenes disjoint from the world and the kit, caption nouns, the voxel encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from brainatt.encoding.data import SubjectData
from brainatt.io import BrainattError
from brainatt.models.kit import kit_scenes
from brainatt.scuba.encoder import fit_voxel_encoder
from brainatt.scuba.nouns import named_categories, noun_shares, repeat_agreement
from brainatt.synth.candidates import candidate_scenes, used_seeds
from brainatt.synth.scenes import CATEGORY_WORDS
from brainatt.synth.world import WorldSpec, world_scenes

LEXICON = {k: list(v) for k, v in CATEGORY_WORDS.items()}


def test_candidates_avoid_the_worlds_and_the_kits_scenes() -> None:
    spec = WorldSpec(seed=3, n_subjects=1, n_train=40, n_shared=10)
    world, _ = world_scenes(spec)
    _, _, kit = kit_scenes(30, seed=5, image_size=16)
    taken = used_seeds(spec.seed, spec.n_images, 5, 30)
    assert taken == {s.seed for s in world} | {s.seed for s in kit}
    scenes, _ = candidate_scenes(200, seed=0, exclude=taken)
    seeds = [s.seed for s in scenes]
    assert len(scenes) == 200 and len(set(seeds)) == 200 and not set(seeds) & taken
    first, _ = candidate_scenes(1, seed=0, exclude=set())
    clash, dropped = candidate_scenes(1, seed=0, exclude={first[0].seed})  # a clash is dropped and counted
    assert dropped == 1 and clash[0].seed != first[0].seed


def test_nouns_map_captions_to_categories_and_roi_shares() -> None:
    named = named_categories(["a face on the left and a pizza in a kitchen", "some fruits", "an empty scene"], LEXICON)
    assert named.loc[0, ["face", "food", "place"]].all() and not named.loc[0, "body"]
    assert list(named["first"]) == ["face", "food", "none"]
    caps = pd.DataFrame({
        "voxel": [0, 0, 1, 1, 2, 2], "roi": ["FFA", "FFA", "FFA", "FFA", "PPA", "PPA"],
        "repeat": [0, 1] * 3, "nc": [30, 30, 30, 30, 5, 5],
        "caption": ["a face", "a large face", "a face", "a body", "a street", "a kitchen"],
    })  # fmt: skip
    shares = noun_shares(caps, LEXICON).set_index("roi")
    assert shares.loc["FFA", "face"] == 0.75 and shares.loc["PPA", "place"] == 1.0
    assert shares.loc["FFA", "n_voxels"] == 2
    agree = repeat_agreement(caps, LEXICON, min_nc=20)  # voxel 1 disagrees; voxel 2 is below NC 20%
    assert {k: agree[k] for k in ("shared", "same_set", "first", "n_voxels")} == {
        "shared": 0.5, "same_set": 0.5, "first": 0.5, "n_voxels": 2
    }  # fmt: skip
    caps.loc[3, "caption"] = "a body and a face"  # voxel 1 now names face in both repeats, but not first in one
    agree = repeat_agreement(caps, LEXICON, min_nc=20)
    assert {k: agree[k] for k in ("shared", "same_set", "first")} == {"shared": 1.0, "same_set": 0.5, "first": 0.5}
    # chance: repeats paired across voxels; with every caption naming a face it is 1, with none shared it is 0
    assert agree["shared_chance"] == 1.0
    caps["caption"] = ["a face", "a body", "a pizza", "a street", "a face", "a body"]
    caps["nc"] = 30
    assert repeat_agreement(caps, LEXICON, min_nc=20)["shared_chance"] == 0.0
    with pytest.raises(BrainattError, match="lexicon"):
        named_categories(["x"], {"face": []})


def test_voxel_encoder_recovers_known_weights(tmp_path) -> None:
    from brainatt.contracts.features import features_writer
    from brainatt.models.spec import ModelSpec

    rng = np.random.default_rng(0)
    n, d, v = 600, 12, 30
    raw = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(2, 6, (n, 1)).astype(np.float32)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    w = rng.normal(size=(v, d)).astype(np.float32)
    y = unit @ w.T + 0.05 * rng.normal(size=(n, v)).astype(np.float32)
    path = tmp_path / "clip.h5"
    with features_writer(path, {}, np.arange(n), ModelSpec(role="clip", name="x"), None, "fp") as fw:
        fw.write(0, {"pooled": raw})
    sub = SubjectData(
        path=tmp_path, train_ids=np.arange(500), train_y=y[:500], test_ids=np.arange(500, n), test_y=y[500:],
        nc=np.full(v, 90.0), roi=np.array(["FFA-1"] * v), hemi=np.array(["lh"] * v),
        family=np.array(["category"] * v), ijk=None,
    )  # fmt: skip
    enc = fit_voxel_encoder(sub, path)
    cos = (enc.weights * w).sum(1) / np.linalg.norm(enc.weights, axis=1) / np.linalg.norm(w, axis=1)
    assert np.median(cos) > 0.99 and np.median(enc.r) > 0.95
    np.testing.assert_allclose(enc.predict(raw[500:]), y[500:], atol=0.3)


def test_candidates_stream_with_their_repeat_and_must_share_the_encoders_clip(tmp_path) -> None:
    from brainatt.contracts.candidates import candidates_writer
    from brainatt.contracts.features import features_writer
    from brainatt.models.spec import ModelSpec
    from brainatt.scuba.pipeline import candidate_chunks
    from brainatt.scuba.projection import subset_labels

    raw = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32) * 3
    clip = ModelSpec(role="clip", name="x")
    feats = tmp_path / "clip.h5"
    with features_writer(feats, {}, np.arange(2), clip, None, "fp") as fw:
        fw.write(0, {"pooled": raw[:2]})
    cand = tmp_path / "cand.h5"
    with candidates_writer(cand, {}, 4, "folder", "imgs", clip.to_json()) as w:
        w.add(raw, [str(i) for i in range(23)])
    chunks, n = candidate_chunks(cand, feats, repeats=3, seed=1, chunk=10)
    got = list(chunks())
    assert n == 23 and [len(d) for d, _, _ in got] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([lab for _, _, lab in got]), subset_labels(23, 3, seed=1))
    np.testing.assert_allclose(np.concatenate([nrm for _, nrm, _ in got]), np.linalg.norm(raw, axis=1), rtol=1e-6)
    with candidates_writer(cand, {}, 4, "folder", "imgs", ModelSpec(role="clip", name="other").to_json()) as w:
        w.add(raw, [str(i) for i in range(23)])
    with pytest.raises(BrainattError, match="re-embed"):
        candidate_chunks(cand, feats, repeats=3, seed=1, chunk=10)


def test_train_captioner_on_image_caption_pairs_checkpoints_and_resumes(tmp_path, caplog) -> None:
    from brainatt.cli import main
    from brainatt.contracts.stimuli import stimuli_writer
    from brainatt.models.captioner import PrefixCaptioner

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    stim = tmp_path / "images.h5"
    with stimuli_writer(stim, {}, np.arange(12), (16, 16, 3)) as w:
        w.images[:] = images
        w.captions([["a face on the left", "a face"] if i % 2 else ["a pizza in a kitchen"] for i in range(12)])
    spec = '{"vocab_size": 300, "checkpoint_every": 1, "captioner": {"steps": 2, "batch": 4, "width": 32, "layers": 1}}'
    args = ["train-captioner", "--stimuli", str(stim), "--spec", spec, "--out", str(tmp_path / "cap")]
    assert main(args) == 0
    assert (tmp_path / "cap/checkpoints/captioner.pt").exists()
    with caplog.at_level("INFO"):
        assert main([*args[:-4], "--spec", spec.replace('"steps": 2', '"steps": 3'), *args[-2:]]) == 0
    assert "resuming at step 2" in caplog.text
    model = PrefixCaptioner.from_pretrained(tmp_path / "cap/captioner")
    assert len(model.generate(torch.zeros(2, model.clip_dim), num_beams=2, max_new_tokens=4)) == 2


def _tiny_gpt2(path, captions: list[str]) -> None:
    """A 'pretrained' GPT-2 folder as transformers saves one; its tokenizer has no padding token, like GPT-2's."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(captions * 5, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(path)


def test_captioner_fine_tunes_a_pretrained_gpt2_and_resumes_exactly(tmp_path, monkeypatch, caplog) -> None:
    import json

    from transformers import GPT2LMHeadModel

    import brainatt.models.kit as kit
    from brainatt.cli import main
    from brainatt.contracts.stimuli import stimuli_writer
    from brainatt.models.loading import load_captioner
    from brainatt.models.spec import ModelSpec

    per_image = [["a face on the left", "a face"] if i % 2 else ["a pizza in a kitchen"] for i in range(10)]
    stim = tmp_path / "images.h5"
    with stimuli_writer(stim, {}, np.arange(10), (16, 16, 3)) as w:
        w.images[:] = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
        w.captions(per_image)
    gpt2 = tmp_path / "gpt2"
    _tiny_gpt2(gpt2, [c for caps in per_image for c in caps])
    spec = json.dumps({"checkpoint_every": 2, "captioner": {"steps": 6, "batch": 4, "prefix_len": 2}})

    def train(out: str) -> int:
        return main(["train-captioner", "--stimuli", str(stim), "--gpt2", str(gpt2), "--spec", spec, "--out", out])

    assert train(str(tmp_path / "whole")) == 0
    schedule = kit._schedule

    def interrupt_at_step_4(step: int, total: int, warmup: int = 100) -> float:
        if step == 4:
            raise KeyboardInterrupt
        return schedule(step, total, warmup)

    monkeypatch.setattr(kit, "_schedule", interrupt_at_step_4)
    assert train(str(tmp_path / "resumed")) == 130  # an interrupt: the command's exit status
    monkeypatch.setattr(kit, "_schedule", schedule)
    assert (tmp_path / "resumed/checkpoints/captioner.pt").exists() and not (tmp_path / "resumed/captioner").exists()
    with caplog.at_level("INFO"):
        assert train(str(tmp_path / "resumed")) == 0
    assert "resuming at step 4" in caplog.text

    def load(run: str):
        return load_captioner(ModelSpec(role="captioner", name=str(tmp_path / run / "captioner"), source="captioner"))

    whole, resumed = load("whole"), load("resumed")
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    start = GPT2LMHeadModel.from_pretrained(gpt2).transformer.h[0].mlp.c_fc.weight
    assert not torch.equal(start, whole.lm.transformer.h[0].mlp.c_fc.weight)  # GPT-2 itself was fine-tuned
    assert whole.tokenizer.pad_token == whole.tokenizer.eos_token and whole.prefix_len == 2
    assert len(whole.generate(torch.zeros(2, whole.clip_dim), num_beams=2, max_new_tokens=4)) == 2


def _subject(nc: list[float], roi: list[str]) -> SubjectData:
    v = len(nc)
    return SubjectData(
        path=None, train_ids=np.arange(2), train_y=np.zeros((2, v)), test_ids=np.arange(2), test_y=np.zeros((2, v)),
        nc=np.asarray(nc, float), roi=np.asarray(roi), hemi=np.array(["lh"] * v), family=np.array(["x"] * v),
        ijk=None,
    )  # fmt: skip


def test_captioned_voxels_keep_the_noise_ceiling_then_the_best_predicted_per_roi() -> None:
    from brainatt.scuba.pipeline import captioned_voxels

    sub = _subject([50, 10, 40, 30, 25, 5], ["FFA", "FFA", "FFA", "PPA", "PPA", "PPA"])
    r = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.9])
    assert list(captioned_voxels(sub, r, None, 20)) == [0, 2, 3, 4]
    assert list(captioned_voxels(sub, r, 1, 20)) == [2, 4]  # voxels 1 and 5 predict best but fail NC 20%
    assert list(captioned_voxels(sub, r, 1)) == [1, 5]
    with pytest.raises(BrainattError, match="caption_min_nc"):
        captioned_voxels(sub, r, None, 60)


def test_summary_scores_category_wins_synthesis_wins_and_braindive_images() -> None:
    from brainatt.viz.scuba import braindive_for, category_wins, compare_sets, kept_images, synthesis_wins

    caps = pd.DataFrame({
        "voxel": [0, 1, 2, 3], "roi": ["FFA", "OFA", "PPA", "V1"], "category": ["face", "face", "place", None]
    })  # fmt: skip
    by_roi = pd.DataFrame({
        "roi": ["FFA", "OFA", "PPA", "V1"], "face": [1.0, 1.0, 0.5, 0.2], "place": [0.3, 0.2, 1.0, 1.0],
        "word": [0.0, 0.0, 0.1, 0.6],
    })  # fmt: skip
    wins = category_wins(by_roi, {"floc-faces": "face", "floc-places": "place"}, caps)
    assert wins["FFA"]["strict_win"] and wins["FFA"]["best_other"] == "PPA"  # OFA, also a face ROI, is no rival
    assert not wins["PPA"]["strict_win"] and wins["PPA"]["best_other_share"] == 1.0  # a tie is not a win
    assert wins["PPA"]["specificity"] == 0.7 and wins["PPA"]["best_other_specificity"] == 0.6
    assert wins["PPA"]["specificity_win"] and wins["PPA"]["best_other_by_specificity"] == "V1"
    synth = pd.DataFrame({
        "source": ["face", "face", "place", "place"], "target": ["face", "place"] * 2,
        "predicted": [1.0, 0.0, 0.5, 2.0], "true": [0.1, 0.0, 0.5, 2.0],
    })  # fmt: skip
    out = synthesis_wins(synth)
    assert out["predicted"] == {"wins": ["face", "place"], "n": 2, "of": 2} and out["true"]["wins"] == ["place"]
    dropped = pd.DataFrame({"source": ["face"] * 2, "target": ["face", "place"], "predicted": [-9.0, 9.0],
                            "true": [-9.0, 9.0], "kept": False})  # fmt: skip
    pooled = pd.concat([synth.assign(kept=True), dropped], ignore_index=True)
    assert kept_images(pooled).equals(synth.assign(kept=True)) and kept_images(synth) is synth
    assert synthesis_wins(kept_images(pooled)) == out and synthesis_wins(pooled)["true"]["n"] == 0
    natural = synth.assign(source="natural:" + synth["target"], predicted=3.0)
    table = compare_sets(synth, natural).set_index("target")
    assert table.loc["face", "captions_true"] == 0.1 and table.loc["face", "best_other_captions_true"] == 0.5
    assert table.loc["place", "natural_top_predicted"] == 3.0
    dive = pd.DataFrame({
        "subject": ["subj01", "subj01", "subj02"], "target": ["faces", "faces", "faces"], "kept": [True, False, True],
        "image": ["a.png", "b.png", "c.png"], "true_faces": [1.5, 0.2, 0.1],
    })  # fmt: skip
    kept = braindive_for(dive, "subj01", {"floc-faces": "face"})
    assert kept.to_dict("records") == [{"category": "face", "image": "a.png", "score": 1.5, "score_kind": "true"}]
    assert braindive_for(None, "subj01", {}).empty
