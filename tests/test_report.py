"""scripts/report.py renders a run folder into one HTML page: charts, FID, sample grids."""
import base64
import io
import json
import re

from PIL import Image

from jspade.report import write_report
from jspade.train.trainer import Trainer

from conftest import run_script
from tiny_models import tiny_config



def test_report_renders_from_a_tiny_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path, tmp_path / "data", max_iters=4, sample_every=2)
    trainer = Trainer(cfg, progress=False)
    run_dir = trainer.train()
    page = run_dir / "report.html"
    assert trainer.report_path == page and page.is_file()  # the trainer refreshed it
    with open(run_dir / "log.jsonl", "a") as f:  # as FID during training logs it
        f.write(json.dumps({"iter": 2, "phase": 1, "fid": 80.5, "fid_best": True}) + "\n")
        f.write(json.dumps({"iter": 4, "phase": 1, "fid": 90.25, "fid_best": False}) + "\n")
        f.write('{"iter": 5, "losses": {"GA')  # a line cut short by a crash is skipped
    page.unlink()
    assert write_report(run_dir) == page
    html = page.read_text()
    charts = re.findall(r"<h2>([^<]+)</h2><img src='data:image/png;base64,([^']+)'", html)
    assert [title for title, _ in charts] == ["Losses", "Learning rate per phase", "FID"]
    for _, data in charts:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 200  # real PNG charts
    assert "best 80.50 at iteration 2" in html and "FID 90.25 at iteration 4" in html
    grids = re.findall(r"src='samples/([^']+)'", html)
    assert grids == ["iter_0000002.jpg", "iter_0000004.jpg"]
    assert all((run_dir / "samples" / g).is_file() for g in grids)
    assert "[[phases]]" in html  # the configuration


def test_report_of_a_folder_that_is_not_a_run_fails_in_one_line(tmp_path):
    done = run_script("report", tmp_path)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert "\n" not in err and str(tmp_path) in err and "log.jsonl" in err
