"""Near-identical label maps, found without comparing all pairs (see `find_near_duplicate_groups`),
grouped as stars around a centre, and the most typical photos of a group."""
import numpy as np
from tqdm import tqdm


def block_histograms(labels, label_nc, blocks=(4, 3)):
    """(N, H, W) label maps -> (N, blocks_y * blocks_x * label_nc) int32 class counts per block."""
    n, h, w = labels.shape
    by = np.minimum(np.arange(h) * blocks[1] // h, blocks[1] - 1)
    bx = np.minimum(np.arange(w) * blocks[0] // w, blocks[0] - 1)
    block = (by[:, None] * blocks[0] + bx[None, :])  # (H, W)
    nb = blocks[0] * blocks[1]
    index = (np.arange(n)[:, None, None] * nb + block[None]) * label_nc + np.clip(labels, 0, label_nc - 1)
    return np.bincount(index.ravel(), minlength=n * nb * label_nc).reshape(n, nb * label_nc).astype(np.int32)


def pairs_within_l1(points, budget):
    """All pairs (i < j) of rows with L1 distance <= budget, as an (M, 2) int array. Exact: two
    such rows are also within `budget` on any single coordinate, so sorting on the coordinate with
    the largest spread and sweeping a window of that width yields every candidate. (scipy's
    cKDTree.query_pairs did this too, but crashed the process after Jittor had run in it.)"""
    points = np.asarray(points, np.float64)
    n = len(points)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    axis = int(np.argmax(points.var(axis=0)))
    order = np.argsort(points[:, axis], kind="stable")
    keys = points[order, axis]
    ends = np.searchsorted(keys, keys + budget, side="right")
    found = []
    for a in range(n):
        window = order[a + 1:ends[a]]
        if len(window) == 0:
            continue
        i = order[a]
        near = window[np.abs(points[window] - points[i]).sum(axis=1) <= budget]
        if len(near):
            found.append(np.stack([np.minimum(near, i), np.maximum(near, i)], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def find_near_duplicate_groups(labels, similarity=0.95, label_nc=29, chunk=4096, progress=False):
    """Groups of label maps with pixel agreement >= `similarity` to the group's centre (the first
    index of each group; see `groups_around_centres`), ordered by centre.

    labels: (N, H, W) uint8, all the same size. Not all N^2 pairs are compared: a pixel agreement
    a implies an L1 distance <= 2 (1 - a) * H * W between the class counts of any block of the two
    maps, so a sort-and-sweep on the whole-map class histograms and then 4x3 block histograms select the
    candidates without losing any similar pair; only those are compared pixel by pixel.
    Returns (groups, stats).
    """
    labels = np.asarray(labels)
    n = len(labels)
    stats = {"images": n, "candidate_pairs": 0, "block_filtered_pairs": 0, "similar_pairs": 0}
    if n < 2:
        return [], stats
    pixels = labels[0].size
    budget = 2.0 * (1.0 - similarity) * pixels + 1e-6  # in pixel counts
    blocks = block_histograms(labels, label_nc)
    whole = blocks.reshape(n, -1, label_nc).sum(axis=1).astype(np.float64)
    pairs = pairs_within_l1(whole, budget)
    if len(pairs):
        pairs = np.sort(pairs, axis=1)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    stats["candidate_pairs"] = int(len(pairs))
    flat = labels.reshape(n, -1)
    similar = []
    bar = tqdm(total=len(pairs), desc="near-duplicates", unit="pair", disable=not progress, leave=False)
    for start in range(0, len(pairs), chunk):
        p = pairs[start:start + chunk]
        l1 = np.abs(blocks[p[:, 0]].astype(np.int64) - blocks[p[:, 1]]).sum(axis=1)
        p = p[l1 <= budget]
        stats["block_filtered_pairs"] += int(len(p))
        if len(p):
            agree = (flat[p[:, 0]] == flat[p[:, 1]]).mean(axis=1)
            similar.extend((int(i), int(j), float(a)) for (i, j), a in zip(p, agree) if a >= similarity)
        bar.update(min(chunk, len(pairs) - start))
    bar.close()
    stats["similar_pairs"] = len(similar)

    groups = groups_around_centres(n, [(i, j) for i, j, _ in similar])
    return groups, stats


def groups_around_centres(n, pairs):
    """Greedy star clustering of a similarity graph (Butina): the node with the most similar
    neighbours (ties: lowest index) becomes a centre and takes all its still unassigned neighbours;
    repeat. Every member is similar to its centre, so unlike connected components a slow drift
    (A~B, B~C, ... ) cannot chain hundreds of different label maps into one group.
    Returns groups of >= 2 members as [centre, other members ascending...], ordered by centre."""
    neighbours = [[] for _ in range(n)]
    for i, j in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    assigned = np.zeros(n, bool)
    groups = []
    for centre in sorted(range(n), key=lambda i: (-len(neighbours[i]), i)):
        if assigned[centre] or not neighbours[centre]:
            continue
        members = sorted(j for j in neighbours[centre] if not assigned[j])
        if not members:
            continue
        assigned[centre] = True
        assigned[members] = True
        groups.append([centre] + members)
    return sorted(groups, key=lambda g: g[0])


def most_typical(stats, candidates, k):
    """The k of `candidates` (indices into `stats`, rows of per-photo colour statistics) closest to
    the median statistics of all of `stats` rows given; ties keep the candidates' order.
    Returns (chosen indices, distances of all candidates)."""
    stats = np.asarray(stats, np.float64)
    centre = np.median(stats, axis=0)
    distance = {i: float(np.linalg.norm(stats[i] - centre)) for i in range(len(stats))}
    ranked = sorted(candidates, key=lambda i: (round(distance[i], 6), candidates.index(i)))
    return ranked[:k], distance
