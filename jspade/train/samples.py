"""Sample grids: `<run>/samples/iter_XXXXXXX.jpg`, one row per held-out pair, coloured label |
generated | real.

Invariant: every grid of a run shows the same pairs (the first `train.num_samples` of the data
folder's "val" phase, no flips), rendered in eval mode with the style of the real photo (its encoding
with a VAE, the photo itself for TSIT, its CLIP embedding with no "no style" draw), so grids over
time differ only by the weights. The pairs are read at the first grid.
"""
import numpy as np
from PIL import Image

from jspade.atomic import save_image_atomic
from jspade.data.labels import colorize
from jspade.data.semantics import semantics_for
from jspade.data.transforms import to_uint8_images
from jspade.runtime import jt


def sample_grid(labels, fakes, reals, label_nc):
    """Rows of coloured label | generated | real (uint8 HxWx3 arrays)."""
    rows = []
    for i in range(len(fakes)):
        cells = [colorize(labels[i], label_nc), fakes[i]] + ([reals[i]] if reals is not None else [])
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


class SampleGrids:
    def __init__(self, data, count, clip=None):
        """`data`: the run's TrainingData; `clip`: its ClipConditioning (a CLIP model) or None."""
        self.data, self.count, self.clip = data, count, clip
        self._batch = None  # (label, instance, real, clip embeddings), read at the first grid

    def _pairs(self):
        if self._batch is None:
            ds = self.data.sample_pairs()
            items = [ds[i] for i in range(min(self.count, ds.total_len))]
            label = jt.array(np.stack([it["label"] for it in items]).astype(np.int32))
            inst = jt.array(np.stack([it["instance"] for it in items])) if "instance" in items[0] else None
            clip = self.clip.inputs([it["stem"] for it in items], 0, no_style_p=0.0) if self.clip else None
            self._batch = (label, inst, jt.array(np.stack([it["image"] for it in items])), clip)
        return self._batch

    def write(self, model, path):
        """Render the pairs with `model` (a SPADEModel; left in train mode) and write the grid to `path`."""
        if self.count <= 0:
            return
        label, inst, real, clip = self._pairs()
        sem = semantics_for(self.data.cfg.model, label, inst)
        model.eval()
        try:
            with jt.no_grad():
                z = model.netE(real)[0] if model.has_encoder else None  # the style of the real photo
                fake = model.generate(sem, z=z, style=real, clip=clip)
        finally:
            model.train()
        grid = sample_grid(label.numpy()[:, 0], to_uint8_images(fake), to_uint8_images(real), self.data.cfg.model.label_nc)
        save_image_atomic(path, Image.fromarray(grid), quality=90)
