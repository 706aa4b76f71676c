"""Downstream value of NASDM data (METHODS.md §6–7, Tables 5.3/5.4 at small scale).

HoVer-Net is trained three ways and scored on the same held-out "real" tiles:

* **real**: real crops with their masks;
* **real + synthetic**: the same real crops plus NASDM images rendered from the *same* masks;
* **synthetic**: only the NASDM images (with the masks they were rendered from).

"Real" is the procedural generator (site A, the stain NASDM was trained on), held out by seed: training masks,
validation crops (checkpoint choice) and test crops come from three seeds that no model saw. Every configuration
is trained with ``--seeds`` seeds; the table gives mean ± standard deviation of PQ, AJI and Dice on the test
crops.

    python benchmarks/bench_downstream.py [--n-train 48] [--steps 100] [--guidance 3] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import WORK, append_results  # noqa: E402
from bench_nasdm import heldout_crops  # noqa: E402

ROOT = HERE.parent


def samples(crops, prefix: str, images=None):
    from pathgen.segment.data import NucleiSample

    return [NucleiSample(f"{prefix}{i:03d}", np.ascontiguousarray(img if images is None else images[i]),
                         inst.astype(np.int32), cls.astype(np.uint8))
            for i, (img, inst, cls) in enumerate(crops)]


def dataset(items):
    from pathgen.data.tissue import CLASS_NAMES
    from pathgen.segment.data import ListDataset

    return ListDataset(items, has_classes=True, class_names=CLASS_NAMES, mpp=0.5)


def synthesise(args, crops) -> tuple[list[np.ndarray], float]:
    """NASDM images for the masks of ``crops`` (cached in the work folder), seconds per tile."""
    from pathgen.nasdm.pipeline import NASDMPipeline

    cache = WORK / f"downstream_synth_n{len(crops)}_{args.scheduler}{args.steps}_s{args.guidance}.npz"
    if cache.is_file():
        data = np.load(cache)
        return list(data["images"]), float(data["seconds"])
    pipe = NASDMPipeline.from_pretrained(args.nasdm, scheduler=args.scheduler)
    masks = [(inst, cls) for _, inst, cls in crops]
    t0 = time.perf_counter()
    images = []
    for start in range(0, len(masks), 8):
        images.extend(pipe(masks[start:start + 8], guidance=args.guidance, steps=args.steps,
                           seed=1000 + start).images)
    seconds = (time.perf_counter() - t0) / len(masks)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, images=np.stack(images), seconds=seconds)
    return images, seconds


def train_and_score(train_set, val_set, test_set, seed: int, args, run: Path) -> dict:
    from pathgen.metrics.instance import aji, pq
    from pathgen.metrics.semantic import dice_masks
    from pathgen.segment.checkpoint import load_model
    from pathgen.segment.infer import segment_tile_batch
    from pathgen.segment.train import TrainConfig, train_hovernet

    cfg = TrainConfig(preset=args.preset, epochs=args.epochs, batch_size=8, patch_size=args.size,
                      steps_per_epoch=args.steps_per_epoch, lr=1e-3, lr_step=max(1, args.epochs * 3 // 4),
                      val_every=2, seed=seed)
    train_hovernet(train_set, run, cfg, val=val_set, overwrite=True, log=lambda _m: None)
    model = load_model(run)
    images = np.stack([s.image for s in test_set])
    preds = segment_tile_batch(model, images).nuclei
    true = [s.instances for s in test_set]
    return {"pq": float(np.nanmean([pq(t, p.instances).pq for t, p in zip(true, preds)])),
            "aji": float(np.nanmean([aji(t, p.instances) for t, p in zip(true, preds)])),
            "dice": dice_masks(np.concatenate([(t > 0).ravel() for t in true]),
                               np.concatenate([(p.instances > 0).ravel() for p in preds]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nasdm", default=str(ROOT / "sample_data" / "models" / "nasdm_small"))
    ap.add_argument("--n-train", type=int, default=48, help="training masks (real crops)")
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--size", type=int, default=48, help="crop side (px); NASDM small renders 48 px well")
    ap.add_argument("--scheduler", default="ddpm")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    train_crops = heldout_crops(args.n_train, args.size, seed=3101)
    val_crops = heldout_crops(args.n_val, args.size, seed=3102)
    test_crops = heldout_crops(args.n_test, args.size, seed=2024)
    synth_images, spt = synthesise(args, train_crops)
    real, fake = samples(train_crops, "real"), samples(train_crops, "synth", synth_images)
    configs = {"real": real, "real + synthetic": real + fake, "synthetic": fake}
    val_set, test_set = dataset(samples(val_crops, "val")), dataset(samples(test_crops, "test"))
    results: dict[str, list[dict]] = {name: [] for name in configs}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name, items in configs.items():
            run = WORK / "downstream_runs" / f"{name.replace(' + ', '_plus_')}_seed{seed}"
            run.parent.mkdir(parents=True, exist_ok=True)
            res = train_and_score(dataset(items), val_set, test_set, seed, args, run)
            results[name].append(res)
            print(f"seed {seed} {name}: PQ {res['pq']:.3f} AJI {res['aji']:.3f} Dice {res['dice']:.3f}", flush=True)
    minutes = (time.perf_counter() - t0) / 60

    def ms(name, key):
        v = np.array([r[key] for r in results[name]])
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

    lines = [f"- real = procedural tiles, site A: {args.n_train} training crops (seed 3101), {args.n_val} validation "
             f"crops (seed 3102, checkpoint choice), {args.n_test} test crops (seed 2024), {args.size} px",
             f"- synthetic = NASDM (`{args.nasdm}`) from the same {args.n_train} training masks, {args.scheduler} "
             f"{args.steps} steps, guidance {args.guidance}, {spt:.1f} s/tile ({args.threads} threads)",
             f"- HoVer-Net preset `{args.preset}` from scratch, {args.epochs} epochs × {args.steps_per_epoch} steps of "
             f"8 patches, lr 1e-3, standard augmentation; seeds {args.seeds}; {minutes:.1f} min for all runs",
             "", "| training data | tiles | PQ | AJI | Dice |", "|---|---|---|---|---|"]
    for name, items in configs.items():
        lines.append(f"| {name} | {len(items)} | {ms(name, 'pq')} | {ms(name, 'aji')} | {ms(name, 'dice')} |")
    print("\n".join(lines))
    if not args.no_append:
        append_results("Downstream value of NASDM data (bench_downstream.py)", lines)


if __name__ == "__main__":
    main()
