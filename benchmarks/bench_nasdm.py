"""NASDM / MaskGen quality and speed: mask fidelity, guidance sweep, scheduler/steps sweep, MaskGen statistics.

Held-out "real" data are procedural tiles (``pathgen.data.synth``, site A, a seed never used for training);
``--n`` square crops of ``--size`` px with at least 50 % tissue give the held-out masks and real images.

* **Mask fidelity** (METHODS.md §6.2, §6.6): synthetic tiles are rendered from the held-out masks, segmented by
  the shipped HoVer-Net model (``--hovernet``), and scored against the conditioning masks: pooled binary Dice of
  nuclear pixels, mean PQ per tile, and pooled Dice per nucleus type (type maps). The same segmenter on the
  real images gives its own ceiling. Without a HoVer-Net checkpoint a labelled proxy is used (Otsu on the
  haematoxylin channel of a colour deconvolution; binary Dice and PQ only).
* **Guidance sweep** s ∈ {0, 1, 1.5, 2, 3} and a **scheduler/steps sweep** with seconds per tile (one thread).
* **MaskGen**: nuclei per mask and mean nucleus area against the held-out masks, touching same-type pairs kept
  apart (instance-aware decoding), and the fidelity of MaskGen + NASDM.
* **KID** between synthetic and real crops on HoVer-Net-encoder features (no Inception weights are available
  offline; the extractor is recorded), only with a HoVer-Net checkpoint.

    python benchmarks/bench_nasdm.py [--n 24] [--size 64] [--quick]
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

from _common import WORK, append_results  # noqa: E402

ROOT = HERE.parent
TYPE_NAMES = ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")


def heldout_crops(n: int, size: int, seed: int = 2024):
    """``n`` (image, instances, classes) crops of held-out procedural tiles (site A, seed ``seed``)."""
    from pathgen.data.synth import write_tile_dataset
    from pathgen.nasdm.dataset import CropSampler, load_tiles

    folder = WORK / f"nasdm_heldout_s{seed}"
    if not (folder / "dataset.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        write_tile_dataset(folder, 16, seed=seed, size=256, sites="A", overwrite=True)
    sampler = CropSampler(load_tiles(folder), size, min_tissue=0.5, stride=size // 2, augment=False)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(sampler.origins), size=min(n, len(sampler.origins)), replace=False)
    crops = []
    for idx in sorted(picks):
        k, y, x = (int(v) for v in sampler.origins[idx])
        t = sampler.tiles[k]
        crops.append((t.image[y:y + size, x:x + size], t.instances[y:y + size, x:x + size],
                      t.classes[y:y + size, x:x + size]))
    return crops


class Segmenter:
    """HoVer-Net from a checkpoint, or the labelled haematoxylin-Otsu proxy."""

    def __init__(self, path: Path | None):
        self.model = None
        if path is not None and Path(path).exists():
            from pathgen.segment.checkpoint import load_model

            self.model = load_model(path)
            self.name = f"HoVer-Net ({path})"
            self.typed = bool(self.model.config.nr_types)
        else:
            self.name = "proxy: Otsu on the haematoxylin channel (no HoVer-Net checkpoint found)"
            self.typed = False

    def __call__(self, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        if self.model is not None:
            from pathgen.segment.infer import segment_tile_batch

            res = segment_tile_batch(self.model, np.ascontiguousarray(images), device="cpu")
            return [(t.instances, t.class_map() if self.typed else None) for t in res.nuclei]
        from scipy import ndimage as ndi
        from skimage.color import rgb2hed
        from skimage.filters import threshold_otsu

        out = []
        for img in images:
            h = rgb2hed(img)[..., 0]
            fg = h > threshold_otsu(h) if np.ptp(h) > 0 else np.zeros(h.shape, bool)
            fg = ndi.binary_opening(fg, iterations=1)
            out.append((ndi.label(fg)[0].astype(np.int32), None))
        return out


def fidelity(masks, images, segmenter: Segmenter) -> dict:
    """Pooled binary Dice, mean PQ and pooled per-type Dice of ``segmenter(images)`` against ``masks``."""
    from pathgen.metrics.instance import pq
    from pathgen.metrics.semantic import dice_masks

    preds = segmenter(np.stack(images))
    true_fg = np.concatenate([(m[0] > 0).ravel() for m in masks])
    pred_fg = np.concatenate([(p[0] > 0).ravel() for p in preds])
    res = {"dice": dice_masks(true_fg, pred_fg),
           "pq": float(np.mean([pq(m[0], p[0]).pq for m, p in zip(masks, preds)]))}
    if segmenter.typed:
        tc = np.concatenate([m[1].ravel() for m in masks])
        pc = np.concatenate([p[1].ravel() for p in preds])
        for c, name in enumerate(TYPE_NAMES, start=1):
            if (tc == c).any():
                res[f"dice_{name}"] = dice_masks(tc == c, pc == c)
    return res


def synth(pipe, masks, guidance, steps, scheduler, batch: int = 8, seed: int = 0):
    """Images for ``masks`` and seconds per tile."""
    pipe.set_scheduler(scheduler)
    t0 = time.perf_counter()
    images = []
    for start in range(0, len(masks), batch):
        chunk = masks[start:start + batch]
        images.extend(pipe(chunk, guidance=guidance, steps=steps, seed=seed + start).images)
    return images, (time.perf_counter() - t0) / len(masks)


def _fmt(res: dict, typed: bool) -> str:
    cells = [f"{res['dice']:.3f}", f"{res['pq']:.3f}"]
    if typed:
        cells.append(" ".join(f"{k[5:8]} {v:.2f}" for k, v in res.items() if k.startswith("dice_")))
    return " | ".join(cells)


def touching_same_type_pairs(instances: np.ndarray, classes: np.ndarray) -> int:
    """Pairs of distinct instances of one type that share a 4-neighbour boundary."""
    pairs = set()
    for a, b in ((instances[:, 1:], instances[:, :-1]), (instances[1:, :], instances[:-1, :])):
        ca = classes[:, 1:] if a.shape[1] != instances.shape[1] else classes[1:, :]
        cb = classes[:, :-1] if a.shape[1] != instances.shape[1] else classes[:-1, :]
        sel = (a > 0) & (b > 0) & (a != b) & (ca == cb)
        pairs.update(zip(np.minimum(a[sel], b[sel]).tolist(), np.maximum(a[sel], b[sel]).tolist()))
    return len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nasdm", default=str(ROOT / "sample_data/models/nasdm_small"))
    ap.add_argument("--maskgen", default=str(ROOT / "sample_data/models/maskgen_small"))
    ap.add_argument("--hovernet", default=str(ROOT / "sample_data/models/hovernet_small"))
    ap.add_argument("--n", type=int, default=12, help="held-out masks")
    ap.add_argument("--size", type=int, default=48, help="mask / tile size in pixels (> the 32 px window: the "
                                                         "tiles are rendered by window fusion)")
    ap.add_argument("--quick", action="store_true", help="fewer sweep points")
    ap.add_argument("--only", nargs="+", metavar="SCHED:STEPS:S",
                    help="measure only these settings (e.g. ddpm:250:3), no sweeps, MaskGen or KID")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from pathgen.io.checkpoint import read_config
    from pathgen.nasdm.pipeline import NASDMPipeline

    crops = heldout_crops(args.n, args.size)
    masks = [(inst, cls) for _, inst, cls in crops]
    real = [img for img, _, _ in crops]
    seg = Segmenter(Path(args.hovernet))
    pipe = NASDMPipeline.from_pretrained(args.nasdm, scheduler="dpm")
    ncfg = read_config(args.nasdm)
    typed = seg.typed
    head = "| setting | s/tile | Dice | PQ |" + (" per-type Dice |" if typed else "")
    rule = "|---|---|---|---|" + ("---|" if typed else "")
    lines = [f"- NASDM checkpoint: `{args.nasdm}` (step {ncfg.get('training', {}).get('step')}, "
             f"{ncfg['model']['image_size']} px windows, overlap {pipe.overlap} px)",
             f"- held-out masks: {len(masks)} crops of {args.size} px, procedural tiles seed 2024 site A",
             f"- segmenter: {seg.name}",
             f"- torch threads: 1; 1-min load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
             "", head, rule]
    real_res = fidelity(masks, real, seg)
    lines.append(f"| real held-out images (segmenter ceiling) | – | {_fmt(real_res, typed)} |")

    if args.only:
        for spec in args.only:
            sched, steps, s = spec.split(":")
            imgs, spt = synth(pipe, masks, float(s), int(steps), sched)
            lines.append(f"| {sched} {steps} steps (s={float(s):g}) | {spt:.2f} | "
                         f"{_fmt(fidelity(masks, imgs, seg), typed)} |")
            print(lines[-1], flush=True)
        if not args.no_append:
            append_results("NASDM mask fidelity, extra settings (bench_nasdm.py)", lines)
        return

    # guidance sweep
    base_sched, base_steps = "ddim", (10 if args.quick else 25)
    for s in ((0.0, 1.0, 2.0) if args.quick else (0.0, 1.0, 1.5, 2.0, 3.0)):
        imgs, spt = synth(pipe, masks, s, base_steps, base_sched)
        lines.append(f"| guidance s={s:g} ({base_sched}, {base_steps} steps) | {spt:.2f} | "
                     f"{_fmt(fidelity(masks, imgs, seg), typed)} |")
        print(lines[-1], flush=True)
    # scheduler / steps sweep
    # (ddim 25 at s = 1.5 is the guidance sweep's row; DDPM with the reference code's 250 steps costs 10x the
    # 25-step rows and is left out on a CPU)
    sweep = ([("dpm", 10, 1.5), ("ddpm", 50, 1.5)] if args.quick else
             [("ddpm", 50, 1.5), ("ddpm", 50, 3.0), ("ddpm", 100, 3.0), ("ddim", 10, 1.5), ("ddim", 50, 1.5),
              ("dpm", 10, 1.5), ("dpm", 25, 1.5)])
    for sched, steps, s in sweep:
        imgs, spt = synth(pipe, masks, s, steps, sched)
        lines.append(f"| {sched} {steps} steps (s={s:g}) | {spt:.2f} | {_fmt(fidelity(masks, imgs, seg), typed)} |")
        print(lines[-1], flush=True)

    # MaskGen
    if Path(args.maskgen).exists():
        from pathgen.maskgen.pipeline import MaskGenPipeline

        mg = MaskGenPipeline.from_pretrained(args.maskgen, scheduler="dpm")
        table = read_config(args.maskgen).get("presence_distribution")
        rng = np.random.default_rng(0)
        counts = np.array([e["count"] for e in table], float)
        pres = np.stack([table[k]["vector"] for k in rng.choice(len(table), len(masks), p=counts / counts.sum())])
        t0 = time.perf_counter()
        gen = mg(pres.astype(np.float32), steps=base_steps, seed=0, size=args.size).masks
        mg_spt = (time.perf_counter() - t0) / len(gen)

        def stats(ms):
            count = [len(np.unique(m[0][m[0] > 0])) for m in ms]
            areas = np.concatenate([np.unique(m[0][m[0] > 0], return_counts=True)[1] for m in ms])
            fg = np.mean([(m[0] > 0).mean() for m in ms])
            touch = sum(touching_same_type_pairs(*m) for m in ms)
            return np.mean(count), (areas.mean() if areas.size else float("nan")), fg, touch

        rn, ra, rf, rt = stats(masks)
        gn, ga, gf, gt = stats(gen)
        imgs, spt = synth(pipe, gen, 1.5, base_steps, base_sched)
        res = fidelity(gen, imgs, seg)
        lines += ["", f"- MaskGen checkpoint: `{args.maskgen}`, {base_sched} {base_steps} steps, "
                      f"{mg_spt:.2f} s/mask at {args.size} px",
                  f"- per mask, generated vs held-out: {gn:.1f} vs {rn:.1f} nuclei, mean nucleus area {ga:.1f} vs "
                  f"{ra:.1f} px, nuclear pixel fraction {gf:.2f} vs {rf:.2f}; touching same-type pairs kept as "
                  f"separate instances: {gt} vs {rt}",
                  f"- MaskGen + NASDM (s=1.5): {spt:.2f} s/tile, Dice | PQ = {_fmt(res, typed)}"]
        print("\n".join(lines[-3:]), flush=True)

    # KID on HoVer-Net encoder features
    if seg.model is not None:
        from pathgen.metrics.fid import ModuleExtractor, kid_from_features

        class LastFeature(torch.nn.Module):
            def __init__(self, encoder):
                super().__init__()
                self.encoder = encoder

            def forward(self, x):
                feats = self.encoder(x)
                return feats[-1] if isinstance(feats, (list, tuple)) else feats

        ext = ModuleExtractor(LastFeature(seg.model.encoder), "HoVer-Net encoder (last stage, mean-pooled)")

        def feats(images):
            return ext([torch.from_numpy(np.ascontiguousarray(i.transpose(2, 0, 1))).float() / 255.0
                        for i in images]).double().numpy()

        imgs, _ = synth(pipe, masks, 1.5, base_steps, base_sched, seed=100)
        real_f, syn_f = feats(real), feats(imgs)
        kid = kid_from_features(real_f, syn_f, subset_size=len(real), n_subsets=1, seed=0)
        real_b = feats([np.ascontiguousarray(np.rot90(i)) for i in real])
        kid_ref = kid_from_features(real_f, real_b, subset_size=len(real), n_subsets=1, seed=0)
        lines.append(f"- KID on {ext.name} features, {len(real)} vs {len(real)} images (one subset; not "
                     f"Inception, not comparable to published KID): real vs NASDM (ddim 25, s=1.5) "
                     f"{kid.mean:.3g}; real vs the same real images rotated 90° {kid_ref.mean:.3g}")

    if not args.no_append:
        append_results("NASDM / MaskGen synthesis quality (bench_nasdm.py)", lines)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
