"""The demo pipeline (``make demo``): the main job of pathgen on the bundled real sample data.

1. fetch the real sample slide (Aperio SVS) and the real target image (hash-checked, cached);
2. detect tissue and save the mask;
3. normalise the whole slide to the target with each configured method into pyramidal TIFFs: the classical
   methods with a slide-level fit to the target image; ``saasn`` with the shipped SAASN model (trained towards that
   same target image; stain-map mode, its stored strength) or ``saasn_checkpoint``;
4. score structure kept (tile-wise grayscale SSIM) and colour match (colour distance of the same tiles to the
   target image, and of the slide before) and write an HTML QC report per method.

Configuration: ``pipelines/demo.toml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pathgen.pipelines import resolve_path


@dataclass
class Config:
    output_dir: str = "out/demo"
    slide: str = "sample:cmu_small_region.svs"
    target: str = "sample:target_image.png"
    methods: list[str] = field(default_factory=lambda: ["macenko", "vahadane", "saasn"])
    saasn_checkpoint: str | None = None  # None: the shipped model (sample_data/models/saasn_small)
    device: str = "auto"
    tile_size: int = 512
    overlap: int = 32
    quality: int = 90
    seed: int = 0
    overwrite: bool = True


def run(cfg: Config) -> dict:
    from PIL import Image

    from pathgen.io.records import save_run_config, write_json_atomic
    from pathgen.engine import EngineConfig
    from pathgen.io.atomic import atomic_path
    from pathgen.pipelines.qc import build_report
    from pathgen.io.slide import open_slide
    from pathgen.stain.normalize import StainNormalizer
    from pathgen.stain.slide import SlideFitConfig, normalize_slide
    from pathgen.engine.tissue import tissue_mask

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide_path, target_path = resolve_path(cfg.slide), resolve_path(cfg.target)
    summary: dict = {"slide": str(slide_path), "target": str(target_path), "methods": {}}
    with open_slide(slide_path) as s:
        info = s.info()
        print(f"slide {slide_path.name}: {info.width}×{info.height} px, mpp {info.mpp}, vendor {info.vendor}")
        mask = tissue_mask(s)
    with atomic_path(out / "tissue.png", overwrite=True) as tmp:
        Image.fromarray(mask.to_image()).save(tmp, format="PNG")
    print(f"tissue: {100 * mask.fraction:.1f}% of the overview → {out / 'tissue.png'}")
    for method in cfg.methods:
        t0 = time.perf_counter()
        result = out / f"{slide_path.stem}_{method}.tiff"
        if method == "saasn":
            from pathgen.io.models import shipped_model
            from pathgen.saasn.infer import normalize_slide_saasn

            rep = normalize_slide_saasn(slide_path, result, cfg.saasn_checkpoint or shipped_model("saasn"),
                                        EngineConfig(tile_size=cfg.tile_size, batch_size=4, device=cfg.device),
                                        overwrite=cfg.overwrite, quality=cfg.quality,
                                        fit_config=SlideFitConfig(seed=cfg.seed))
        else:
            norm = StainNormalizer(method, seed=cfg.seed).fit_target(str(target_path))
            rep = normalize_slide(slide_path, result, norm, overwrite=cfg.overwrite, quality=cfg.quality,
                                  engine=EngineConfig(tile_size=cfg.tile_size, overlap=cfg.overlap, batch_size=4,
                                                      device=cfg.device),
                                  fit_config=SlideFitConfig(seed=cfg.seed))
        seconds = time.perf_counter() - t0
        report = out / f"{slide_path.stem}_{method}_qc.html"
        qc = build_report(slide_path, result, report, overwrite=True, target=target_path)
        summary["colour_before"] = qc["colour_before"]
        summary["methods"][method] = {"output": str(result), "seconds": round(seconds, 2), "tiles": rep.windows,
                                      "tiles_with_tissue": rep.processed, "ssim": qc["ssim"],
                                      "ssim_std": qc["ssim_std"], "colour_to_target": qc["colour_to_target"],
                                      "report": str(report)}
        print(f"{method}: {result} in {seconds:.1f} s; grayscale SSIM vs source {qc['ssim']:.4f} ± "
              f"{qc['ssim_std']:.4f} ({qc['n_tiles']} tissue tiles); colour distance to the target "
              f"{qc['colour_to_target']:.2f} (slide as it was: {qc['colour_before']:.2f})")
    write_json_atomic(out / "summary.json", summary)
    save_run_config(out, cfg, seed=cfg.seed)
    print(f"summary: {out / 'summary.json'}")
    return summary
