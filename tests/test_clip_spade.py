"""CLIP-modulated SPADE (model.clip_dim > 0) and its style bank: a new CLIP model computes exactly the
plain SPADE with the same weights, plain checkpoints fine-tune into one (only the CLIP keys may be
missing), gradients reach every head, the bank is deterministic and survives a checkpoint, and a text
embedding is projected onto the right training images. Random embeddings stand in for CLIP's.
Inference: --clip-style / --clip-reference / --clip-text choose the embedding each label is rendered
with, and every wrong choice is one error naming the flag."""
import numpy as np
import pytest

from jspade.checkpoint import CheckpointError, read_checkpoint, state_arrays, write_checkpoint
from jspade.config import ModelConfig
from jspade.data.semantics import semantics_for
from jspade.models.base import trainable_parameters
from jspade.models.clip_modulation import ClipHead, is_clip_key
from jspade.models.spade_model import SPADEModel, load_for_fine_tuning
from jspade.runtime import jt
from jspade.style_bank import StyleBank, build_style_bank, project_text, spherical_kmeans
from jspade.train.optim import Adam

CLIP_DIM = 24


def options(clip_dim=CLIP_DIM, **kw):
    base = dict(label_nc=6, crop_size=64, aspect_ratio=2.0, ngf=4, ndf=4, num_D=1, n_layers_D=2, use_vae=True,
                z_dim=8, clip_dim=clip_dim, no_vgg_loss=True)
    return ModelConfig(**{**base, **kw})


def inputs(opt, n=2, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((n, 1, 32, 64), np.int32)
    for i in range(n):
        for _ in range(5):
            y, x = rng.integers(32), rng.integers(64)
            label[i, 0, y:y + rng.integers(4, 16), x:x + rng.integers(4, 30)] = rng.integers(opt.label_nc)
    sem = semantics_for(opt, jt.array(label))
    z = jt.array(rng.standard_normal((n, opt.z_dim)).astype(np.float32))
    clip = rng.standard_normal((n, opt.clip_dim)).astype(np.float32) if opt.clip_dim else None
    return sem, z, clip


def plain_and_clip(**kw):
    """A plain SPADE model and a new CLIP model holding the plain one's weights (CLIP keys at their start)."""
    jt.set_global_seed(3)
    plain = SPADEModel(options(0, **kw), with_vgg=False)
    clip = SPADEModel(options(**kw), with_vgg=False)
    filled = load_for_fine_tuning(clip, {name: state_arrays(net) for name, net in plain.networks().items()})
    return plain, clip, filled


def clip_keys(net):
    return sorted(k for k in net.state_dict() if is_clip_key(k))


def test_clip_dim_zero_adds_nothing_and_clip_model_adds_only_clip_keys():
    plain, clip, filled = plain_and_clip()
    assert clip_keys(plain.netG) == []
    assert not plain.uses_clip and clip.uses_clip
    plain_keys = set(plain.netG.state_dict())
    assert set(clip.netG.state_dict()) - plain_keys == set(clip_keys(clip.netG))
    assert plain_keys <= set(clip.netG.state_dict())
    assert sorted(filled) == ["G." + k for k in clip_keys(clip.netG)]
    # every SPADE (shortcuts included) and the first feature map have a head; one mapping network
    spade_layers = [k[: -len(".mlp_gamma_beta.weight")] for k in plain_keys if k.endswith(".mlp_gamma_beta.weight")]
    assert any(".norm_s" in k for k in spade_layers)
    for layer in spade_layers:
        assert f"{layer}.clip_head.clip_affine.weight" in clip.netG.state_dict()
    assert "clip_head_fc.clip_affine.weight" in clip.netG.state_dict()
    assert [k for k in clip_keys(clip.netG) if k.startswith("clip_mapping.")] == [
        "clip_mapping.fc_0.bias", "clip_mapping.fc_0.weight", "clip_mapping.fc_1.bias", "clip_mapping.fc_1.weight"]
    # D and E are untouched by CLIP
    assert clip_keys(clip.netD) == [] and clip_keys(clip.netE) == []


def test_heads_start_at_zero_after_weight_init_and_mapping_is_not_zero():
    jt.set_global_seed(0)
    model = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    state = state_arrays(model.netG)
    heads = [k for k in state if ".clip_affine." in k]
    assert len(heads) == 2 * sum(isinstance(m, ClipHead) for m in model.netG.modules())
    assert all(not state[k].any() for k in heads)
    assert np.abs(state["clip_mapping.fc_0.weight"]).std() > 0.1  # He init, not the project's gain 0.02


@pytest.mark.parametrize("use_vae", [True, False])
def test_new_clip_model_computes_plain_spade(use_vae):
    plain, clip, _ = plain_and_clip(use_vae=use_vae)
    sem, z, embedding = inputs(clip.opt)
    z = z if use_vae else None
    for mode in ("train", "eval"):
        for m in (plain, clip):
            getattr(m, mode)()
        with jt.no_grad():
            expected = plain.netG(sem, z=z).numpy()
            got = clip.netG(sem, z=z, clip=embedding).numpy()
        assert np.abs(expected).max() > 0 and (np.abs(expected) < 0.99).mean() > 0.5  # not saturated
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=mode)


def non_zero_step(model, sem, z, embedding, seed=0):
    """One Adam step of G on a loss that depends on every output pixel: moves every head off zero."""
    target = jt.array(np.random.default_rng(seed).uniform(-1, 1, (sem.shape[0], 3, 32, 64)).astype(np.float32))
    params = trainable_parameters(model.netG)
    opt = Adam(params, lr=1e-2, betas=(0.0, 0.9))
    opt.step(((model.netG(sem, z=z, clip=embedding) - target) ** 2).mean())
    return target, params


def test_gradients_reach_every_head_and_the_mapping_after_a_step():
    jt.set_global_seed(0)
    model = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    model.train()
    sem, z, embedding = inputs(model.opt)
    target, _ = non_zero_step(model, sem, z, embedding)
    names = clip_keys(model.netG)
    named = model.netG.state_dict()
    loss = ((model.netG(sem, z=z, clip=embedding) - target) ** 2).mean()
    grads = jt.grad(loss, [named[k] for k in names if k != "clip_mean"])
    dead = [k for k, g in zip([k for k in names if k != "clip_mean"], grads) if not np.abs(g.numpy()).max() > 0]
    assert dead == []
    assert all(np.abs(named[k].numpy()).max() > 0 for k in names if ".clip_affine.weight" in k)
    # after the step the embedding matters: two styles give two images
    model.eval()
    with jt.no_grad():
        a = model.netG(sem, z=z, clip=embedding).numpy()
        b = model.netG(sem, z=z, clip=embedding[::-1].copy()).numpy()
    assert np.abs(a - b).max() > 1e-4


def test_no_embedding_means_clip_mean_and_one_embedding_serves_the_batch():
    jt.set_global_seed(0)
    model = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    sem, z, embedding = inputs(model.opt)
    non_zero_step(model, sem, z, embedding)
    model.netG.clip_mean.update(jt.array(embedding[0]))
    model.eval()
    with jt.no_grad():
        default = model.netG(sem, z=z).numpy()
        given = model.netG(sem, z=z, clip=np.stack([embedding[0]] * 2)).numpy()
        one = model.netG(sem, z=z, clip=embedding[0]).numpy()
        via_model = model.generate(sem, z=z).numpy()
    np.testing.assert_allclose(default, given, atol=1e-6)
    np.testing.assert_allclose(one, given, atol=1e-6)
    np.testing.assert_allclose(via_model, given, atol=1e-6)


def test_fine_tuning_from_plain_spade_fails_on_any_other_missing_or_extra_key():
    jt.set_global_seed(1)
    plain = SPADEModel(options(0), with_vgg=False)
    clip = SPADEModel(options(), with_vgg=False)
    networks = {name: state_arrays(net) for name, net in plain.networks().items()}
    broken = {**networks, "G": {k: v for k, v in networks["G"].items() if k != "up_0.norm_s.mlp_gamma.weight"}}
    with pytest.raises(CheckpointError, match=r"missing \(1\): up_0\.norm_s\.mlp_gamma\.weight"):
        load_for_fine_tuning(clip, broken, source="plain.pkl")
    extra = {**networks, "G": {**networks["G"], "clip_mapping.fc_9.weight": np.zeros((2, 2), np.float32)}}
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): clip_mapping\.fc_9\.weight"):
        load_for_fine_tuning(clip, extra, source="plain.pkl")
    # a CLIP checkpoint's keys are used, not replaced by the start values
    filled = load_for_fine_tuning(clip, networks)
    assert filled and all(".clip_" in k or k.startswith("G.clip_") for k in filled)
    donor = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    donor_state = state_arrays(donor.netG)
    donor_state["clip_head_fc.clip_affine.bias"] = np.full_like(donor_state["clip_head_fc.clip_affine.bias"], 0.5)
    assert load_for_fine_tuning(clip, {"G": donor_state}, names=("G",)) == []
    assert np.all(clip.netG.clip_head_fc.clip_affine.bias.numpy() == 0.5)
    # and the reverse (a CLIP checkpoint into a plain model) is refused: its CLIP keys are unexpected
    with pytest.raises(CheckpointError, match="unexpected"):
        load_for_fine_tuning(plain, {"G": donor_state}, names=("G",))


def test_bad_clip_options_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="clip_dim must be a whole number >= 0"):
        SPADEModel(options(-1), with_discriminator=False, with_vgg=False)
    with pytest.raises(ValueError, match="needs netG 'spade'"):
        SPADEModel(options(netG="tsit", crop_size=128, num_upsampling_layers="more"), with_discriminator=False,
                   with_vgg=False)
    jt.set_global_seed(0)
    model = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    sem, z, embedding = inputs(model.opt)
    with pytest.raises(ValueError, match=r"\[2, 24\]"):
        model.netG(sem, z=z, clip=embedding[:, :10])
    with pytest.raises(ValueError, match="clip_dim 0"):
        SPADEModel(options(0), with_discriminator=False, with_vgg=False).generate(sem, z=z, clip=embedding)


# ---- style bank ----------------------------------------------------------------------------------

def clustered(k=4, per=(9, 7, 5, 3), dim=CLIP_DIM, spread=0.15, seed=0):
    """Embeddings around k orthogonal directions, `per[j]` of them around direction j, and their stems."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:k]
    rows, stems, truth = [], [], []
    for j in range(k):
        for i in range(per[j]):
            rows.append((directions[j] + spread * rng.standard_normal(dim) / np.sqrt(dim)) * rng.uniform(0.5, 3))
            stems.append(f"img_{j}_{i}")
            truth.append(j)
    return np.array(rows, np.float32), stems, np.array(truth), directions


def test_bank_finds_planted_clusters_ordered_by_size():
    x, stems, truth, directions = clustered()
    bank = build_style_bank(x, stems, "ab" * 32, k=4)
    assert bank.k == 4 and bank.dim == CLIP_DIM
    assert bank.counts.tolist() == [9, 7, 5, 3]  # centre 0 the commonest
    for j in range(4):
        assert bank.centres[j] @ directions[j] > 0.98
        assert bank.medoid_stems[j].startswith(f"img_{j}_")
        assert bank.nearest_centre(directions[j]) == j
    np.testing.assert_allclose(np.linalg.norm(bank.centres, axis=1), 1, atol=1e-6)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(bank.mean, unit[np.argsort(stems)].mean(axis=0), atol=1e-6)
    assert bank.embeddings.dtype == np.float16 and bank.stems == sorted(stems)
    # k above the distinct points is clamped
    assert build_style_bank(x[:3], stems[:3], "", k=16).k == 3


def test_bank_is_deterministic_and_independent_of_input_order():
    x, stems, _, _ = clustered(per=(6, 6, 6, 6), spread=1.5, seed=5)  # overlapping clusters: init matters
    a = build_style_bank(x, stems, "sha", k=5, seed=0).to_payload()
    b = build_style_bank(x, stems, "sha", k=5, seed=0).to_payload()
    order = np.random.default_rng(1).permutation(len(stems))
    c = build_style_bank(x[order], [stems[i] for i in order], "sha", k=5, seed=0).to_payload()
    for other in (b, c):
        assert a.keys() == other.keys()
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(other[key]), err_msg=key)
    centres, assignment = spherical_kmeans(x, 5, seed=0)
    assert centres.shape == (5, CLIP_DIM) and len(set(assignment.tolist())) == 5


def test_bank_round_trips_through_a_checkpoint(tmp_path):
    x, stems, _, _ = clustered()
    bank = build_style_bank(x, stems, "0123" * 16, k=3, seed=7)
    path = write_checkpoint(tmp_path / "model.pkl", {"format": "jspade-checkpoint-1", "networks": {},
                                                      "style_bank": bank.to_payload()})
    back = StyleBank.from_payload(read_checkpoint(path)["style_bank"], source=str(path))
    for field in ("centres", "counts", "mean", "embeddings"):
        np.testing.assert_array_equal(getattr(back, field), getattr(bank, field))
        assert getattr(back, field).dtype == getattr(bank, field).dtype
    assert (back.stems, back.medoid_stems, back.weights_sha256, back.seed) == \
        (bank.stems, bank.medoid_stems, bank.weights_sha256, 7)
    bad = {**bank.to_payload(), "counts": np.zeros(2, np.int64)}
    with pytest.raises(ValueError, match="model.pkl: the style bank's arrays disagree"):
        StyleBank.from_payload(bad, source="model.pkl")
    with pytest.raises(ValueError, match="model.pkl: not a usable style bank"):
        StyleBank.from_payload({"format": "x"}, source="model.pkl")


def test_text_projection_picks_the_right_centre():
    x, stems, _, directions = clustered()
    bank = build_style_bank(x, stems, "sha", k=4)
    rng = np.random.default_rng(9)
    # a text embedding sits apart from all images: a large shared offset (orthogonal to the clusters)
    # plus a small pull toward cluster 2, the third largest
    offset = np.linalg.qr(np.concatenate([directions, rng.standard_normal((1, CLIP_DIM))]).T)[0][:, -1]
    text = 3.0 * offset + 0.6 * directions[2]
    assert max(float(text @ d) / np.linalg.norm(text) for d in directions) < 0.3  # far from every image
    embedding, chosen, weights = project_text(text, bank, top_k=4)
    assert all(s.startswith("img_2_") for s in chosen) and len(chosen) == 4
    assert bank.nearest_centre(embedding) == 2 and embedding @ bank.centres[2] > 0.95
    assert np.isclose(weights.sum(), 1) and np.all(np.diff(weights) <= 1e-7)  # most similar first
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        project_text(text, bank, top_k=0)
    with pytest.raises(ValueError, match=r"holds \(24,\)"):
        project_text(text[:5], bank)


def test_model_turns_a_style_choice_into_an_embedding():
    jt.set_global_seed(0)
    model = SPADEModel(options(), with_discriminator=False, with_vgg=False)
    x, stems, _, _ = clustered()
    bank = build_style_bank(x, stems, "sha", k=4)
    model.set_style_bank(bank)
    np.testing.assert_array_equal(model.netG.clip_mean.numpy(), bank.mean)  # "no style" is the bank mean
    np.testing.assert_array_equal(model.clip_embedding(), bank.mean)
    np.testing.assert_array_equal(model.clip_embedding("mean"), bank.mean)
    np.testing.assert_array_equal(model.clip_embedding(2), bank.centres[2])
    np.testing.assert_array_equal(model.clip_embedding(x[0]), x[0])
    with pytest.raises(ValueError, match=r"centres 0\.\.3"):
        model.clip_embedding(4)
    with pytest.raises(ValueError, match=r"takes \(24,\)"):
        model.clip_embedding(x[0][:3])
    with pytest.raises(ValueError, match="clip_dim 0"):
        SPADEModel(options(0), with_discriminator=False, with_vgg=False).clip_embedding(0)


# ---- training --------------------------------------------------------------------------------------

def clip_run_config(output_dir, data_root, **train):
    """tiny_config as a CLIP model, its data and a feature cache of random embeddings made first."""
    from jspade.clip.features import DEFAULT_NAME, write_feature_cache
    from jspade.data.synthetic import write_synthetic_dataset
    from tiny_models import tiny_config
    cfg = tiny_config(output_dir, data_root, **train)
    cfg.model.clip_dim = CLIP_DIM
    if not (data_root / DEFAULT_NAME).exists():
        stems = write_synthetic_dataset(data_root, cfg.data.synthetic_n, size=cfg.model.image_size, seed=0)
        features = np.random.default_rng(0).standard_normal((len(stems), CLIP_DIM)).astype(np.float32)
        write_feature_cache(data_root / DEFAULT_NAME, stems, features, ["0" * 64] * len(stems), "cd" * 32,
                            "clip.pt", str(data_root))
    return cfg


def test_clip_training_resumes_exactly_and_checkpoints_hold_the_bank(tmp_path):
    from tiny_models import straight_and_resumed_runs
    straight, resumed = straight_and_resumed_runs(clip_run_config, tmp_path, stop_at=2, total=4)
    for k, v in straight.model.netG.state_dict().items():
        np.testing.assert_allclose(resumed.model.netG.state_dict()[k].numpy(), v.numpy(), atol=1e-6, err_msg=k)
    heads = [v.numpy() for k, v in straight.model.netG.state_dict().items() if ".clip_affine.weight" in k]
    assert heads and all(np.abs(h).max() > 0 for h in heads)  # training moved every head
    for name in ("latest.pkl", "iter_0000004.pkl"):
        payload = read_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / name)
        bank = StyleBank.from_payload(payload["style_bank"], source=name)
        assert bank.weights_sha256 == "cd" * 32 and len(bank.stems) == 16
        np.testing.assert_array_equal(payload["networks"]["G"]["clip_mean"], bank.mean)


def test_clip_batches_use_the_cache_by_stem_and_sometimes_the_mean(tmp_path):
    from jspade.clip.features import DEFAULT_NAME, FeatureCacheError, load_feature_cache, normalize
    from jspade.train.trainer import Trainer
    data = tmp_path / "data"
    trainer = Trainer(clip_run_config(tmp_path / "out", data), progress=False)
    cache = load_feature_cache(data / DEFAULT_NAME)
    stems = cache.stems[3:7]
    np.testing.assert_allclose(trainer.clip_inputs({"stem": stems}, no_style_p=0.0).numpy(),
                               normalize(np.stack([cache[s] for s in stems])), atol=1e-6)
    mean = trainer.model.style_bank.mean
    np.testing.assert_array_equal(trainer.clip_inputs({"stem": stems}, no_style_p=1.0).numpy(), np.stack([mean] * 4))
    # over many iterations about one embedding in ten is the mean, and an iteration always draws the same
    hits = 0
    for it in range(100):
        trainer.schedule.pos.iteration = it
        drawn = trainer.clip_inputs({"stem": stems}).numpy()
        np.testing.assert_array_equal(trainer.clip_inputs({"stem": stems}).numpy(), drawn)
        hits += int(np.all(drawn == mean, axis=1).sum())
    assert 20 <= hits <= 70, hits  # 400 draws at p = 0.1
    (data / DEFAULT_NAME).unlink()
    cfg = clip_run_config(tmp_path / "out2", tmp_path / "other")  # makes other/'s cache, not data/'s
    cfg.data.root, cfg.data.dataset = str(data), "landscape"  # (synthetic data would get a demo cache)
    with pytest.raises(FeatureCacheError, match="scripts/clip_features.py"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "out2").exists()  # refused before the run folder was made


def test_a_synthetic_clip_run_makes_its_cache_with_the_random_clip_and_says_so(tmp_path, capsys):
    from jspade.clip.features import DEFAULT_NAME, load_feature_cache
    from jspade.train.trainer import Trainer
    from tiny_models import tiny_config
    cfg = tiny_config(tmp_path / "out", tmp_path / "data", max_iters=1)
    cfg.model.clip_dim = 512  # the random-weight CLIP's
    Trainer(cfg, progress=False)
    cache = load_feature_cache(tmp_path / "data" / DEFAULT_NAME)
    assert cache.weights == "random:0" and len(cache.stems) == cfg.data.synthetic_n
    said = "".join(capsys.readouterr())
    assert "making the synthetic data's CLIP feature cache" in said and "RANDOM weights" in said
    cfg.train.name = "again"
    Trainer(cfg, progress=False)  # the cache is complete: reused, and the warning comes again
    said = "".join(capsys.readouterr())
    assert "making" not in said and "RANDOM weights" in said


# ---- inference: --clip-style / --clip-reference / --clip-text ----------------------------------------

@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """tiny_models.tiny_clip_checkpoint (a CLIP model with a 4-centre bank over the random:0 CLIP's
    embeddings of 12 synthetic photos), and a folder of 3 of its labels."""
    import shutil
    from tiny_models import tiny_clip_checkpoint
    root = tmp_path_factory.mktemp("clip_ckpt")
    ckpt, data, bank = tiny_clip_checkpoint(root)
    labels = root / "labels"
    labels.mkdir()
    for stem in bank.stems[:3]:
        shutil.copy(data / "labels" / f"{stem}.png", labels / f"{stem}.png")
    return ckpt, data, bank, labels


def rendered(folder):
    from PIL import Image
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def test_clip_style_centres_render_differently_and_repeatably(tmp_path, clip_checkpoint):
    from jspade.inference import ClipChoice, RenderOptions, render_folder
    ckpt, _, bank, labels = clip_checkpoint
    lines = []
    base = RenderOptions(size=(64, 32), report=lines.append)
    outs = {}
    for name, choice in [("mean", None), ("c0", ClipChoice(centre=0)), ("c1", ClipChoice(centre=1)),
                         ("c0_again", ClipChoice(centre=0))]:
        assert render_folder(labels, ckpt, tmp_path / name, base, clip=choice)[0] == 3
        outs[name] = rendered(tmp_path / name)
    assert outs["c0"].keys() == outs["mean"].keys() and len(outs["c0"]) == 3
    for key in outs["c0"]:
        np.testing.assert_array_equal(outs["c0"][key], outs["c0_again"][key])
        assert np.abs(outs["c0"][key].astype(int) - outs["c1"][key]).max() > 0
        assert np.abs(outs["c0"][key].astype(int) - outs["mean"][key]).max() > 0
    assert any(f"medoid {bank.medoid_stems[1]}" in line for line in lines)


def test_clip_reference_forms_give_each_label_its_photos_embedding(tmp_path, clip_checkpoint):
    import json
    import shutil
    from jspade.inference import ClipChoice, clip_embeddings_for, list_labels, load_generator, render_folder
    ckpt, data, bank, labels = clip_checkpoint
    model, _ = load_generator(ckpt)
    paths = list_labels(labels)
    imgs = data / "imgs"
    photo_of = {p: next(imgs.glob(f"{bank.stems[-1 - i]}.*")) for i, p in enumerate(paths)}  # other scenes

    def stored(photo):  # the bank keeps every training photo's unit embedding (float16)
        return bank.embeddings[bank.stems.index(photo.stem)].astype(np.float32)

    one = photo_of[paths[0]]
    folder = tmp_path / "refs"
    folder.mkdir()
    for p, photo in photo_of.items():
        shutil.copy(photo, folder / f"{p.stem}{photo.suffix}")
    mapping = tmp_path / "label_to_img.json"
    mapping.write_text(json.dumps({p.name: photo_of[p].name for p in paths}))
    for reference, expected in [(one, {p: one for p in paths}), (folder, photo_of), (mapping, photo_of)]:
        choice = ClipChoice(reference=reference, weights="random:0")
        embeddings, photos = clip_embeddings_for(model, ckpt, choice, paths, style_root=imgs)
        assert sorted(photos) == paths
        for p in paths:
            np.testing.assert_allclose(embeddings[p], stored(expected[p]), atol=2e-3, err_msg=str(reference))
    # the photos also serve --match-histogram
    assert render_folder(labels, ckpt, tmp_path / "out", size=(64, 32), match_histogram=True,
                         clip=ClipChoice(reference=folder, weights="random:0"))[0] == 3


def test_clip_text_is_projected_onto_training_images_and_reports_them(clip_checkpoint):
    from jspade.clip.features import encode_text
    from jspade.clip.weights import tiny_random_clip
    from jspade.inference import ClipChoice, clip_embeddings_for, list_labels, load_generator
    ckpt, _, bank, labels = clip_checkpoint
    model, _ = load_generator(ckpt)
    paths = list_labels(labels)
    lines = []
    choice = ClipChoice(text="misty pine forest at dawn", weights="random:0", top_k=3)
    embeddings, photos = clip_embeddings_for(model, ckpt, choice, paths, report=lines.append)
    expected, stems, _ = project_text(encode_text(tiny_random_clip(0, warn=False)[0], [choice.text])[0], bank, top_k=3)
    assert photos == {} and len(stems) == 3
    for p in paths:
        np.testing.assert_allclose(embeddings[p], expected, atol=1e-6)
    assert len(lines) == 1 and "--clip-text" in lines[0] and all(stem in lines[0] for stem in stems)


def test_clip_choice_errors_name_the_flag_and_its_range(tmp_path, clip_checkpoint):
    from jspade.data.readers import DataError
    from jspade.inference import ClipChoice, ClipChoiceError, render_folder
    from tiny_models import tiny_checkpoint
    ckpt, data, bank, labels = clip_checkpoint
    out = tmp_path / "out"
    refused = [
        (ClipChoice(centre=4), ckpt, r"--clip-style 4: this checkpoint's style bank has centres 0\.\.3"),
        (ClipChoice(centre=0), tiny_checkpoint(tmp_path / "plain.pkl"), r"--clip-style: .*plain\.pkl is not a CLIP model"),
        (ClipChoice(text="a lake", weights="random:1"), ckpt, r"--clip-weights random:1: not the CLIP this checkpoint"),
        (ClipChoice(text="lake " * 80, weights="random:0"), ckpt, r"--clip-text: .*77"),
        (ClipChoice(text="a lake"), ckpt, "--clip-text needs --clip-weights"),
        (ClipChoice(text=" "), ckpt, "--clip-text: the prompt is empty"),
        (ClipChoice(weights="random:0"), ckpt, "--clip-weights is used only with"),
        (ClipChoice(centre=1, text="a lake", weights="random:0"), ckpt, "--clip-style and --clip-text are alternatives"),
        (ClipChoice(reference=ckpt, weights="random:0"), ckpt, "--clip-reference .*neither a photo"),
    ]
    for choice, checkpoint, message in refused:
        with pytest.raises(ClipChoiceError, match=message):
            render_folder(labels, checkpoint, out, size=(64, 32), clip=choice)
    (tmp_path / "refs").mkdir()
    with pytest.raises(DataError, match="--clip-reference .*no reference image for 3 label"):
        render_folder(labels, ckpt, out, size=(64, 32), clip=ClipChoice(reference=tmp_path / "refs", weights="random:0"))
    assert not out.exists()  # refused before anything was written


def test_infer_cli_clip_style_range_and_text_neighbours(tmp_path, clip_checkpoint):
    from conftest import run_script
    ckpt, _, bank, labels = clip_checkpoint
    common = ["--labels", labels, "--checkpoint", ckpt, "--size", "64x32", "--no-progress"]
    proc = run_script("infer", *common, "--out", tmp_path / "a", "--clip-style", "7")
    assert proc.returncode == 2 and not (tmp_path / "a").exists()
    assert proc.stderr.strip().count("\n") == 0 and "--clip-style 7" in proc.stderr and "0..3" in proc.stderr
    proc = run_script("infer", *common, "--out", tmp_path / "b", "--clip-text", "a red sunset", "--clip-weights", "random")
    assert proc.returncode == 0, proc.stderr
    assert "projected onto the training images" in proc.stdout and "RANDOM weights" in proc.stderr
    assert len(list((tmp_path / "b").glob("*.jpg"))) == 3
