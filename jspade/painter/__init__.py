"""The interactive painter: a local web page where a label map is painted with the contest's
classes and the generator renders it as you draw (`bash run.sh paint`).

`PainterApp` (jspade.painter.app) holds one model and does the validated decoding and rendering;
`make_server` (jspade.painter.web) puts it behind a small stdlib HTTP server (one page, a JSON/PNG API)."""
from jspade.painter.app import ApiError, PainterApp, default_checkpoint  # noqa: F401
from jspade.painter.web import PainterServer, is_loopback, make_server  # noqa: F401
