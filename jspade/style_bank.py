"""The style bank of a CLIP-modulated SPADE (docs/clip_spade.md): what the training images' CLIP
embeddings look like, kept in the checkpoint so that inference can pick a style without CLIP.

- Deterministic spherical k-means over the L2-normalised training embeddings (k-means++ start from a
  fixed seed; centres ordered by cluster size, largest first), each centre with its count and its
  medoid (the training image nearest to it, by stem).
- The mean embedding: the "no style" input the model also learns (training replaces an image's
  embedding by it one time in ten).
- The training embeddings (float16) and stems: what a text prompt is projected onto
  (`project_text`), since CLIP's text and image embeddings sit apart.
- The sha256 of the CLIP weights that made them: embeddings of other weights mean nothing here.

numpy only; the payload is plain arrays, strings and lists, for the safe checkpoint reader.
"""
from dataclasses import dataclass

import numpy as np

from jspade.errors import UnsupportedRequest
from jspade.safe_load import CheckpointError

FORMAT = "jspade-style-bank-1"
DEFAULT_K = 16
DEFAULT_SEED = 0
DEFAULT_TEMPERATURE = 0.01  # CLIP's own logit scale is 100


def normalize_rows(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("embeddings must be finite and not all zero")
    return x / norms


def _kmeans_pp_init(x, k, rng):
    """k-means++ on the sphere: each next centre drawn with probability proportional to the squared
    chord distance 2 - 2 cos to its nearest centre so far."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    nearest = 2.0 - 2.0 * (x @ x[chosen[0]])
    for _ in range(1, k):
        d2 = np.maximum(nearest, 0.0)
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k (callers clamp k; this is a guard)
            break
        pick = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
        pick = min(pick, n - 1)
        chosen.append(pick)
        nearest = np.minimum(nearest, 2.0 - 2.0 * (x @ x[pick]))
    return x[chosen].copy()


def spherical_kmeans(embeddings, k=DEFAULT_K, seed=DEFAULT_SEED, max_iterations=100):
    """(centres [k, D] unit float64, assignment [N]) of spherical k-means (cosine similarity) over the
    L2-normalised `embeddings`. Deterministic for a seed. `k` is clamped to the number of distinct
    embeddings. An emptied cluster is restarted at the point farthest from its centre."""
    x = normalize_rows(embeddings)
    distinct = len(np.unique(np.round(x, 6), axis=0))
    k = max(1, min(int(k), distinct))
    centres = _kmeans_pp_init(x, k, np.random.default_rng(seed))
    assignment = None
    for _ in range(max_iterations):
        sim = x @ centres.T
        new = np.argmax(sim, axis=1)
        for j in range(len(centres)):
            if not np.any(new == j):
                best = sim[np.arange(len(x)), new]
                far = int(np.argmin(best))
                new[far] = j
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        for j in range(len(centres)):
            s = x[assignment == j].sum(axis=0)
            if np.linalg.norm(s) > 0:  # else (empty, or antipodal members) the centre stays
                centres[j] = s / np.linalg.norm(s)
    return centres, assignment


@dataclass
class StyleBank:
    centres: np.ndarray  # [K, D] float32, unit
    counts: np.ndarray  # [K] int64: training images per centre
    medoid_stems: list  # [K] str: the training image nearest each centre
    mean: np.ndarray  # [D] float32: the mean of the unit training embeddings ("no style")
    embeddings: np.ndarray  # [N, D] float16, unit
    stems: list  # [N] str
    weights_sha256: str  # the CLIP weights that made the embeddings
    seed: int = DEFAULT_SEED

    @property
    def dim(self):
        return int(self.centres.shape[1])

    @property
    def k(self):
        return int(self.centres.shape[0])

    def centre(self, index):
        """Centre `index` as a float32 [D] embedding; UnsupportedRequest naming the range."""
        if not 0 <= index < self.k:
            raise UnsupportedRequest(f"style centre {index} is out of range: the bank has centres 0..{self.k - 1}")
        return self.centres[index].astype(np.float32)

    def nearest_centre(self, embedding):
        """The index of the centre most cosine-similar to `embedding`."""
        return int(np.argmax(self.centres.astype(np.float64) @ normalize_rows(embedding)))

    def to_payload(self):
        """Plain arrays, strings and lists (what a checkpoint stores)."""
        return {"format": FORMAT, "centres": self.centres.astype(np.float32), "counts": self.counts.astype(np.int64),
                "medoid_stems": list(self.medoid_stems), "mean": self.mean.astype(np.float32),
                "embeddings": self.embeddings.astype(np.float16), "stems": list(self.stems),
                "weights_sha256": str(self.weights_sha256), "seed": int(self.seed)}

    @classmethod
    def from_payload(cls, payload, source="checkpoint"):
        """Inverse of to_payload; CheckpointError naming `source` when the payload is not a style bank."""
        try:
            if payload.get("format") != FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT!r}")
            bank = cls(centres=np.asarray(payload["centres"], np.float32),
                       counts=np.asarray(payload["counts"], np.int64),
                       medoid_stems=[str(s) for s in payload["medoid_stems"]],
                       mean=np.asarray(payload["mean"], np.float32),
                       embeddings=np.asarray(payload["embeddings"], np.float16),
                       stems=[str(s) for s in payload["stems"]],
                       weights_sha256=str(payload["weights_sha256"]), seed=int(payload.get("seed", DEFAULT_SEED)))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: not a usable style bank ({type(e).__name__}: {e})") from None
        k, d = bank.centres.shape if bank.centres.ndim == 2 else (0, 0)
        n = len(bank.stems)
        if (not k or bank.counts.shape != (k,) or len(bank.medoid_stems) != k or bank.mean.shape != (d,)
                or bank.embeddings.shape != (n, d)):
            raise CheckpointError(f"{source}: the style bank's arrays disagree in size (centres "
                                  f"{bank.centres.shape}, counts {bank.counts.shape}, {len(bank.medoid_stems)} "
                                  f"medoids, mean {bank.mean.shape}, embeddings {bank.embeddings.shape}, {n} stems)")
        return bank


def build_style_bank(embeddings, stems, weights_sha256, k=DEFAULT_K, seed=DEFAULT_SEED):
    """The StyleBank of training `embeddings` [N, D] (any scale; normalised here) named by `stems`.
    The same inputs give the same bank (k-means++ from `seed`; stems are sorted first, so the order
    the embeddings come in does not matter)."""
    stems = [str(s) for s in stems]
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(stems) != embeddings.shape[0] or not stems:
        raise ValueError(f"a style bank needs N >= 1 embeddings [N, D] and N stems; got {embeddings.shape} "
                         f"and {len(stems)} stems")
    if len(set(stems)) != len(stems):
        raise ValueError("a style bank's stems must be distinct")
    order = sorted(range(len(stems)), key=lambda i: stems[i])
    stems = [stems[i] for i in order]
    x = normalize_rows(embeddings[order])
    centres, assignment = spherical_kmeans(x, k, seed)
    counts = np.bincount(assignment, minlength=len(centres))
    by_size = sorted(range(len(centres)), key=lambda j: (-counts[j], j))  # centre 0: the commonest style
    centres, counts = centres[by_size], counts[by_size]
    assignment = np.argsort(by_size)[assignment]
    medoids = []
    for j in range(len(centres)):
        members = np.flatnonzero(assignment == j)
        medoids.append(stems[members[int(np.argmax(x[members] @ centres[j]))]])
    return StyleBank(centres=centres.astype(np.float32), counts=counts.astype(np.int64), medoid_stems=medoids,
                     mean=x.mean(axis=0).astype(np.float32), embeddings=x.astype(np.float16), stems=stems,
                     weights_sha256=str(weights_sha256), seed=int(seed))


def project_text(text_embedding, bank, top_k=8, temperature=DEFAULT_TEMPERATURE):
    """A CLIP text embedding moved among the training images' embeddings, which is where the model
    learned styles (text and image embeddings occupy different regions of CLIP space): the
    softmax(cos / temperature)-weighted mean of the `top_k` training embeddings most similar to the
    text. Returns (embedding [D] float32, unit; the chosen stems, most similar first; their weights)."""
    text = np.asarray(text_embedding, dtype=np.float64)
    if text.shape != (bank.dim,):
        raise ValueError(f"text embedding of shape {text.shape}; the style bank holds ({bank.dim},) embeddings")
    if not top_k >= 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    images = bank.embeddings.astype(np.float64)
    sim = images @ normalize_rows(text)
    top = np.argsort(-sim, kind="stable")[:min(int(top_k), len(sim))]
    logits = sim[top] / temperature
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    mixed = weights @ images[top]
    return (mixed / np.linalg.norm(mixed)).astype(np.float32), [bank.stems[i] for i in top], weights.astype(np.float32)
