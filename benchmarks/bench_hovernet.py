"""Accuracy and tile throughput of a HoVer-Net checkpoint on held-out generated tiles.

Tiles come from :func:`pathgen.data.synth.render_tile` with the dataset seeds of ``write_tile_dataset(seed=...)``
(pass a seed the model was not trained or validated on), cycling over the sites. Reported, with the
post-processing stored with the model and with the reference's: per-tile means of PQ, DQ, SQ, AJI, AJI+ and
DICE1 (tiles with no nucleus on either side skipped), CoNIC mPQ+ over the 6 Lizard types (counts pooled over the
tiles); and the CPU time of :func:`pathgen.segment.infer.segment_tile_batch` (network +
post-processing) in tiles/s and Mpx/s.

    OMP_NUM_THREADS=1 python benchmarks/bench_hovernet.py --model sample_data/models/hovernet_small --seed 3
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import append_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sample_data/models/hovernet_small", help="checkpoint folder")
    ap.add_argument("--seed", type=int, default=3, help="dataset seed of the held-out tiles")
    ap.add_argument("-n", type=int, default=40, help="number of tiles")
    ap.add_argument("--size", type=int, default=256, help="tile side (px)")
    ap.add_argument("--sites", default="A,B,C,D,E", help="sites to cycle over")
    ap.add_argument("--ground-max", default="", help="H,E: denser stroma/cytoplasm per tile, as `pathgen data "
                    "synth-tiles --ground-max`")
    ap.add_argument("--clefts-max", type=float, default=0.0, help="stroma clefts per tile, as `synth-tiles`")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    ap.add_argument("--overlay", default=None, help="also write a PNG overlay of the model on a region of the real "
                                                    "sample slide cmu_small_region.svs")
    ap.add_argument("--overlay-region", default="1000,1750,512,512",
                    help="x,y,w,h of that region (level-0 pixels for x,y; w,h at the model's mpp)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pathgen.data.synth import render_tile, tile_seed, varied_params
    from pathgen.data.tissue import TissueParams
    from pathgen.metrics import instance_scores, mpq_plus_conic
    from pathgen.segment.checkpoint import load_model
    from pathgen.segment.infer import nuclei_from_maps, predict_maps, segment_tile_batch
    from pathgen.segment.postprocess import PostProcessConfig

    model = load_model(args.model)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    ground = tuple(float(v) for v in args.ground_max.split(",")) if args.ground_max else None
    # grouped by site, so each batch is one site's tiles: the stain check's reference is fitted per batch, as a
    # slide run fits it per slide
    order = sorted(range(args.n), key=lambda i: (i % len(sites), i))
    tiles = [render_tile(args.size, tile_seed(args.seed, i), sites[i % len(sites)], model.config.mpp,
                         varied_params(TissueParams(), tile_seed(args.seed, i), ground, args.clefts_max))
             for i in order]
    images = np.stack([t.image for t in tiles])

    segment_tile_batch(model, images[:1])  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    nuclei = []
    for start in range(0, len(images), args.batch_size):
        nuclei += segment_tile_batch(model, images[start:start + args.batch_size]).nuclei
    seconds = time.perf_counter() - t0

    keys = ("pq", "dq", "sq", "aji", "aji_plus", "dice1")

    def score(found):
        rows = [instance_scores(t.instances, n.instances) for t, n in zip(tiles, found)
                if t.instances.any() or n.instances.any()]
        means = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
        typed = None
        if model.config.nr_types == 7:
            true = [np.stack([t.instances, t.classes], -1) for t in tiles]
            pred = [np.stack([n.instances, n.class_map()], -1) for n in found]
            typed = mpq_plus_conic(true, pred, n_classes=6)
        return means, typed, sum(int(r["n_true"]) for r in rows), sum(int(r["n_pred"]) for r in rows)

    means, typed, n_true, n_pred = score(nuclei)
    table = [("stored with the model" if model.postprocess is not None else "reference", means, typed)]
    if model.postprocess is not None:  # the same network maps without the stain check, and with the reference's
        maps = predict_maps(model, images, batch_size=args.batch_size)
        if model.postprocess.min_haematoxylin > 0:
            plain = [nuclei_from_maps(maps, i, model.postprocess) for i in range(len(images))]
            plain_means, plain_typed, _, _ = score(plain)
            table.append(("stored, stain check off", plain_means, plain_typed))
        ref = [nuclei_from_maps(maps, i, PostProcessConfig()) for i in range(len(images))]
        ref_means, ref_typed, _, _ = score(ref)
        table.append(("reference (0.5 / 0.4 / 21)", ref_means, ref_typed))
    mpx = images.shape[0] * images.shape[1] * images.shape[2] / 1e6
    pp = model.postprocess
    pp_text = ("reference" if pp is None else f"np_threshold {pp.np_threshold}, marker_threshold "
               f"{pp.marker_threshold}, sobel_size {pp.sobel_size} (chosen on the validation set), stain check "
               f"min_haematoxylin {pp.min_haematoxylin} (reference fitted per batch of one site's tiles)")

    lines = [f"- model: `{args.model}` ({sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{model.config.nr_types} TP channels, {model.config.mpp} µm/px); post-processing stored with it: "
             f"{pp_text}",
             f"- held-out tiles: {args.n} x {args.size}² px from `write_tile_dataset(seed={args.seed})` seeds, sites "
             f"{','.join(sites)}"
             + (f", ground_max {args.ground_max}, clefts_max {args.clefts_max}" if ground or args.clefts_max else "")
             + f"; {n_true} true / {n_pred} predicted nuclei",
             f"- torch threads {args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", "",
             "| post-processing | PQ | DQ | SQ | AJI | AJI+ | Dice (DICE1) | mPQ+ (6 types) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m, t in table:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " | "
                     + (f"{t.mpq_plus:.4f}" if t is not None else "n/a") + " |")
    lines.append("")
    if typed is not None:
        lines += ["PQ+ per type, post-processing stored with the model:", "",
                  "| type | PQ+ | TP | FP | FN |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {c.pq:.4f} | {c.tp} | {c.fp} | {c.fn} |" for name, c in typed.per_class.items()]
        lines.append("")
    lines.append(f"- segment_tile_batch on CPU (network + post-processing): {args.n / seconds:.2f} tiles/s, "
                 f"{mpx / seconds:.3f} Mpx/s ({seconds:.1f} s for {args.n} tiles, batch {args.batch_size}; the "
                 f"machine is shared, so timings are indicative)")
    if args.overlay:
        lines.append(f"- overlay on the real sample: `{args.overlay}` ({write_overlay(model, args)})")
    if args.no_append:
        print("\n".join(lines))
    else:
        append_results("HoVer-Net on held-out generated tiles", lines)


def write_overlay(model, args) -> str:
    """Segment a region of the real sample slide; draw each nucleus outline in its type colour beside the input."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from pathgen.data.fetch import sample_path
    from pathgen.nucleus_types import NUCLEUS_TYPES
    from pathgen.segment.infer import nuclei_from_maps, segment_tile_batch
    from pathgen.io.slide import open_slide

    from pathgen.stain import StainNormalizer
    from pathgen.stain.slide import fit_slide

    x, y, w, h = (int(v) for v in args.overlay_region.split(","))
    with open_slide(sample_path("cmu_small_region.svs")) as slide:
        region = slide.read_region_mpp((x, y), model.config.mpp, (w, h))
        stain = fit_slide(slide, StainNormalizer("macenko"))  # the stain check's reference, as `pathgen segment`
    seg = segment_tile_batch(model, region[None], stain=stain)
    nuclei = seg.nuclei[0]
    unchecked = nuclei_from_maps(seg.maps, 0, model.postprocess)  # the same maps, stain check off
    colours = np.array([t.color for t in NUCLEUS_TYPES] + [(0, 255, 0)] * 16, np.uint8)

    def draw(found):
        edge = find_boundaries(found.instances, mode="inner")
        overlay = region.copy()
        overlay[edge] = colours[found.class_map()[edge]] if model.config.nr_types else (0, 255, 0)
        return overlay

    panels = [region] + ([draw(unchecked)] if model.postprocess is not None else []) + [draw(nuclei)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.overlay)
    counts = np.bincount(nuclei.types, minlength=max(model.config.nr_types, 1))
    names = model.config.type_names
    by_type = ", ".join(f"{names[t - 1] if t - 1 < len(names) else t}: {counts[t]}"
                        for t in range(1, len(counts)) if counts[t])
    return (f"region x={x} y={y} {w}x{h} px, {nuclei.count} nuclei ({unchecked.count} without the stain check); "
            f"{by_type}; panels: image, stain check off, stain check on")


if __name__ == "__main__":
    main()
