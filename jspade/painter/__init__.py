"""The interactive painter: a local web page where a label map is painted with the contest's
classes and the generator renders it as you draw (`bash run.sh paint`).

`PainterApp` holds one model and does the validated decoding and rendering; `make_server` puts it
behind a small stdlib HTTP server (one page, a JSON/PNG API; see `jspade.painter.server`)."""
from jspade.painter.server import (  # noqa: F401
    ApiError,
    PainterApp,
    PainterServer,
    default_checkpoint,
    make_server,
)
