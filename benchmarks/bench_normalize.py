"""Whole-slide normalisation: consistency of slide-level vs per-tile fitting, and throughput/memory vs convert.

Consistency (issue 3): on the real sample slide (regions of epidermis, dermis and glass differ in tissue content)
normalise with one slide-level fit and with a fit per tile, then measure on the output
  * seam excess: mean |Δ colour| between the two pixel columns/rows that meet at a tile border, minus the same
    between neighbouring columns/rows inside tiles (0 = borders look like anything else);
  * stain-vector spread: the Macenko H and E vectors fitted on each tissue tile of the OUTPUT, as the angular
    standard deviation across tiles (degrees): one stain everywhere gives a small spread.
Throughput (issue 3): `pathgen normalize --method macenko|vahadane` against `pathgen convert` on the same generated
slide, as a ratio, with peak RSS.

    python benchmarks/bench_normalize.py --consistency --throughput --size 20000
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import WORK, append_results, run_measured


def seam_ratio(src: np.ndarray, out: np.ndarray, tile: int, mask: np.ndarray) -> float:
    """How much more the output's colour jumps at tile borders than inside tiles, relative to the input at the
    same places: (Σ_border |Δout| / Σ_border |Δin|) / (Σ_inside |Δout| / Σ_inside |Δin|). 1 = no seams."""
    a, b = src.astype(np.float32), out.astype(np.float32)
    ratios = []
    for axis in (0, 1):
        da, db = np.abs(np.diff(a, axis=axis)).sum(-1), np.abs(np.diff(b, axis=axis)).sum(-1)
        m = (mask[1:] & mask[:-1]) if axis == 0 else (mask[:, 1:] & mask[:, :-1])
        border = np.zeros(da.shape[axis], bool)
        border[tile - 1::tile] = True
        sel = (border[:, None] if axis == 0 else border[None, :]) & m
        ins = (~border[:, None] if axis == 0 else ~border[None, :]) & m
        ratios.append((db[sel].sum() / da[sel].sum()) / (db[ins].sum() / da[ins].sum()))
    return float(np.mean(ratios))


def source_vector_spread(src: np.ndarray, tile: int, mask: np.ndarray, method: str) -> tuple[float, float, int]:
    """Angular RMS spread (degrees) of the H and E vectors fitted on each tissue tile of the source: the spread of
    the transforms per-tile mode applies across one slide (slide-level mode applies one: spread 0)."""
    from pathgen.stain.matrix import angle_deg
    from pathgen.stain.normalize import StainNormalizer

    fitter = StainNormalizer(method)
    hs, es = [], []
    for y in range(0, src.shape[0] - tile + 1, tile):
        for x in range(0, src.shape[1] - tile + 1, tile):
            if mask[y:y + tile, x:x + tile].mean() < 0.5:
                continue
            fit = fitter.fit_images(src[y:y + tile, x:x + tile])
            if fit.has_tissue:
                hs.append(fit.matrix.vectors[0])
                es.append(fit.matrix.vectors[1])

    def spread(vs):
        mean = np.mean(vs, axis=0)
        return float(np.sqrt(np.mean([angle_deg(v, mean) ** 2 for v in vs])))

    return spread(hs), spread(es), len(hs)


def consistency(lines: list[str]) -> None:
    from pathgen.data.fetch import sample_path
    from pathgen.engine import EngineConfig
    from pathgen.io.slide import open_slide
    from pathgen.stain.normalize import StainNormalizer
    from pathgen.stain.slide import normalize_slide
    from pathgen.engine.tissue import tissue_mask_from_rgb

    src_path, target = sample_path("cmu_small_region.svs"), sample_path("target_image.png")
    with open_slide(src_path) as s:
        w, h = s.dimensions
        src = s.read_region((0, 0), 0, (w, h))  # a small slide: fine to hold for the measurement
    mask = tissue_mask_from_rgb(src, 0.5)
    rows = ["| method | fit | overlap | seam ratio (1 = none) | drift 256 vs 384 px tiles (mean \\|ΔRGB\\|) | "
            "source H / E vector spread (°) |", "|---|---|---|---|---|---|"]
    for method in ("macenko", "vahadane"):
        hs, es, n = source_vector_spread(src, 256, mask, method)
        for per_tile, overlap in ((False, 32), (True, 0), (True, 32)):
            outs = {}
            for tile in (256, 384):
                out = WORK / f"consistency_{method}_{per_tile}_{overlap}_{tile}.tiff"
                norm = StainNormalizer(method).fit_target(str(target))
                normalize_slide(src_path, out, norm, per_tile=per_tile, overwrite=True, compression="zlib",
                                engine=EngineConfig(tile_size=tile, overlap=overlap), skip_background=False)
                with open_slide(out) as s:
                    outs[tile] = s.read_region((0, 0), 0, (w, h))
                out.unlink(missing_ok=True)
                out.with_name(out.name + ".json").unlink(missing_ok=True)
            ratio = seam_ratio(src, outs[256], 256, mask)
            drift = float(np.abs(outs[256].astype(np.float32) - outs[384]).sum(-1)[mask].mean())
            spread = f"{hs:.2f} / {es:.2f} ({n} tiles)" if per_tile else "0 / 0 (one fit)"
            rows.append(f"| {method} | {'per tile' if per_tile else 'slide-level'} | {overlap} | {ratio:.3f} | "
                        f"{drift:.2f} | {spread} |")
            print(rows[-1], flush=True)
    lines += ["### Consistency on the real sample slide (cmu_small_region.svs → target_image.png)", "",
              "Seam ratio: colour jumps across 256 px tile borders relative to inside tiles, each against the input "
              "at the same pixels. Drift: the same slide normalised with 256 and 384 px tiles, mean |ΔRGB| "
              "(sum over channels) on tissue — a consistent method does not depend on the tiling.", ""]
    lines += rows + [""]


#: job label → extra `pathgen normalize` arguments
JOBS = {"macenko": ["--method", "macenko"], "vahadane": ["--method", "vahadane"],
        "saasn-map": ["--method", "saasn", "--saasn-mode", "stain-map"],
        "saasn": ["--method", "saasn", "--saasn-mode", "generator"]}


def throughput(lines: list[str], size: int, methods: tuple[str, ...] = ("macenko", "vahadane")) -> None:
    from bench_convert import make_slide

    src = make_slide(size)
    rows = ["| job | wall (s) | ratio to convert | peak RSS (MB) |", "|---|---|---|---|"]
    out = WORK / "thr_out.tiff"
    out.unlink(missing_ok=True)
    base, rss = run_measured([sys.executable, "-m", "pathgen", "convert", str(src), "-o", str(out), "--quiet"])
    rows.append(f"| convert | {base:.1f} | 1.00 | {rss:.0f} |")
    print(rows[-1], flush=True)
    for method in methods:
        out.unlink(missing_ok=True)
        wall, rss = run_measured([sys.executable, "-m", "pathgen", "normalize", str(src), "-o", str(out),
                                  *JOBS[method], "--quiet"])
        rows.append(f"| normalize {' '.join(JOBS[method])} | {wall:.1f} | {wall / base:.2f} | {rss:.0f} |")
        print(rows[-1], flush=True)
    out.unlink(missing_ok=True)
    lines += [f"### Throughput on a generated {size}×{size} slide (JPEG q90, 512 px tiles, default target)", ""]
    lines += rows + ["", "Targets: macenko ≤ 2× convert, vahadane ≤ 3×, peak RSS ≤ 1500 MB. SAASN: the shipped model "
                     "(`sample_data/models/saasn_small`, CPU); stain-map mode runs the generator on 64 sampled "
                     "tissue tiles only, generator mode on every window.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--consistency", action="store_true")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--methods", default="macenko,vahadane",
                    help=f"comma-separated throughput jobs among {', '.join(JOBS)}")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if args.consistency:
        consistency(lines)
    if args.throughput:
        throughput(lines, args.size, tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    if lines:
        append_results("Whole-slide stain normalisation (issue 3)", lines)


if __name__ == "__main__":
    main()
