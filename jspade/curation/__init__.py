"""Curate the landscape training data into Selection I and Selection II, reproducibly.

    report = curate("datasets/landscape/train", "curation/", CurationOptions(segmenter="seg.pkl"))

writes into the output folder (never into the data folder):
  selection1.txt   stems without errors: integrity faults, byte duplicates, grayscale photos,
                   labels that disagree with their photo (colour statistics, optionally a segmenter)
  selection2.txt   Selection I minus backlit / over-exposed / low-contrast photos, with each group of
                   near-identical label maps reduced to the `near_dup_keep` most typical photos
  report.json      every rejected stem with its reasons and scores, the thresholds, counts, timing
  scores.csv       every stem's scores (for calibrating the thresholds on real data)
  sheets/<reason>_NN.jpg   contact sheets (photo | coloured label, stem and score) for review

Both selection files are subset files for `read_subset` (one stem per line, '#' comments).

One module per job:
  reasons.py          the table of rejection reasons (score, threshold, direction) and CurationOptions
  checks.py           integrity (`jspade.data.validate`, sorted by problem kind), fast reading, photo
                      statistics (grayscale, backlight, clipping, contrast), byte duplicates
  color_model.py      per-class colour models fitted over the whole dataset from the labels (median
                      and MAD of exposure-invariant chromaticity r, g plus brightness), then the
                      fraction of each class's pixels far from its model
  near_duplicates.py  label maps with >= `near_dup_similarity` pixel agreement, found without comparing
                      all pairs: a sort-and-sweep on class histograms and a block-histogram bound (both
                      lossless: pixel agreement a implies an L1 histogram distance <= 2(1 - a)) select
                      the candidates; exact agreement decides; groups are stars around a centre
                      (greedy, most-connected first), so similarity cannot chain through a group
  report.py           selections, report entries, scores.csv, contact sheets
  pipeline.py         `curate`: the stages in order, each with a progress bar

Everything is deterministic: stems are processed in natural order, there is no randomness, and
report.json differs between two runs only in its "timing" entry.
"""
from jspade.curation.pipeline import curate
from jspade.curation.reasons import REASONS, CurationOptions

__all__ = ["REASONS", "CurationOptions", "curate"]
