"""The dataset pipeline (``pipeline = "synthesize_dataset"``): synthesise an annotated dataset, segment it back
with a nucleus segmenter and score how well the images carry their annotations.

1. ``dataset/``: MaskGen masks → NASDM H&E tiles with instance and class maps (the shipped models unless others
   are named; resumable sample by sample, byte-identical after a kill: :mod:`pathgen.pipelines.synthesize`);
   ``synthesis`` passes further options (steps, guidance, sampler …) to it;
2. ``segmented/``: every image segmented by HoVer-Net (the shipped model unless ``segmenter`` names another)
   through the tile engine — on an existing dask cluster with ``scheduler`` — into ``instances/NAME.tif`` and
   ``classes/NAME.png`` (a finished image is not redone);
3. ``scores.json``: the segmentation scored against the synthesis masks, paired by name (Dice, AJI, PQ per image
   and their means; the NASDM paper's "mask fidelity"), plus ``summary.json``; the headline is printed.

Configuration: ``pipelines/synthesize_dataset.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pathgen.pipelines import engine_options


@dataclass
class Config:
    output_dir: str = "out/synthesize_dataset"
    n: int = 8
    seed: int = 0
    nasdm: str = ""  # "": the shipped model
    maskgen: str = ""  # "": the shipped model
    segmenter: str = ""  # "": the shipped HoVer-Net
    synthesis: dict = field(default_factory=dict)  # more options of pathgen.pipelines.synthesize.synthesize_dataset
    tile_size: int = 512
    overlap: int = -1  # -1: the segmenter's halo
    batch_size: int = 4
    threads: int = 0
    workers: int = 0
    scheduler: str = ""  # "tcp://host:port": an existing dask.distributed cluster
    device: str = "auto"


def _segment_back(images: Path, out: Path, checkpoint, engine) -> int:
    """Segment every image of ``images`` into ``out/instances`` and ``out/classes``; returns how many were new."""
    import numpy as np

    from pathgen.io.image import list_images, read_image, write_image
    from pathgen.progress import progress_bar
    from pathgen.segment.slide import SegmentConfig, segment_array

    (out / "instances").mkdir(parents=True, exist_ok=True)
    (out / "classes").mkdir(exist_ok=True)
    files = list_images(images)
    todo = [f for f in files if not (out / "classes" / f"{f.stem}.png").exists()]  # classes are written last
    cfg = SegmentConfig(engine=engine)
    with progress_bar(len(files), "segment back", unit="images") as bar:
        bar.advance(len(files) - len(todo))
        for f in todo:
            inst, types, _ = segment_array(read_image(f), checkpoint, cfg)
            lut = np.zeros(int(inst.max()) + 1, np.uint8)
            for k, t in types.items():
                lut[k] = t
            write_image(out / "instances" / f"{f.stem}.tif", inst.astype(np.int32))
            write_image(out / "classes" / f"{f.stem}.png", lut[inst])
            bar.advance(1)
    return len(todo)


def run(cfg: Config) -> dict:
    from pathgen.io.models import shipped_model
    from pathgen.io.records import save_run_config, write_json_atomic
    from pathgen.metrics.report import evaluate_instances
    from pathgen.pipelines.synthesize import synthesize_dataset

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = engine_options(cfg)
    nasdm = cfg.nasdm or shipped_model("nasdm")
    maskgen = cfg.maskgen or shipped_model("maskgen")
    segmenter = cfg.segmenter or shipped_model("hovernet")
    result = synthesize_dataset(out / "dataset", cfg.n, nasdm_checkpoint=nasdm, maskgen_checkpoint=maskgen,
                                seed=cfg.seed, device=engine.device, **cfg.synthesis)
    print(f"dataset: {result.done} samples in {out / 'dataset'} ({result.generated} new)")
    new = _segment_back(out / "dataset" / "images", out / "segmented", segmenter, engine)
    print(f"segmented back: {new} new, with {segmenter}")
    scores = evaluate_instances(out / "dataset" / "instances", out / "segmented" / "instances")
    write_json_atomic(out / "scores.json", scores)
    summary = {"samples": result.done, "generated": result.generated, "segmented": new,
               "models": {"nasdm": str(nasdm), "maskgen": str(maskgen), "segmenter": str(segmenter)},
               **{k: scores[k] for k in ("dice1", "aji", "dq", "sq", "pq") if k in scores}}
    write_json_atomic(out / "summary.json", summary)
    save_run_config(out, cfg, seed=cfg.seed)
    print(f"mask fidelity (segmenter vs. synthesis masks, {scores['n_images']} images): DICE1 "
          f"{scores['dice1']:.3f}, AJI {scores['aji']:.3f}, PQ {scores['pq']:.3f} → {out / 'scores.json'}")
    return summary
