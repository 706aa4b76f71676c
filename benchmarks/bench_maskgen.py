"""MaskGen realism: do generated masks look like the held-out masks, scheduler by scheduler?

For ``--n`` presence vectors drawn from the checkpoint's recorded training distribution, masks are generated at
``--size`` px and compared with ``--n`` held-out procedural masks of the same size (site A, seed 2024, never used
for training; see ``bench_nasdm.heldout_crops``):

* nuclei per mask, mean nucleus area (px), nuclear pixel fraction;
* share of nuclei below 20 px (fragments: real nuclei at this scale are 40–150 px);
* solidity (area / convex-hull area) of nuclei, median: blobs ≈ 0.9, noise fragments much lower;
* per-type pixel shares of nuclear pixels (generated vs held-out), as an L1 distance;
* instance awareness: touching same-type pairs kept as separate instances;
* seconds per mask (one thread);
* with ``--nasdm-fidelity SCHED:STEPS:S``: masks of the first sweep setting rendered by NASDM and segmented by
  HoVer-Net, scored against the generated masks (the whole synthesize chain, as in ``bench_nasdm``).

    python benchmarks/bench_maskgen.py [--maskgen sample_data/models/maskgen_small] [--n 32] [--size 32] \
        [--nasdm-fidelity ddpm:100:3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import append_results  # noqa: E402

ROOT = HERE.parent


def mask_stats(masks) -> dict:
    """Statistics of a list of ``(instances, classes)`` pairs (see the module docstring)."""
    from skimage.measure import regionprops

    from bench_nasdm import touching_same_type_pairs

    counts, areas, solid, fg = [], [], [], []
    type_px = np.zeros(7)
    touch = 0
    for inst, cls in masks:
        props = regionprops(np.asarray(inst, np.int32))
        counts.append(len(props))
        areas += [p.area for p in props]
        solid += [p.solidity for p in props if p.area >= 3]
        fg.append(float((inst > 0).mean()))
        type_px += np.bincount(np.asarray(cls[inst > 0], np.int64), minlength=7)[:7]
        touch += touching_same_type_pairs(inst, cls)
    areas = np.asarray(areas, float)
    share = type_px[1:] / max(type_px[1:].sum(), 1)
    return {"nuclei": float(np.mean(counts)), "area": float(areas.mean()) if areas.size else float("nan"),
            "fg": float(np.mean(fg)), "fragments": float((areas < 20).mean()) if areas.size else float("nan"),
            "solidity": float(np.median(solid)) if solid else float("nan"), "touch": touch, "share": share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maskgen", default=str(ROOT / "sample_data/models/maskgen_small"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--sweep", nargs="*", default=["ddpm:250", "ddpm:100", "ddpm:50", "ddim:50", "dpm:25"],
                    help="scheduler:steps settings")
    ap.add_argument("--nasdm-fidelity", metavar="SCHED:STEPS:S",
                    help="render the first sweep setting's masks with NASDM and score them with HoVer-Net")
    ap.add_argument("--nasdm", default=str(ROOT / "sample_data/models/nasdm_small"))
    ap.add_argument("--hovernet", default=str(ROOT / "sample_data/models/hovernet_small"))
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bench_nasdm import heldout_crops

    from pathgen.io.checkpoint import read_config
    from pathgen.maskgen.pipeline import MaskGenPipeline

    held = [(inst, cls) for _, inst, cls in heldout_crops(args.n, args.size)]
    config = read_config(args.maskgen)
    table = config.get("presence_distribution")
    rng = np.random.default_rng(0)
    counts = np.array([e["count"] for e in table], float)
    pres = np.stack([table[k]["vector"] for k in rng.choice(len(table), len(held), p=counts / counts.sum())])
    pipe = MaskGenPipeline.from_pretrained(args.maskgen)
    step = config.get("training", {}).get("step")

    ref = mask_stats(held)

    def row(name: str, s: dict, spm: str) -> str:
        l1 = float(np.abs(s["share"] - ref["share"]).sum())
        return (f"| {name} | {spm} | {s['nuclei']:.1f} | {s['area']:.1f} | {s['fg']:.3f} | {s['fragments']:.2f} | "
                f"{s['solidity']:.2f} | {l1:.2f} | {s['touch']} |")

    lines = [f"- MaskGen checkpoint: `{os.path.relpath(args.maskgen, ROOT)}` (training step {step}); {len(held)} masks of {args.size} px per row, guidance {args.guidance:g}, "
             f"torch threads {args.threads}",
             "- held-out: procedural tiles seed 2024 site A (never trained on); type-share L1 = Σ|generated − "
             "held-out| over the six nucleus types' shares of nuclear pixels",
             "", "| masks | s/mask | nuclei/mask | mean area (px) | nuclear px | fragments (<20 px) | solidity "
                 "(median) | type-share L1 | touching same-type pairs kept apart |",
             "|---|---|---|---|---|---|---|---|---|", row("held-out (real)", ref, "–")]
    print("\n".join(lines), flush=True)
    first = None
    for setting in args.sweep:
        sched, steps = setting.split(":")
        pipe.set_scheduler(sched)
        t0 = time.perf_counter()
        gen = pipe(pres.astype(np.float32), guidance=args.guidance, steps=int(steps), seed=0, size=args.size).masks
        spm = (time.perf_counter() - t0) / len(gen)
        lines.append(row(f"{sched} {steps} steps", mask_stats(gen), f"{spm:.2f}"))
        print(lines[-1], flush=True)
        first = (setting, gen) if first is None else first
    if args.nasdm_fidelity and first is not None:
        from bench_nasdm import Segmenter, _fmt, fidelity, synth

        from pathgen.nasdm.pipeline import NASDMPipeline

        sched, steps, s = args.nasdm_fidelity.split(":")
        seg = Segmenter(Path(args.hovernet))
        imgs, spt = synth(NASDMPipeline.from_pretrained(args.nasdm), first[1], float(s), int(steps), sched)
        held_imgs = [img for img, _, _ in heldout_crops(args.n, args.size)]
        lines += ["", f"Whole chain: MaskGen ({first[0]}) masks → NASDM ({sched} {steps} steps, s = {float(s):g}, "
                      f"{spt:.2f} s/tile) → {seg.name}, scored against the generated masks "
                      "(Dice | PQ | per-type Dice); the segmenter on the held-out real images for reference",
                  "", f"- MaskGen + NASDM: {_fmt(fidelity(first[1], imgs, seg), seg.typed)}",
                  f"- held-out real images: {_fmt(fidelity(held, held_imgs, seg), seg.typed)}"]
        print("\n".join(lines[-2:]), flush=True)
    if not args.no_append:
        append_results("MaskGen mask realism (bench_maskgen.py)", lines)


if __name__ == "__main__":
    main()
