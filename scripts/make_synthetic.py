"""Write a synthetic landscape dataset in the contest layout (imgs/*.jpg + labels/*.png, 8-bit ids).

    python scripts/make_synthetic.py --out datasets/synthetic/train --n 2000 --size 128x96 --seed 0
    python scripts/make_synthetic.py --out datasets/synthetic/val --n 100 --seed 1
    python scripts/make_synthetic.py --preview preview.png --size 256x192     # look before training

Scene i of seed s is always the same, whatever --n. The preview shows label colours beside photos.
"""
import sys
import time

from PIL import Image
from tqdm import tqdm

from jspade import cli
from jspade.config import size_argument
from jspade.data.synthetic import generate_scene, preview_grid, scene_rng, write_synthetic_dataset
from jspade.atomic import save_image_atomic




def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=cli.output_folder, help="dataset folder to write (gets imgs/ and labels/)")
    ap.add_argument("--n", type=cli.int_at_least(1), default=1000, help="number of scenes")
    ap.add_argument("--size", type=size_argument(16, 4096), default=(128, 96), help="WIDTHxHEIGHT (default 128x96)")
    ap.add_argument("--seed", type=cli.int_at_least(0), default=0)
    ap.add_argument("--preview", type=cli.output_file, help="also write a grid of the first scenes to this PNG")
    ap.add_argument("--preview-n", type=cli.int_at_least(1), default=16, help="scenes in the preview")
    args = ap.parse_args(argv)
    if args.out is None and args.preview is None:
        ap.error("give --out and/or --preview")

    if args.out is not None:
        start = time.time()
        write_synthetic_dataset(args.out, args.n, args.size, args.seed,
                                progress=lambda it: tqdm(it, desc="scenes", unit="scene"))
        rate = args.n / max(time.time() - start, 1e-9)
        print(f"wrote {args.n} {args.size[0]}x{args.size[1]} scenes to {args.out} ({rate:.0f}/s)")
    if args.preview is not None:
        scenes = [generate_scene(scene_rng(args.seed, i), *args.size) for i in range(args.preview_n)]
        save_image_atomic(args.preview, Image.fromarray(preview_grid(scenes)))
        print(f"preview of {args.preview_n} scenes: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
