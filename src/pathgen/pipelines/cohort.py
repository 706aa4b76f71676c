"""The cohort pipeline (``pipeline = "normalize_cohort"``): normalise every slide of a cohort to one target and
check each with a QC page, then summarise the cohort.

1. the cohort: ``inputs`` (slides, images, folders, glob patterns, ``sample:NAME``), plus, when
   ``generate_sites`` names stain sites, generated slides stained like those labs (the bundled sample data holds
   one real slide; a cohort needs several sources to show many-to-one normalisation);
2. every input is normalised to the target through the slide-job path (resumable: a killed run goes on from its
   last finished band; finished slides are skipped), locally or on an existing dask cluster (``scheduler``);
3. every pair gets the QC report (structure kept, colour distance to the target before and after);
4. ``summary.csv`` / ``summary.json`` (one row per slide) and ``index.html`` (the cohort table, linking every QC
   page) in ``output_dir``; the table is printed at the end.

Configuration: ``pipelines/normalize_cohort.toml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pathgen.pipelines import engine_options, expand, resolve_path


@dataclass
class Config:
    output_dir: str = "out/normalize_cohort"
    inputs: list[str] = field(default_factory=lambda: ["sample:cmu_small_region.svs"])
    generate_sites: list[str] = field(default_factory=lambda: ["B", "D"])  # procedural sites added to the cohort
    generate_size: int = 2048  # side of each generated slide, pixels
    method: str = "macenko"  # macenko | vahadane | reinhard | saasn
    target: str = "sample:target_image.png"  # image, folder or stain JSON (ignored by saasn)
    tile_size: int = 512
    overlap: int = -1  # -1: the method's halo
    batch_size: int = 4
    threads: int = 0  # 0: every core
    workers: int = 0  # N > 0: a local cluster of N processes
    scheduler: str = ""  # "tcp://host:port": an existing dask.distributed cluster
    device: str = "auto"
    quality: int = 90
    seed: int = 0
    qc: bool = True
    resume: bool = True


def _cohort(cfg: Config, out: Path) -> list[Path]:
    from pathgen.data.synth import write_synthetic_slide

    inputs = expand(cfg.inputs)
    for k, site in enumerate(cfg.generate_sites):
        path = out / "cohort" / f"generated_site_{site}.svs"
        if not path.exists():  # written atomically: it exists only once whole
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_slide(path, cfg.generate_size, cfg.generate_size, seed=cfg.seed + k, site=site)
        inputs.append(path)
    return inputs


def _normalizer(cfg: Config):
    if cfg.method == "saasn":
        return None
    from pathgen.stain.normalize import StainNormalizer

    return StainNormalizer(cfg.method, seed=cfg.seed, device=cfg.device).fit_target(str(resolve_path(cfg.target)))


def run(cfg: Config) -> dict:
    import json

    from pathgen.io.atomic import write_csv, write_text
    from pathgen.io.image import is_slide
    from pathgen.io.records import save_run_config, write_json_atomic
    from pathgen.stain.slide import SlideFitConfig, normalize_slide

    out = Path(cfg.output_dir)
    (out / "normalized").mkdir(parents=True, exist_ok=True)
    (out / "qc").mkdir(exist_ok=True)
    engine = engine_options(cfg)
    inputs = _cohort(cfg, out)
    normalizer = _normalizer(cfg)
    target = resolve_path(cfg.target)
    rows = []
    print(f"cohort: {len(inputs)} inputs → {out / 'normalized'} ({cfg.method}"
          f"{', dask ' + cfg.scheduler if cfg.scheduler else ''})")
    for src in inputs:
        slide = is_slide(src)
        dst = out / "normalized" / (f"{src.stem}.tiff" if slide else src.name)
        record = Path(f"{dst}.json")
        t0 = time.perf_counter()
        if dst.exists() and record.exists() and cfg.resume:
            status = "done earlier"
        elif slide and cfg.method == "saasn":
            from pathgen.io.models import shipped_model
            from pathgen.saasn.infer import normalize_slide_saasn

            normalize_slide_saasn(src, dst, shipped_model("saasn"), engine, overwrite=True, quality=cfg.quality,
                                  fit_config=SlideFitConfig(seed=cfg.seed), resume=cfg.resume)
            status = "normalised"
        elif slide:
            normalize_slide(src, dst, normalizer, engine=engine, overwrite=True, quality=cfg.quality,
                            fit_config=SlideFitConfig(seed=cfg.seed), resume=cfg.resume)
            status = "normalised"
        else:
            from pathgen.stain.apply import normalize_image_file

            fit = normalize_image_file(src, dst, normalizer, overwrite=True)
            save_run_config(dst, normalizer.settings(), seed=cfg.seed,
                            extra={"input": str(src), "source": fit.to_dict() if fit else None})
            status = "normalised"
        row = {"input": str(src), "output": str(dst), "status": status,
               "seconds": round(time.perf_counter() - t0, 2)}
        if cfg.qc and slide:
            from pathgen.pipelines.qc import build_report

            page = out / "qc" / f"{src.stem}.html"
            qc = build_report(src, dst, page, overwrite=True, target=None if cfg.method == "saasn" else target)
            row.update(report=str(page), ssim=round(qc["ssim"], 4), n_tiles=qc["n_tiles"],
                       colour_before=round(qc.get("colour_before") or float("nan"), 3),
                       colour_after=round(qc.get("colour_to_target") or float("nan"), 3))
        rows.append(row)
        print(f"  {src.name}: {status} in {row['seconds']} s" +
              (f"; SSIM {row['ssim']:.3f}, colour to target {row['colour_before']:.2f} → {row['colour_after']:.2f}"
               if "ssim" in row else ""))
    columns = ["input", "output", "status", "seconds", "ssim", "n_tiles", "colour_before", "colour_after", "report"]
    write_csv(out / "summary.csv", rows, columns)
    summary = {"method": cfg.method, "target": str(target), "slides": rows, "n": len(rows)}
    write_json_atomic(out / "summary.json", summary)
    write_text(out / "index.html", _index_html(cfg, rows))
    save_run_config(out, cfg, seed=cfg.seed)
    print(f"summary: {out / 'summary.csv'}, {out / 'index.html'}")
    return json.loads(json.dumps(summary))


def _index_html(cfg: Config, rows: list[dict]) -> str:
    from html import escape

    head = "<tr><th>slide</th><th>status</th><th>seconds</th><th>SSIM to source</th>" \
           "<th>colour distance to target: before → after</th><th>QC</th></tr>"
    body = []
    for r in rows:
        colour = f"{r['colour_before']:.2f} → {r['colour_after']:.2f}" if "colour_after" in r else ""
        link = f'<a href="qc/{Path(r["report"]).name}">report</a>' if "report" in r else ""
        body.append(f"<tr><td>{escape(Path(r['input']).name)}</td><td>{escape(r['status'])}</td>"
                    f"<td>{r['seconds']}</td><td>{r.get('ssim', '')}</td><td>{colour}</td><td>{link}</td></tr>")
    return ("<!doctype html><meta charset='utf-8'><title>pathgen cohort</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
            f"<h1>Cohort normalised with {escape(cfg.method)}</h1><p>target: {escape(cfg.target)}</p>"
            f"<table>{head}{''.join(body)}</table>")
