"""CLIP weights from a user's file, never downloaded, always through jspade.safe_load (no code in the
file runs):

- OpenAI's released TorchScript archives (`ViT-B-32.pt`, ...: float16 weights inside pickled
  `__torch__` module objects): the state dict is collected from the modules' tensor attributes;
- `.safetensors` with OpenAI names (open_clip, timm);
- a torch state dict (`.pt`/`.bin` zip, or a legacy file) with OpenAI names, or Hugging Face names
  (`vision_model.encoder.layers.N.self_attn.q_proj.weight`, ...), mapped to OpenAI's.

Loading is strict: every key the model has, none it lacks, every shape as the model's. The model's
size comes from the weights' shapes (as openai/CLIP's `build_model`).
"""
import collections
import hashlib
import re
from pathlib import Path

import numpy as np

from jspade.safe_load import CheckpointError, ScriptObject, flatten_tensors, safe_load
from jspade.clip.model import CLIP, CLIPConfig

# Entries some OpenAI archives carry that are not weights (openai/CLIP's build_model drops them too).
_OPENAI_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


class CLIPWeightsError(CheckpointError):
    """A CLIP weights file that cannot be used; the message names the file (and the flag, if given)."""


# --- reading -----------------------------------------------------------------------------------------
def _unwrap(obj):
    """A state dict from what a .pt/.bin holds: the dict itself, or {'state_dict'/'model': dict}."""
    if isinstance(obj, ScriptObject):
        return collections.OrderedDict(flatten_tensors(obj, source="the TorchScript archive"))
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if set(obj) - {"epoch", "name", "optimizer"} == {wrapper} and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
        if obj and all(isinstance(k, str) for k in obj):
            if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
                obj = {k[len("module."):]: v for k, v in obj.items()}
            return collections.OrderedDict(obj)
    return None


_HF_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)")
_HF_LAYER_PARTS = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_PLAIN = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # (sic: Hugging Face's spelling)
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_HF_DROPPED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # index buffers


def is_hugging_face_state(state):
    return any(k.startswith(("vision_model.", "text_model.")) for k in state)


def from_hugging_face(state, source="weights"):
    """A Hugging Face CLIPModel state dict in OpenAI's names: q/k/v projections stacked into
    in_proj_weight/in_proj_bias, the two projections transposed. Raises CLIPWeightsError for a
    key it does not know (so nothing is silently dropped) or a layer lacking q, k or v."""
    out, qkv, unknown = collections.OrderedDict(), {}, []
    for key, value in state.items():
        layer = _HF_LAYER.fullmatch(key)
        if key in _HF_DROPPED:
            continue
        if key in _HF_PLAIN:
            out[_HF_PLAIN[key]] = value
        elif key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = np.ascontiguousarray(np.asarray(value).T)
        elif layer:
            tower, index, part = layer.groups()
            base = ("visual.transformer" if tower == "vision_model" else "transformer") + f".resblocks.{index}."
            m = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", part)
            if m:
                qkv.setdefault((base, m.group(2)), {})[m.group(1)] = value
            elif part in _HF_LAYER_PARTS:
                out[base + _HF_LAYER_PARTS[part]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CLIPWeightsError(f"{source}: Hugging Face keys with no CLIP counterpart: "
                               + ", ".join(unknown[:6]) + (" ..." if len(unknown) > 6 else ""))
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CLIPWeightsError(f"{source}: {base}{kind}: the attention has only {sorted(parts)} of q, k, v")
        out[f"{base}attn.in_proj_{kind}"] = np.concatenate([np.asarray(parts[p]) for p in "qkv"], axis=0)
    return out


def read_clip_state(path):
    """{OpenAI name: ndarray in its stored dtype} from any accepted weights file."""
    path = Path(path)
    raw = safe_load(path)
    state = _unwrap(raw)
    if state is None:
        raise CLIPWeightsError(f"{path}: holds a {type(raw).__name__}, not CLIP weights (a state dict "
                               "or a TorchScript CLIP archive)")
    for key in _OPENAI_NON_WEIGHTS:
        state.pop(key, None)
    if is_hugging_face_state(state):
        state = from_hugging_face(state, path)
    bad = [k for k, v in state.items() if not isinstance(v, (np.ndarray, np.generic))]
    if bad:
        raise CLIPWeightsError(f"{path}: {bad[0]} is a {type(state[bad[0]]).__name__}, not an array")
    return collections.OrderedDict((k, np.asarray(v)) for k, v in state.items())


def config_from_state(state, source="weights"):
    """The model's CLIPConfig from the weights' shapes (openai/CLIP's build_model); heads are
    width // 64, as in every released model."""
    def need(key):
        if key not in state:
            raise CLIPWeightsError(f"{source}: no {key}; not a ViT CLIP state dict"
                                   + (" (ResNet CLIP models are not supported)" if "visual.layer1.0.conv1.weight"
                                      in state else ""))
        return np.asarray(state[key]).shape

    def layers(prefix):
        return len({k.split(".")[len(prefix.split("."))] for k in state if k.startswith(prefix + ".")})

    conv = need("visual.conv1.weight")
    grid = round((need("visual.positional_embedding")[0] - 1) ** 0.5)
    width = need("ln_final.weight")[0]
    return CLIPConfig(
        embed_dim=need("text_projection")[1], image_resolution=conv[-1] * grid,
        vision_layers=layers("visual.transformer.resblocks"), vision_width=conv[0],
        vision_patch_size=conv[-1], context_length=need("positional_embedding")[0],
        vocab_size=need("token_embedding.weight")[0], transformer_width=width,
        transformer_heads=max(1, width // 64), transformer_layers=layers("transformer.resblocks"))


def _model_shapes(model):
    """Each parameter's shape in OpenAI's terms: Jittor has no 0-d Vars, so logit_scale's (1,) is ()."""
    return {k: () if k in model.SCALAR_KEYS else tuple(v.shape) for k, v in model.state_dict().items()}


def load_state_into(model, state, source="weights"):
    """Copy `state` into `model` strictly (as float32); one line naming `source` for any mismatch."""
    from jspade.runtime import jt
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    extra = [k for k in state if k not in wanted]
    shapes = _model_shapes(model)
    misshapen = [f"{k} {tuple(np.shape(state[k]))} (model {shapes[k]})"
                 for k in wanted if k in state and tuple(np.shape(state[k])) != shapes[k]]
    problems = [f"{title} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''} ({len(items)})"
                for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", misshapen))
                if items]
    if problems:
        raise CLIPWeightsError(f"{source}: does not fit the CLIP model: " + "; ".join(problems))
    for key, var in wanted.items():
        var.update(jt.array(np.asarray(state[key], np.float32).reshape(var.shape)))
    jt.sync(list(wanted.values()))
    return model


def build_clip(state, config=None, source="weights"):
    """A CLIP in eval mode holding `state` (OpenAI names); its config from the shapes unless given."""
    model = CLIP(config or config_from_state(state, source))
    model.eval()
    return load_state_into(model, state, source)


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_clip(path, flag=None, config=None):
    """(model, sha256 of the file) for a user's weights file. With `flag` ('--clip-weights') every
    error names the flag too, so the user knows which argument to fix."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CLIPWeightsError(f"{path}: no such file")
        state = read_clip_state(path)
        return build_clip(state, config, source=str(path)), file_sha256(path)
    except CheckpointError as e:  # (UnsafeFileError and CLIPWeightsError included)
        if flag:
            raise type(e)(f"{flag}: {e}") from None
        raise


# --- writing (for tests and demos: safetensors is the format that needs no pickle) -----------------------
_NUMPY_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                         "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def safetensors_bytes(state):
    """`state` ({name: ndarray}) serialised in the safetensors format."""
    import json
    import struct
    header, chunks, offset = {}, [], 0
    for name, value in state.items():
        array = np.asarray(value)  # (not ascontiguousarray: it turns a 0-d logit_scale into shape (1,))
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()  # tobytes is C order
        header[name] = {"dtype": _NUMPY_TO_SAFETENSORS[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save_safetensors(path, state):
    """Write `state` atomically as a .safetensors file."""
    from jspade.atomic import write_bytes_atomic
    write_bytes_atomic(path, safetensors_bytes(state))


# --- a random CLIP for demos and tests ------------------------------------------------------------------
TINY_CONFIG = CLIPConfig(embed_dim=512, image_resolution=64, vision_layers=2, vision_width=128,
                         vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=128,
                         transformer_heads=2, transformer_layers=2)


def random_clip_state(config=TINY_CONFIG, seed=0):
    """Weights drawn as openai/CLIP initialises them (normal, its standard deviations), deterministic
    in `seed`. Such a CLIP knows nothing of language or scenes; its image features still depend on the
    images' colours and layout, which is all a demo or a test needs of it."""
    c, rng = config, np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def blocks(prefix, width, layers):
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for i in range(layers):
            p = f"{prefix}.resblocks.{i}."
            state.update({p + "attn.in_proj_weight": normal((3 * width, width), attn_std),
                          p + "attn.in_proj_bias": np.zeros(3 * width, np.float32),
                          p + "attn.out_proj.weight": normal((width, width), proj_std),
                          p + "attn.out_proj.bias": np.zeros(width, np.float32),
                          p + "ln_1.weight": np.ones(width, np.float32), p + "ln_1.bias": np.zeros(width, np.float32),
                          p + "mlp.c_fc.weight": normal((4 * width, width), fc_std),
                          p + "mlp.c_fc.bias": np.zeros(4 * width, np.float32),
                          p + "mlp.c_proj.weight": normal((width, 4 * width), proj_std),
                          p + "mlp.c_proj.bias": np.zeros(width, np.float32),
                          p + "ln_2.weight": np.ones(width, np.float32), p + "ln_2.bias": np.zeros(width, np.float32)})

    vw, tw, scale = c.vision_width, c.transformer_width, c.vision_width ** -0.5
    state = collections.OrderedDict()
    state["visual.conv1.weight"] = normal((vw, 3, c.vision_patch_size, c.vision_patch_size),
                                          (3 * c.vision_patch_size ** 2) ** -0.5)
    state["visual.class_embedding"] = normal((vw,), scale)
    state["visual.positional_embedding"] = normal(((c.image_resolution // c.vision_patch_size) ** 2 + 1, vw), scale)
    state["visual.ln_pre.weight"], state["visual.ln_pre.bias"] = np.ones(vw, np.float32), np.zeros(vw, np.float32)
    blocks("visual.transformer", vw, c.vision_layers)
    state["visual.ln_post.weight"], state["visual.ln_post.bias"] = np.ones(vw, np.float32), np.zeros(vw, np.float32)
    state["visual.proj"] = normal((vw, c.embed_dim), scale)
    state["token_embedding.weight"] = normal((c.vocab_size, tw), 0.02)
    state["positional_embedding"] = normal((c.context_length, tw), 0.01)
    blocks("transformer", tw, c.transformer_layers)
    state["ln_final.weight"], state["ln_final.bias"] = np.ones(tw, np.float32), np.zeros(tw, np.float32)
    state["text_projection"] = normal((tw, c.embed_dim), tw ** -0.5)
    state["logit_scale"] = np.array(np.log(1 / 0.07), np.float32)
    return state


def state_sha256(state):
    """A digest of a state dict's names, dtypes, shapes and bytes (what a weights file's sha256 is for
    weights that have no file)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        array = np.asarray(state[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


RANDOM_WEIGHTS_WARNING = (
    "WARNING: using a small CLIP with RANDOM weights (tiny_random_clip), not a trained CLIP: its "
    "embeddings carry only the images' colour and layout statistics, and text prompts mean nothing to "
    "it. Give real weights with --clip-weights PATH (see docs/clip.md).")


def tiny_random_clip(seed=0, config=TINY_CONFIG, warn=True):
    """(model, digest) of a small random-weight CLIP (TINY_CONFIG: 512-d embeddings like ViT-B/32,
    64 px input, two layers per tower). Prints RANDOM_WEIGHTS_WARNING unless warn=False."""
    import sys
    if warn:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    state = random_clip_state(config, seed)
    return build_clip(state, config, source=f"tiny_random_clip(seed={seed})"), state_sha256(state)


# --- the --clip-weights argument -------------------------------------------------------------------------
def clip_weights_arg(text):
    """argparse type of --clip-weights: an existing file, or 'random' / 'random:SEED' for
    tiny_random_clip (demos and tests only). Returns a Path or the string 'random:SEED'."""
    import argparse
    if text == "random" or text.startswith("random:"):
        seed = text.partition(":")[2] or "0"
        if not seed.isdigit():
            raise argparse.ArgumentTypeError(f"random:SEED needs a non-negative integer seed, got {seed!r}")
        return f"random:{int(seed)}"
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} {'is not a file' if path.exists() else 'does not exist'} "
                                         "(a CLIP weights file: ViT-B-32.pt, .safetensors or a state dict; see docs/clip.md)")
    return path


def open_clip_weights(spec, flag="--clip-weights"):
    """(model, weights sha256) for a value of clip_weights_arg: a file through load_clip (errors name
    `flag`), or 'random:SEED' through tiny_random_clip (with its loud warning)."""
    if isinstance(spec, str) and spec.startswith("random:"):
        return tiny_random_clip(int(spec.partition(":")[2]))
    return load_clip(spec, flag=flag)
