"""The Jittor CLIP (jspade/clip) against ../shared/fixtures/clip_reference (FORMAT.md there): tokens,
preprocessing, features and logits; its weight files read safely and exactly; hostile, truncated and
lying files refused in one line; Hugging Face names mapped; the feature cache and its script."""
import json
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import _shared, run_script
from test_safe_load import Plant, write_torch_zip

from jspade.safe_load import CheckpointError, UnsafeFileError, load_safetensors, safe_load
from jspade.clip.features import FeatureCacheError, encode_images, encode_text, load_feature_cache, normalize
from jspade.clip.model import CLIPConfig
from jspade.clip.parity import run_clip_parity
from jspade.clip.preprocess import preprocess
from jspade.clip.tokenizer import tokenize
from jspade.clip.weights import (CLIPWeightsError, build_clip, config_from_state, from_hugging_face, load_clip,
                                 read_clip_state, safetensors_bytes)


@pytest.fixture(scope="module")
def fixture_dir():
    return _shared("fixtures", "clip_reference")


@pytest.fixture(scope="module")
def ref(fixture_dir):
    npz = np.load(fixture_dir / "clip_tiny.npz")
    return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def init(ref):
    return {k[len("init."):]: v for k, v in ref.items() if k.startswith("init.")}


@pytest.fixture(scope="module")
def config(ref):
    return CLIPConfig.from_dict(json.loads(str(ref["config_json"])))


@pytest.fixture(scope="module")
def model(init, config):
    return build_clip(init, config)


def within(ours, expected, factor=1e-4):
    return np.abs(ours - expected).max() <= factor * max(1.0, np.abs(expected).max())


# --- tokenizer and preprocessing ------------------------------------------------------------------------
def test_tokens_equal_clip_tokenize(ref):
    tokens = tokenize([str(p) for p in ref["input.prompts"]])
    assert tokens.dtype == np.int64 and np.array_equal(tokens, ref["input.tokens"])


def test_long_prompts_raise_or_truncate_as_clip_tokenize():
    long = "pine " * 100
    with pytest.raises(ValueError, match="more than CLIP's context of 77"):
        tokenize(long)
    tokens = tokenize(long, truncate=True)[0]
    assert tokens[0] == 49406 and tokens[-1] == 49407 and (tokens[1:-1] != 49407).all()
    exact = tokenize("pine " * 75)[0]  # SOT + 75 + EOT = 77: fits without truncation
    assert exact[-1] == 49407


def test_preprocessing_equals_clips_transform(ref, config):
    for i in range(3):
        ours = preprocess(ref[f"input.raw_image{i}"], config.image_resolution)[None]
        assert np.abs(ours - ref[f"expected.preprocessed{i}"]).max() <= 1e-5, i


# --- the model -------------------------------------------------------------------------------------------
def test_features_and_logits_match_openai_clip(model, ref):
    from jspade.runtime import jt
    with jt.no_grad():
        assert within(model.encode_image(ref["input.images"]).numpy(), ref["expected.image_features"])
        assert within(model.encode_text(ref["input.tokens"]).numpy(), ref["expected.text_features"])
        assert within(model(ref["input.images"], ref["input.tokens"])[0].numpy(), ref["expected.logits_per_image"])
    raw = [ref[f"input.raw_image{i}"] for i in range(3)]
    features = encode_images(model, raw, batch_size=2)
    for i in range(3):
        assert within(features[i:i + 1], ref[f"expected.raw_image_features{i}"]), i
    prompts = [str(p) for p in ref["input.prompts"]]
    assert within(encode_text(model, prompts), ref["expected.text_features"])


def test_text_is_pooled_at_the_end_token(model, ref):
    """Changing a token after EOT (causal mask + EOT pooling) leaves the feature unchanged; before it, not."""
    tokens = ref["input.tokens"][:1].copy()
    base = encode_text_tokens(model, tokens)
    after = tokens.copy()
    after[0, 5] = 320  # 'sea' is SOT sea EOT: position 5 is padding after EOT
    before = tokens.copy()
    before[0, 1] = 320
    assert np.array_equal(encode_text_tokens(model, after), base)
    assert not np.allclose(encode_text_tokens(model, before), base)


def encode_text_tokens(model, tokens):
    from jspade.runtime import jt
    with jt.no_grad():
        return model.encode_text(tokens).numpy()


def test_config_is_inferred_from_the_weights(init, config):
    inferred = config_from_state(init)
    for field in ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                  "context_length", "vocab_size", "transformer_width", "transformer_layers"):
        assert getattr(inferred, field) == getattr(config, field), field


# --- weight files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip_tiny_fp16_jit.pt", "clip_tiny_fp16.safetensors"])
def test_released_formats_give_init_rounded_to_their_dtype(fixture_dir, init, name):
    state = read_clip_state(fixture_dir / name)
    assert set(state) == set(init)
    assert state["visual.conv1.weight"].dtype == np.float16 and state["ln_final.weight"].dtype == np.float32
    assert state["logit_scale"].shape == () and state["logit_scale"] == init["logit_scale"]
    for key, value in state.items():
        assert np.array_equal(value, init[key].astype(value.dtype)), key


def test_load_clip_builds_from_the_torchscript_archive(fixture_dir, ref):
    model, digest = load_clip(fixture_dir / "clip_tiny_fp16_jit.pt")
    assert len(digest) == 64 and model.config.embed_dim == ref["expected.image_features"].shape[1]
    # float16 weights: close to the float32 reference, not equal
    features = encode_images(model, [ref["input.raw_image0"]])
    assert np.abs(features - ref["expected.raw_image_features0"]).max() < 0.05 * np.abs(features).max()


def _hugging_face_names(init):
    """The fixture's weights renamed as transformers' CLIPModel.state_dict() names them."""
    hf = {"text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None],
          "vision_model.embeddings.position_ids": np.arange(17, dtype=np.int64)[None]}
    for key, value in init.items():
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        if ".resblocks." in rest:
            _, index, part = rest.split(".", 3)[1:]
            base = f"{tower}.encoder.layers.{index}."
            if part.startswith("attn.in_proj_"):
                kind = part.rsplit("_", 1)[1]
                for name, chunk in zip("qkv", np.split(value, 3, axis=0)):
                    hf[f"{base}self_attn.{name}_proj.{kind}"] = chunk
            else:
                part = (part.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2").replace("c_fc", "fc1").replace("c_proj", "fc2"))
                hf[base + part] = value
            continue
        hf[{"class_embedding": "vision_model.embeddings.class_embedding",
            "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "positional_embedding": f"{tower}.embeddings.position_embedding.weight",
            "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "ln_post.weight": "vision_model.post_layernorm.weight", "ln_post.bias": "vision_model.post_layernorm.bias",
            "proj": "visual_projection.weight", "text_projection": "text_projection.weight",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
            "logit_scale": "logit_scale"}[rest]] = value.T.copy() if rest in ("proj", "text_projection") else value
    return hf


def test_hugging_face_names_are_mapped(tmp_path, init):
    hf = _hugging_face_names(init)
    assert not set(hf) & set(init) - {"logit_scale"}  # really renamed
    mapped = from_hugging_face(hf)
    assert set(mapped) == set(init) and all(np.array_equal(mapped[k], init[k]) for k in init)
    # through files: a safetensors and a torch zip state dict (pytorch_model.bin) with those names
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(hf))
    state = read_clip_state(tmp_path / "model.safetensors")
    assert all(np.array_equal(state[k], init[k]) for k in init) and set(state) == set(init)
    floats = {k: v for k, v in hf.items() if v.dtype == np.float32 and v.ndim}  # the writer stores float tensors
    write_torch_zip(tmp_path / "pytorch_model.bin", floats)
    state = read_clip_state(tmp_path / "pytorch_model.bin")
    assert all(np.array_equal(state[k], init[k]) for k in init if k != "logit_scale")
    with pytest.raises(CLIPWeightsError, match="no CLIP counterpart: vision_model.extra.weight"):
        from_hugging_face({**hf, "vision_model.extra.weight": np.zeros(1, np.float32)})


def test_strict_loading_names_the_file_and_the_keys(tmp_path, init):
    for change, words in ((lambda s: s.pop("visual.proj"), "missing visual.proj"),
                          (lambda s: s.update(extra=np.zeros(3, np.float32)), "unexpected extra"),
                          (lambda s: s.update({"ln_final.bias": np.zeros(5, np.float32)}), "wrong shape ln_final.bias")):
        state = dict(init)
        change(state)
        path = tmp_path / "weights.safetensors"
        path.write_bytes(safetensors_bytes(state))
        with pytest.raises(CLIPWeightsError) as e:
            load_clip(path, flag="--clip-weights")
        message = str(e.value)
        assert words in message and str(path) in message and "--clip-weights" in message and "\n" not in message


def test_a_hostile_archive_is_refused_naming_file_and_global(tmp_path):
    path, marker = tmp_path / "ViT-B-32.pt", tmp_path / "MARKER"
    write_torch_zip(path, {"visual.proj": Plant(marker)})
    with pytest.raises(UnsafeFileError) as e:
        load_clip(path, flag="--clip-weights")
    message = str(e.value)
    assert str(path) in message and "posix.mkdir" in message and "--clip-weights" in message and "\n" not in message
    assert not marker.exists()


# --- the safetensors reader ------------------------------------------------------------------------------
def _safetensors(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("content, words", [
    (b"\x01\x00", "shorter than its 8-byte header length"),
    (struct.pack("<Q", 10 ** 9) + b"{}", "does not fit a file"),
    (struct.pack("<Q", 4) + b"{\x00[}", "not JSON"),
    (_safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "does not fill"),
    (_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)), "outside"),
    (_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "overlap"),
    (_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "hole"),
    (_safetensors({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)), "unknown dtype"),
    (_safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)), "not a list of sizes"),
])
def test_truncated_or_lying_safetensors_are_refused(tmp_path, content, words):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        safe_load(path)
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_safetensors_is_recognised_by_content_and_truncation_is_caught(tmp_path, fixture_dir):
    data = (fixture_dir / "clip_tiny_fp16.safetensors").read_bytes()
    renamed = tmp_path / "weights.bin"  # not named .safetensors: found by its header
    renamed.write_bytes(data)
    assert np.array_equal(safe_load(renamed)["visual.proj"], load_safetensors(fixture_dir / "clip_tiny_fp16.safetensors")["visual.proj"])
    renamed.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="outside|cover"):
        safe_load(renamed)


# --- parity script, feature cache --------------------------------------------------------------------------
def test_check_parity_recognises_the_clip_archive(fixture_dir):
    results = run_clip_parity(fixture_dir / "clip_tiny.npz")
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    names = " ".join(r.name for r in results)
    assert "tokens" in names and "preprocessed2" in names and ".pt:" in names and ".safetensors:" in names
    done = run_script("check_parity", fixture_dir / "clip_tiny.npz")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12/12 arrays within" in done.stdout


def _write_images(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / "imgs" / f"s{i}.jpg")
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(folder / "labels" / f"s{i}.png")


def test_feature_cache_is_built_reused_and_refused_when_stale(tmp_path, fixture_dir):
    data, weights = tmp_path / "train", fixture_dir / "clip_tiny_fp16.safetensors"
    _write_images(data, 3)
    done = run_script("clip_features", "--data", data, "--clip-weights", weights, "--batch-size", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    cache_path = data / "clip_features.npz"
    cache = load_feature_cache(cache_path, ["s2", "s0"])
    model, digest = load_clip(weights)
    expected = encode_images(model, [np.asarray(Image.open(data / "imgs" / f"s{i}.jpg")) for i in (2, 0)])
    assert cache.weights_sha256 == digest and np.abs(cache.features - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(normalize(cache.features), axis=1), 1)
    # a rerun encodes only the new and the changed image
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(data / "imgs" / "s1.jpg")
    Image.fromarray(np.full((24, 32, 3), 50, np.uint8)).save(data / "imgs" / "s3.jpg")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(data / "labels" / "s3.png")
    done = run_script("clip_features", "--data", data, "--clip-weights", weights)
    assert done.returncode == 0 and "2 cached, 2 to encode" in done.stderr, done.stderr[-2000:]
    assert np.array_equal(load_feature_cache(cache_path, ["s0"]).features, cache.features[1:])
    # refusals: incomplete, other weights
    with pytest.raises(FeatureCacheError, match="incomplete.*s9.*python scripts/clip_features.py --data"):
        load_feature_cache(cache_path, ["s0", "s9"])
    with pytest.raises(FeatureCacheError, match="stale: made with other CLIP weights.*clip_features.py"):
        load_feature_cache(cache_path, ["s0"], weights_sha256="0" * 64)


def test_clip_features_errors_are_one_line(tmp_path, fixture_dir):
    data = tmp_path / "train"
    _write_images(data, 1)
    done = run_script("clip_features", "--data", data, "--clip-weights", tmp_path / "nope.pt")
    assert done.returncode == 2 and "--clip-weights" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights")
    done = run_script("clip_features", "--data", data, "--clip-weights", bad)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--clip-weights" in done.stderr and str(bad) in done.stderr
    (data / "clip_features.npz").write_bytes(b"someone else's file")
    done = run_script("clip_features", "--data", data, "--clip-weights", fixture_dir / "clip_tiny_fp16_jit.pt")
    assert done.returncode == 1 and "not overwritten" in done.stderr
    assert (data / "clip_features.npz").read_bytes() == b"someone else's file"
