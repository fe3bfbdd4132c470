"""Paint a landscape label map in the browser and watch the generator render it.

  python scripts/paint.py                              # newest results/*/checkpoints/latest.pkl
  python scripts/paint.py --checkpoint results/myrun   # a run folder, a .pkl, or an original SPADE folder
  python scripts/paint.py --port 8000

Serves one local page (http://127.0.0.1:PORT/) and its JSON/PNG API; stop with Ctrl-C.
"""
import argparse
import ipaddress
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None,
                    help="a jspade run folder or .pkl, or an original SPADE checkpoint folder (default: the "
                         "newest results/*/checkpoints/latest.pkl)")
    ap.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port; default 8765)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; the painter has no authentication)")
    ap.add_argument("--results", type=Path, default=ROOT / "results",
                    help="where to look for the newest run when no --checkpoint is given (default: results/)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up render before serving")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port must be within 0..65535, got {args.port}")

    checkpoint = args.checkpoint
    if checkpoint is None:
        from jspade.painter.server import default_checkpoint  # noqa: E402 (imports Jittor)

        checkpoint = default_checkpoint(args.results)
        if checkpoint is None:
            print(f"no checkpoint given and none found in {args.results}/*/checkpoints/latest.pkl.\n"
                  "Run `bash run.sh train` first (the CPU demo, about 10 minutes), or pass --checkpoint.",
                  file=sys.stderr)
            return 1

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: binding to {args.host}: anyone who can reach it can use the painter", file=sys.stderr)

    import time

    import jspade  # noqa: F401  (configures Jittor first)
    from jspade.checkpoint import CheckpointError
    from jspade.painter.server import PainterApp, make_server

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    print(f"loading {checkpoint} ...", file=sys.stderr, flush=True)
    try:
        app = PainterApp.from_checkpoint(checkpoint, warmup=False, log=log)
    except (CheckpointError, OSError, ValueError) as error:
        print(f"cannot load the checkpoint: {error}", file=sys.stderr)
        return 1
    w, h = app.size
    print(f"model {w}x{h}, {app.num_ids} classes, style images {'on' if app.style_supported else 'off (no VAE)'}",
          file=sys.stderr, flush=True)
    if not args.no_warmup:
        app.warmup()
        print(f"render latency at {w}x{h}: median {app.timing()['median_ms']:.0f} ms", file=sys.stderr, flush=True)
    if args.quiet:
        app.log = lambda msg: None
    try:
        server = make_server(app, args.host, args.port)
    except OSError as error:
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"painter running at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
