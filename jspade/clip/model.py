"""openai/CLIP's ViT model in Jittor: the vision transformer and the text transformer, with OpenAI's
parameter names (`visual.conv1.weight`, `transformer.resblocks.N.attn.in_proj_weight`, ...), so a
released state dict loads key for key (jspade/clip/weights.py).

As in the original: pre-norm residual blocks with QuickGELU (x * sigmoid(1.702 x)), layer norm
computed in float32, a causal mask in the text transformer, the text pooled at the end token (the
largest id of each row), `vision_width // 64` heads in the vision tower. Everything computes in
float32 (released float16 weights are widened on load). The ResNet variants (RN50, ...) are not ported.
"""
from dataclasses import asdict, dataclass

import numpy as np

from jspade.runtime import jt
from jittor import nn


@dataclass(frozen=True)
class CLIPConfig:
    """The arguments of openai/CLIP's `CLIP(...)` (ViT variants)."""
    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def vision_heads(self):
        return max(1, self.vision_width // 64)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


class LayerNorm(nn.Module):
    """Layer norm over the last axis, always in float32 (as CLIP's LayerNorm subclass)."""

    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = jt.ones(width)
        self.bias = jt.zeros(width)

    def execute(self, x):
        x = x.float32()
        mean = x.mean(dim=-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(dim=-1, keepdims=True)
        return centred / jt.sqrt(var + self.eps) * self.weight + self.bias


class QuickGELU(nn.Module):
    def execute(self, x):
        return x * jt.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's self-attention with its parameter layout (q, k, v stacked in
    in_proj_weight), on batch-first [N, L, D] input."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = jt.zeros((3 * width, width))
        self.in_proj_bias = jt.zeros(3 * width)
        self.out_proj = nn.Linear(width, width)

    def execute(self, x, mask=None):
        n, length, width = x.shape
        head_dim = width // self.heads
        qkv = nn.matmul_transpose(x, self.in_proj_weight) + self.in_proj_bias
        qkv = qkv.reshape(n, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # 3, N, H, L, hd
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = jt.matmul(q, k.transpose(0, 1, 3, 2)) * (head_dim ** -0.5)
        if mask is not None:
            scores = scores + mask
        attention = nn.softmax(scores, dim=-1)
        out = jt.matmul(attention, v).permute(0, 2, 1, 3).reshape(n, length, width)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def execute(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm(width)

    def execute(self, x, mask=None):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def execute(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = jt.zeros(width)
        self.positional_embedding = jt.zeros(((resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = jt.zeros((width, output_dim))

    def execute(self, x):
        x = self.conv1(x)  # N, width, grid, grid
        n, width = x.shape[0], x.shape[1]
        x = x.reshape(n, width, -1).permute(0, 2, 1)  # N, grid**2, width
        cls = self.class_embedding.reshape(1, 1, width).broadcast((n, 1, width))
        x = jt.concat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return jt.matmul(self.ln_post(x[:, 0, :]), self.proj)


class CLIP(nn.Module):
    SCALAR_KEYS = ("logit_scale",)  # 0-d in PyTorch; shape (1,) here (Jittor has no 0-d Vars)

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = self.config = config
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width,
                                        c.vision_layers, c.vision_heads, c.embed_dim)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads)
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = jt.zeros((c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = jt.zeros((c.transformer_width, c.embed_dim))
        self.logit_scale = jt.array(np.float32(np.log(1 / 0.07)))

    @property
    def image_resolution(self):
        return self.config.image_resolution

    def _causal_mask(self, length):
        # Built per call: a Var attribute would count as a parameter (and break strict loading).
        return jt.array(np.triu(np.full((length, length), -np.inf, np.float32), 1))

    def encode_image(self, images):
        """[N, 3, R, R] preprocessed images -> [N, embed_dim] features (not normalised)."""
        return self.visual(jt.array(images).float32() if isinstance(images, np.ndarray) else images)

    def encode_text(self, tokens):
        """[M, context] int token ids -> [M, embed_dim] features (not normalised), taken at each
        row's end token (the largest id)."""
        tokens = np.asarray(tokens.numpy() if isinstance(tokens, jt.Var) else tokens).astype(np.int64)
        m, length = tokens.shape
        x = self.token_embedding(jt.array(tokens.astype(np.int32))) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self._causal_mask(length)))
        end = jt.array((np.arange(m) * length + tokens.argmax(axis=-1)).astype(np.int32))
        return jt.matmul(x.reshape(m * length, -1)[end], self.text_projection)

    def execute(self, images, tokens):
        """(logits_per_image [N, M], logits_per_text [M, N]) as openai/CLIP's forward."""
        image_features = normalize(self.encode_image(images))
        text_features = normalize(self.encode_text(tokens))
        logits = self.logit_scale.exp() * jt.matmul(image_features, text_features.transpose())
        return logits, logits.transpose()


def normalize(features):
    """Rows scaled to unit L2 norm (Jittor Var or numpy array)."""
    if isinstance(features, np.ndarray):
        return features / np.linalg.norm(features, axis=-1, keepdims=True)
    return features / jt.sqrt((features * features).sum(dim=-1, keepdims=True))
