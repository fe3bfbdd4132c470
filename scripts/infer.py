"""Render a submission: one <stem>.jpg per test label map.

  python scripts/infer.py --labels test/labels --checkpoint results/myrun --out submission
  python scripts/infer.py ... --label-to-img label_to_img.json --style-root train/imgs   # 2023 track
  python scripts/infer.py ... --checkpoint checkpoints/landscape   # the original's latest_net_G.pth
  python scripts/infer.py ... --seeds 20 --real-stats train_stats.npz  # keep the lowest-FID of 20 seeds
  python scripts/infer.py ... --label-to-img ... --match-histogram     # 2023: colours of the reference

Reference photos (--style-dir, --label-to-img) set the style through the VAE encoder, and for a TSIT
generator with a style stream also through that stream (FAdaIN, strength `alpha`).

A CLIP model (trained with --model.clip_dim; docs/clip_spade.md) takes one of:
  python scripts/infer.py ... --clip-style 3                        # centre 3 of the checkpoint's style bank
  python scripts/infer.py ... --clip-reference photo.jpg --clip-weights ViT-B-32.pt   # or a folder, or
                                                                   # label_to_img.json (with --style-root)
  python scripts/infer.py ... --clip-text "misty pine forest at dawn" --clip-weights ViT-B-32.pt
Without any, it renders the training set's mean style. A prompt is projected onto the training
images' embeddings stored in the checkpoint (CLIP's text and image embeddings sit apart); the run
prints the training images it chose.

Every label is read and checked first; if any is unreadable or holds an id the model does not know,
nothing is written and each bad file is listed. Outputs are deterministic for a --seed. A jspade
checkpoint's EMA generator is used when it has one (--no-ema: the raw weights).
"""
import os
import sys
from pathlib import Path

from jspade import cli
from jspade.config import size_argument

MAX_OUTPUT_SIDE = 4096  # --size beyond this needs --allow-large-size (a huge size is an out-of-memory kill)
JPEG_MAX_SIDE = 65500  # libjpeg's limit (PIL refuses larger JPEGs only after the image is in memory)


def available_memory():
    """Bytes of memory available to this process now (MemAvailable), or the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def output_memory(size, batch_size):
    """Bytes a batch of outputs takes at `size`: each RGB image once resized and once more while
    encoded (an estimate from below: the generator's own memory comes on top)."""
    width, height = size
    return 2 * 3 * width * height * batch_size



def main(argv=None):
    from jspade.clip.weights import clip_weights_arg
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", required=True, type=cli.existing_path("folder"),
                    help="folder of label maps (<stem>.png, 8- or 16-bit)")
    ap.add_argument("--checkpoint", required=True,
                    help="a jspade run folder (uses checkpoints/latest.pkl), a jspade .pkl checkpoint, or an "
                         "original SPADE or TSIT checkpoint folder / latest_net_G.pth")
    ap.add_argument("--out", required=True, type=cli.output_folder,
                    help="output folder (must be empty unless --overwrite)")
    ap.add_argument("--size", type=size_argument(), default=(512, 384),
                    help="output WIDTHxHEIGHT, resized from the model's size with bicubic (default 512x384; "
                         f"at most {MAX_OUTPUT_SIDE}x{MAX_OUTPUT_SIDE} unless --allow-large-size)")
    ap.add_argument("--allow-large-size", action="store_true",
                    help=f"allow a --size beyond {MAX_OUTPUT_SIDE}x{MAX_OUTPUT_SIDE}")
    ap.add_argument("--batch-size", type=cli.int_at_least(1), default=4, help="labels rendered at once")
    ap.add_argument("--seed", type=cli.int_at_least(0), default=0,
                    help="noise seed; the same seed gives the same images")
    ap.add_argument("--samples", type=cli.int_at_least(1), default=1,
                    help="variations per label: 1 writes <stem>.jpg, K>1 writes <stem>_0.jpg .. <stem>_{K-1}.jpg")
    cli.add_reference_photo_options(ap, "--style-dir", "they guide the style (VAE encoder or style stream)")
    ap.add_argument("--seeds", type=cli.int_at_least(1), default=1, metavar="K",
                    help="render with seeds --seed .. --seed+K-1, print each one's FID against --real-stats "
                         "and write the images of the lowest (needs a VAE model)")
    ap.add_argument("--real-stats", type=cli.existing_path("file"), metavar="NPZ",
                    help="FID statistics for --seeds (scripts/evaluate.py --save-stats DIR OUT.npz)")
    ap.add_argument("--match-histogram", action="store_true",
                    help="match each output's R, G, B histograms to its reference photo (--style-dir or "
                         "--label-to-img): raises the 2023 style-similarity term")
    clip = ap.add_argument_group("a CLIP model's style (one of --clip-style, --clip-reference, --clip-text)")
    choice = clip.add_mutually_exclusive_group()
    choice.add_argument("--clip-style", type=cli.int_at_least(0), metavar="K",
                        help="centre K of the checkpoint's style bank (0: the commonest style); needs no CLIP weights")
    choice.add_argument("--clip-reference", type=cli.existing_path(), metavar="PHOTO_OR_DIR",
                        help="CLIP style from a photo: one photo for every label, a folder of photos named like the "
                             "labels, or a label_to_img.json (names under --style-root); needs --clip-weights")
    choice.add_argument("--clip-text", metavar="PROMPT",
                        help="CLIP style from a text prompt, projected onto the training images; needs --clip-weights")
    clip.add_argument("--clip-weights", type=clip_weights_arg, metavar="PATH",
                      help="the CLIP weights the checkpoint was trained with (docs/clip.md), for --clip-reference "
                           "and --clip-text; 'random[:SEED]' for a demo trained with the random-weight CLIP")
    clip.add_argument("--clip-top-k", type=cli.int_at_least(1), default=8, metavar="N",
                      help="training images a --clip-text prompt is projected onto (default: %(default)s)")
    ap.add_argument("--no-ema", action="store_true", help="use the raw generator even if the checkpoint has EMA weights")
    ap.add_argument("--quality", type=cli.int_at_least(1, 100), default=95, help="JPEG quality (1..100)")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", type=cli.model_option,
                    help="set a model option for an original PyTorch checkpoint without opt.txt (e.g. ngf=64)")
    args = ap.parse_args(argv)
    if max(args.size) > MAX_OUTPUT_SIDE and not args.allow_large_size:
        ap.error(f"--size {args.size[0]}x{args.size[1]} is larger than {MAX_OUTPUT_SIDE}x{MAX_OUTPUT_SIDE}; "
                 "pass --allow-large-size to render it anyway")
    if max(args.size) > JPEG_MAX_SIDE:
        ap.error(f"--size {args.size[0]}x{args.size[1]}: a JPEG is at most {JPEG_MAX_SIDE} pixels a side")
    need, have = output_memory(args.size, args.batch_size), available_memory()
    if need > have:  # checked before anything is allocated: a MemoryError or an OOM kill otherwise
        ap.error(f"--size {args.size[0]}x{args.size[1]} with --batch-size {args.batch_size} needs at least "
                 f"{need / 2**30:.1f} GiB of memory, {have / 2**30:.1f} GiB is available: choose a smaller "
                 "--size or --batch-size")

    if args.seeds > 1 and args.real_stats is None:
        ap.error("--seeds needs --real-stats NPZ (make one with scripts/evaluate.py --save-stats DIR OUT.npz)")
    if args.match_histogram and args.style_dir is None and args.label_to_img is None and args.clip_reference is None:
        ap.error("--match-histogram needs reference photos: --style-dir, --label-to-img or --clip-reference")

    from jspade.data.readers import DataError
    from jspade.errors import UnsupportedRequest
    from jspade.inference import ClipChoice, ClipChoiceError, RenderOptions, render_folder

    clip_choice = ClipChoice(centre=args.clip_style, reference=args.clip_reference, text=args.clip_text,
                             weights=args.clip_weights, top_k=args.clip_top_k)
    try:
        clip_choice.check()  # what the checkpoint is not needed for (its range: render_folder)
    except ClipChoiceError as error:
        ap.error(str(error))
    options = RenderOptions(
        size=args.size, batch_size=args.batch_size, seed=args.seed, samples=args.samples, style_dir=args.style_dir,
        label_to_img=args.label_to_img, style_root=args.style_root, clip=clip_choice,
        quality=args.quality, overwrite=args.overwrite, model_overrides=dict(args.model_option),
        progress=not args.no_progress, use_ema=not args.no_ema, seeds=args.seeds, real_stats=args.real_stats,
        match_histogram=args.match_histogram, report=lambda line: print(line, flush=True))
    try:
        count, seed, weights = render_folder(args.labels, args.checkpoint, args.out, options)
    except (FileExistsError, ClipChoiceError) as error:  # a flag that does not fit: nothing was written
        ap.error(str(error))
    except (DataError, UnsupportedRequest) as error:  # nothing was written: say so, then each problem
        cli.report(ap.prog, DataError(f"refusing to render: {error}"))
        return 1
    print(f"wrote {count} image(s) to {args.out}" + (f" with seed {seed}" if args.seeds > 1 else "")
          + f" ({weights} weights)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
