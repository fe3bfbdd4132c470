"""What a curation writes: the selection files, the rejected entries of report.json, scores.csv and
the contact sheets, all following the one table of reasons."""
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from jspade.atomic import atomic_path, write_bytes_atomic
from jspade.curation.checks import decode_photo, resize_label, resize_photo
from jspade.curation.reasons import REASON, REASONS, SCORE_COLUMNS
from jspade.data.labels import colorize
from jspade.data.readers import read_label


def rounded(value, digits=4):
    if value is None:
        return None
    return round(float(value), digits)


# ---- contact sheets ------------------------------------------------------------------------------

THUMB = (128, 96)
CAPTION = 26
GAP = 4


def thumbnail_pair(image_path, label_path, label_nc):
    """(photo | coloured label) as a uint8 array of 2*THUMB; unreadable parts are drawn gray."""
    tile = np.full((THUMB[1], 2 * THUMB[0], 3), 90, np.uint8)
    try:
        tile[:, :THUMB[0]] = resize_photo(decode_photo(Path(image_path).read_bytes(), THUMB), THUMB)
    except Exception:  # noqa: BLE001 - an unreadable photo is drawn as a gray square
        pass
    try:
        tile[:, THUMB[0]:] = colorize(resize_label(read_label(label_path), THUMB), label_nc)
    except Exception:  # noqa: BLE001
        pass
    return tile


def write_contact_sheets(out_dir, name, entries, label_nc, columns=4, rows=8, progress=False):
    """Write `out_dir/<name>_NN.jpg` sheets of (photo | label) tiles; entries: list of
    (image_path, label_path, caption lines). Returns the written paths."""
    font = ImageFont.load_default()
    per_sheet = columns * rows
    tile_w, tile_h = 2 * THUMB[0] + GAP, THUMB[1] + CAPTION + GAP
    paths = []
    pages = range(0, len(entries), per_sheet)
    for page, start in enumerate(tqdm(pages, desc=f"sheets {name}", disable=not progress, leave=False), 1):
        chunk = entries[start:start + per_sheet]
        nrows = (len(chunk) + columns - 1) // columns
        sheet = Image.new("RGB", (columns * tile_w + GAP, nrows * tile_h + GAP), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, (image_path, label_path, lines) in enumerate(chunk):
            r, c = divmod(i, columns)
            x, y = GAP + c * tile_w, GAP + r * tile_h
            sheet.paste(Image.fromarray(thumbnail_pair(image_path, label_path, label_nc)), (x, y))
            for j, line in enumerate(lines[:2]):
                draw.text((x + 2, y + THUMB[1] + 1 + 12 * j), line, fill=(0, 0, 0), font=font)
        path = Path(out_dir) / f"{name}_{page:02d}.jpg"
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="JPEG", quality=88)
        paths.append(path)
    return paths


# ---- selections, report entries, scores -------------------------------------------------------

def write_selections(out_dir, data_dir, all_stems, samples, reasons):
    """selection1.txt / selection2.txt; returns (Selection I stems, Selection II stems)."""
    s1 = [s for s in all_stems if s in samples and not any(REASON[r].excludes_selection1 for r in reasons[s])]
    s2 = [s for s in s1 if not reasons[s]]
    for name, title, stems, excluded in (
            ("selection1.txt", "Selection I", s1, [r.name for r in REASONS if r.excludes_selection1]),
            ("selection2.txt", "Selection II", s2, [r.name for r in REASONS])):
        text = (f"# {title}: {len(stems)} of {len(all_stems)} stems, written by scripts/clean_dataset.py "
                f"from {Path(data_dir).resolve()}\n# excluded: {', '.join(excluded)}\n")
        write_bytes_atomic(out_dir / name, (text + "".join(f"{s}\n" for s in stems)).encode())
    return s1, s2


def rejected_entries(all_stems, reasons, score_of):
    order = [r.name for r in REASONS]
    rejected = {}
    for stem in all_stems:
        r = reasons[stem]
        if not r:
            continue
        keys = sorted(r, key=order.index)
        entry = {"reasons": keys,
                 "excluded_from": (["selection1", "selection2"] if any(REASON[x].excludes_selection1 for x in r)
                                   else ["selection2"]),
                 "details": {k: r[k] for k in keys}}
        if stem in score_of:
            entry["scores"] = {k: (rounded(v) if isinstance(v, float) else v) for k, v in score_of[stem].items()}
        rejected[stem] = entry
    return rejected


def write_all_sheets(out_dir, data_dir, all_stems, samples, reasons, groups, label_nc, options):
    """One series of contact sheets per reason, the most certain cases first; near-duplicates are
    shown group by group with every member (kept or not)."""
    paths = []
    for reason in REASON:
        if reason == "near_duplicate":
            entries = [(samples[m].image_path, samples[m].label_path,
                        [m, f"group {g['id']}: {_member_role(g, m, reasons[m])}, "
                            f"distance {g['typicality_distance'][m]:.2f}"])
                       for g in groups if any("near_duplicate" in reasons[m] for m in g["members"])
                       for m in g["members"]]
        else:
            hits = sorted((s for s in all_stems if reason in reasons[s]),
                          key=lambda s: REASON[reason].severity(reasons[s][reason]))  # stable: ties by stem
            entries = [(_path(samples, data_dir, s, "imgs", ".jpg"), _path(samples, data_dir, s, "labels", ".png"),
                        [s, _caption(reason, reasons[s][reason])]) for s in hits]
        if entries:
            paths += write_contact_sheets(out_dir / "sheets", reason, entries, label_nc, options.sheet_columns,
                                          options.sheet_rows, options.progress)
    return paths


def _path(samples, data_dir, stem, folder, suffix):
    if stem in samples:
        return samples[stem].image_path if folder == "imgs" else samples[stem].label_path
    return Path(data_dir) / folder / f"{stem}{suffix}"  # may not exist: drawn gray


def _member_role(group, stem, reasons):
    if stem in group["kept"]:
        return "kept"
    return "dropped" if "near_duplicate" in reasons else "out (other reason)"


def _caption(reason, details):
    if "messages" in details:
        return details["messages"][0][:42]
    if "duplicate_of" in details:
        return f"= {details['duplicate_of']}"
    return ", ".join(f"{v}" if isinstance(v, str) else f"{k.replace('_', ' ')} {v:.3f}" for k, v in details.items())


def write_scores_csv(path, rows):
    columns = ["stem", *SCORE_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for stem, s in rows:
        writer.writerow([stem] + ["" if s.get(c) is None else (f"{s[c]:.4f}" if isinstance(s[c], float) else s[c])
                                  for c in columns[1:]])
    write_bytes_atomic(path, buffer.getvalue().encode())
