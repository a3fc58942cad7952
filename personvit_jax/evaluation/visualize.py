"""Rank-list pictures: a query followed by its top-k gallery images, framed by outcome; and
attention maps drawn over the images (`attention_image`).

Frames: blue = the query, green = true match (same pid, other camera), red = wrong identity (incl.
distractors), grey = junk (same pid AND camera: shown where it ranks, ignored by the metrics),
dark grey = no labels (the extract tool's look-ups).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from personvit_jax import files


COLOURS = {"query": (40, 90, 220), "match": (30, 170, 60), "wrong": (220, 40, 40),
           "junk": (150, 150, 150), "unlabeled": (60, 60, 60)}
THUMB_HW = (128, 64)
BORDER = 4
CAPTION = 14


def outcome(q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray) -> list[str]:
    """'match' / 'wrong' / 'junk' of gallery entries for one query (Market-1501 protocol)."""
    same = np.asarray(g_pids) == q_pid
    junk = same & (np.asarray(g_camids) == q_camid)
    return ["junk" if j else "match" if s else "wrong" for s, j in zip(same, junk)]


def _tile(image: Image.Image, colour, caption: str) -> Image.Image:
    h, w = THUMB_HW
    tile = Image.new("RGB", (w + 2 * BORDER, h + 2 * BORDER + CAPTION), (255, 255, 255))
    tile.paste(Image.new("RGB", (w + 2 * BORDER, h + 2 * BORDER), colour), (0, 0))
    tile.paste(image.resize((w, h), Image.BILINEAR), (BORDER, BORDER))
    ImageDraw.Draw(tile).text((2, h + 2 * BORDER), caption[:12], fill=(0, 0, 0))
    return tile


def rank_list_image(query: Image.Image, gallery: Sequence[Image.Image], kinds: Sequence[str],
                    captions: Optional[Sequence[str]] = None, title: str = "") -> Image.Image:
    """One row: the query, a gap, then the ranked gallery images framed by `kinds`."""
    captions = captions or [f"#{i + 1}" for i in range(len(gallery))]
    tiles = [_tile(query, COLOURS["query"], "query")]
    tiles += [_tile(g, COLOURS[k], c) for g, k, c in zip(gallery, kinds, captions)]
    tw, th = tiles[0].size
    gap = 12
    top = CAPTION if title else 0
    row = Image.new("RGB", (len(tiles) * tw + gap, th + top), (255, 255, 255))
    for i, t in enumerate(tiles):
        row.paste(t, (i * tw + (gap if i else 0), top))
    if title:
        ImageDraw.Draw(row).text((2, 1), title, fill=(0, 0, 0))
    return row


def stack_rows(rows: Sequence[Image.Image]) -> Image.Image:
    """Rows one under the other (left-aligned, white background)."""
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)),
                    (255, 255, 255))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def save_png(image: Image.Image, path: str) -> None:
    """Writes the picture atomically (never a half-written file)."""
    files.atomic_write(path, lambda f: image.save(f, format="PNG"))


def top_k_rows(dist_row: np.ndarray, k: int) -> np.ndarray:
    """Gallery indices of the k nearest, ties by gallery index (the metrics' rule)."""
    k = min(k, len(dist_row))
    part = np.argpartition(dist_row, k - 1)[:k] if k < len(dist_row) else np.arange(len(dist_row))
    # include every entry tied with the k-th so the stable order below is the true one
    kth = dist_row[part].max()
    cand = np.nonzero(dist_row <= kth)[0]
    return cand[np.lexsort((cand, dist_row[cand]))][:k]


def write_rank_lists(out_dir: str, query, gallery, dist_fn, per_query: dict,
                     chosen: Sequence[int], top_k: int = 10, num_worst: int = 16) -> list[str]:
    """ranks/<query name>.png for `chosen` query indices and ranks/worst_queries.png (the
    valid queries with the lowest AP, worst first). `query` / `gallery`: splits (`image(i)`,
    pids, camids, paths naming the images); dist_fn(query indices) -> [c, G] distances. Returns the files written."""
    if top_k < 1:
        raise ValueError(f"rank lists need top_k >= 1, got {top_k}")
    os.makedirs(out_dir, exist_ok=True)
    valid = np.nonzero(per_query["valid"])[0]
    worst = valid[np.argsort(per_query["ap"][valid], kind="stable")][:num_worst]
    wanted = sorted(set(int(i) for i in chosen) | set(int(i) for i in worst))
    dist = np.asarray(dist_fn(np.asarray(wanted, np.int64))) if wanted else None
    rows, written = {}, []
    for r, qi in enumerate(wanted):
        top = top_k_rows(dist[r], top_k)
        kinds = outcome(query.pids[qi], query.camids[qi], gallery.pids[top], gallery.camids[top])
        ap = per_query["ap"][qi] if per_query["valid"][qi] else float("nan")
        name = os.path.splitext(os.path.basename(query.paths[qi]))[0]
        rows[qi] = rank_list_image(query.image(qi), [gallery.image(j) for j in top], kinds,
                                   title=f"{name}  AP {ap:.3f}")
    for qi in chosen:
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(query.paths[qi]))[0]
                            + ".png")
        save_png(rows[int(qi)], path)
        written.append(path)
    if len(worst):
        path = os.path.join(out_dir, "worst_queries.png")
        save_png(stack_rows([rows[int(qi)] for qi in worst]), path)
        written.append(path)
    return written


def heat_overlay(image: Image.Image, map_hw: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """`image` with a [h, w] map (e.g. attention on the patch grid) blended over it: the map is
    scaled to [0, 1], resized bilinearly to the image and coloured black -> red -> yellow ->
    white ('hot'), so the brightest regions are where the map is highest."""
    m = np.asarray(map_hw, np.float32)
    m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    m = np.asarray(Image.fromarray(m).resize(image.size, Image.BILINEAR), np.float32)[..., None]
    heat = np.clip(3.0 * m - np.array([0.0, 1.0, 2.0], np.float32), 0.0, 1.0) * 255.0
    out = (1.0 - alpha) * np.asarray(image.convert("RGB"), np.float32) + alpha * heat
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def attention_image(images: Sequence[Image.Image], maps_bkhw: np.ndarray, alpha: float = 0.6,
                    size_hw: tuple[int, int] = (256, 128)) -> Image.Image:
    """One row per image: the image, then one `heat_overlay` per map (e.g. per attention head,
    maps [B, heads, gh, gw] from evaluation.attention), captioned, each `size_hw`."""
    if len(images) != len(maps_bkhw):
        raise ValueError(f"{len(images)} images but maps for {len(maps_bkhw)}")
    h, w = size_hw
    rows = []
    for image, maps in zip(images, maps_bkhw):
        image = image.convert("RGB").resize((w, h), Image.BILINEAR)
        tiles = [image] + [heat_overlay(image, m, alpha) for m in maps]
        row = Image.new("RGB", (len(tiles) * (w + BORDER), h + CAPTION), (255, 255, 255))
        for i, (tile, caption) in enumerate(zip(tiles, ["image"] + [f"head {k}" for k in
                                                                   range(len(maps))])):
            row.paste(tile, (i * (w + BORDER), CAPTION))
            ImageDraw.Draw(row).text((i * (w + BORDER) + 2, 1), caption, fill=(0, 0, 0))
        rows.append(row)
    return stack_rows(rows)
