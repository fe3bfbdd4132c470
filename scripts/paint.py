"""Paint a landscape label map in the browser and watch the generator render it.

  python scripts/paint.py                              # newest results/*/checkpoints/latest.pkl
  python scripts/paint.py --checkpoint results/myrun   # a run folder, a .pkl, or an original SPADE folder
  python scripts/paint.py --port 8000
  python scripts/paint.py --checkpoint results/myclip --clip-weights ViT-B-32.pt   # CLIP text + photos

A CLIP model (docs/clip_spade.md) gets a style picker (its style bank's centres); with --clip-weights
(the CLIP it was trained with) also a text prompt box, and style photos go through CLIP.

Serves one local page (http://127.0.0.1:PORT/) and its JSON/PNG API; stop with Ctrl-C.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from jspade import cli  # noqa: E402


def origin_name(text):
    """--allow-origin: a host name or URL -> its host name."""
    from jspade.painter.web import host_name

    name = host_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or URL")
    return name


def main(argv=None):
    from jspade.clip.weights import clip_weights_arg
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None,
                    help="a jspade run folder or .pkl, or an original SPADE checkpoint folder (default: the "
                         "newest results/*/checkpoints/latest.pkl)")
    ap.add_argument("--port", type=cli.int_at_least(0, 65535), default=8765,
                    help="port to listen on (0: any free port; default 8765)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; the painter has no authentication)")
    ap.add_argument("--allow-origin", action="append", default=[], metavar="NAME", type=origin_name,
                    help="also answer pages opened via this host name or URL (e.g. a DNS alias of this "
                         "machine, with --host 0.0.0.0); repeatable")
    ap.add_argument("--results", type=Path, default=ROOT / "results",
                    help="where to look for the newest run when no --checkpoint is given (default: results/)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up render before serving")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines")
    ap.add_argument("--no-ema", action="store_true",
                    help="use the raw generator even if the checkpoint has EMA weights (the default uses them)")
    ap.add_argument("--clip-weights", type=clip_weights_arg, metavar="PATH",
                    help="the CLIP weights a CLIP checkpoint was trained with (docs/clip.md): text prompts and "
                         "style photos through CLIP; 'random[:SEED]' for a demo trained on the random-weight CLIP")
    args = ap.parse_args(argv)

    import time

    from jspade.painter import PainterApp, default_checkpoint, make_server

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = default_checkpoint(args.results)
        if checkpoint is None:
            print(f"no checkpoint given and none found in {args.results}/*/checkpoints/latest.pkl. "
                  "Run `bash run.sh train` first (the CPU demo, about 10 minutes), or pass --checkpoint.",
                  file=sys.stderr)
            return 1

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    print(f"loading {checkpoint} ...", file=sys.stderr, flush=True)
    from jspade.inference import ClipChoiceError
    try:
        app = PainterApp.from_checkpoint(checkpoint, warmup=False, log=log, use_ema=not args.no_ema,
                                         clip_weights=args.clip_weights)
    except ClipChoiceError as error:
        ap.error(str(error))
    w, h = app.size
    print(f"model {w}x{h} ({app.model.weights} weights), {app.num_ids} classes, "
          f"style images {'on' if app.style_supported else 'off (no VAE)'}"
          + (f", CLIP styles ({app.info()['clip']['centres']} centres"
             + (", text prompts and photos through CLIP)" if app.clip_model is not None else
                "; --clip-weights adds text prompts)") if app.model.uses_clip else ""),
          file=sys.stderr, flush=True)
    try:
        server = make_server(app, args.host, args.port, allow_hosts=args.allow_origin)
    except OSError as error:
        raise OSError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    if server.exposure_warning():
        print(server.exposure_warning(), file=sys.stderr, flush=True)
    if not args.no_warmup:
        app.warmup()
        print(f"render latency at {w}x{h}: median {app.timing()['median_ms']:.0f} ms", file=sys.stderr, flush=True)
    if args.quiet:
        app.log = lambda msg: None
    print(f"painter running at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
