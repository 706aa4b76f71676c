"""SAASN benchmark: Table-4.1-style structure preservation plus a colour-distribution distance.

Steps (each a sub-command; ``all`` runs them in order)::

    python benchmarks/bench_saasn.py prepare     # tiles of the sample data -> benchmarks/work/saasn/{train,test}
    python benchmarks/bench_saasn.py train       # SAASN and the CycleGAN ablation, CPU, one thread each
    python benchmarks/bench_saasn.py eval        # table -> stdout, JSON, and a section of RESULTS.md
    python benchmarks/bench_saasn.py ship        # the SAASN run's X->Y generator -> sample_data/models/saasn_small

Sites. Sources X: generated tissue at sites B (eosin-heavy, warm light), C (haematoxylin-heavy, cool light) and
D (pale, faded), plus the real slide ``cmu_small_region.svs`` (0.499 µm/px). Target Y: the real image
``target_image.png``. Real images are split by position so test tiles never overlap training tiles: the slide's
top two thirds train and its bottom third tests; the target image's columns x < 700 train and x >= 700 test.
Generated sites use disjoint tile seeds for training and testing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
WORK = HERE / "work" / "saasn"
TILE = 256
SYNTH_SITES = ("B", "C", "D")
SYNTH_TRAIN, SYNTH_TEST = 300, 50


def _save(folder: Path, name: str, tile: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile).save(folder / f"{name}.png", format="PNG")


def _tissue_share(tile: np.ndarray) -> float:
    from skimage.color import rgb2lab

    return float((rgb2lab(tile)[..., 0] < 80).mean())


def prepare(work: Path = WORK) -> None:
    """Write 256-px tiles of every site into ``work/train/<site>`` and ``work/test/<site>``."""
    from pathgen.data.fetch import sample_path
    from pathgen.data.synth import render_tile, tile_seed
    from pathgen.saasn.data import _tissue_positions
    from pathgen.io.slide import open_slide
    from pathgen.engine.tissue import tissue_mask

    for split, seed, count in (("train", 1, SYNTH_TRAIN), ("test", 2, SYNTH_TEST)):
        for site in SYNTH_SITES:
            folder = work / split / site
            if folder.is_dir() and len(list(folder.glob("*.png"))) >= count:
                continue
            i = kept = 0
            while kept < count:
                t = render_tile(TILE, tile_seed(seed, i), site)
                i += 1
                if _tissue_share(t.image) < 0.3:  # mostly glass: not a useful stain example
                    continue
                _save(folder, f"{site}_{kept:04d}", t.image)
                kept += 1
            print(f"{split}/{site}: {kept} tiles", flush=True)

    slide = open_slide(sample_path("cmu_small_region.svs"))
    mask = tissue_mask(slide)
    w0, h0 = slide.dimensions
    split_y = int(h0 * 2 / 3)
    for split in ("train", "test"):
        folder = work / split / "cmu"
        if folder.is_dir() and any(folder.glob("*.png")):
            continue
        # a grid of TILE/2 strides (the slide's tissue is a thin strip: test tiles overlap by half, too)
        pos = _tissue_positions(mask.mask, mask.downsample, (w0, h0), TILE, 0.4)
        kept = 0
        for x, y in pos:
            x, y = int(x), int(y)
            if split == "train" and y + TILE > split_y:
                continue
            if split == "test" and y < split_y:
                continue
            if x + TILE > w0 or y + TILE > h0:
                continue
            tile = slide.read_region((x, y), 0, (TILE, TILE))
            if _tissue_share(tile) < 0.4:
                continue
            _save(folder, f"cmu_{x:05d}_{y:05d}", tile)
            kept += 1
        print(f"{split}/cmu: {kept} tiles", flush=True)

    target = np.asarray(open_slide(sample_path("target_image.png")).read_region((0, 0), 0, (1000, 1000)))
    for split, xs, ys in (("train", range(0, 700 - TILE + 1, 64), range(0, 1000 - TILE + 1, 64)),
                          ("test", (700, 1000 - TILE), range(0, 1000 - TILE + 1, 93))):
        folder = work / split / "target"
        if folder.is_dir() and any(folder.glob("*.png")):
            continue
        n = 0
        for y in ys:
            for x in xs:
                _save(folder, f"target_{x:04d}_{y:04d}", target[y:y + TILE, x:x + TILE])
                n += 1
        print(f"{split}/target: {n} tiles", flush=True)


TARGET_SYNTH = 250  # generated tiles in the target's stain: with the 84 real target tiles, Y is 3/4 generated like X


def target_site(work: Path = WORK):
    """A generator site stained like the real target image: Macenko H and E vectors and I0 fitted on the target's
    training tiles; concentration scales so that generated tissue's 99th-percentile H and E concentrations match
    the target's."""
    from pathgen.data.stains import SiteStain
    from pathgen.data.synth import render_tile, tile_seed
    from pathgen.saasn.evaluate import load_tiles
    from pathgen.stain import StainNormalizer

    norm = StainNormalizer("macenko", i0=None)
    target = norm.fit_images(load_tiles(work / "train" / "target")[1])
    h, e = target.vectors
    residual = np.abs(np.cross(h, e))
    i0 = tuple(float(v) for v in target.i0)
    unit = SiteStain("Y-unit", np.stack([h, e, residual]), i0, (1.0, 1.0, 1.0), "")
    probe = norm.fit_images([render_tile(TILE, tile_seed(7, i), unit).image for i in range(8)])
    scale = target.concentration_percentiles / np.maximum(probe.concentration_percentiles, 1e-6)
    return SiteStain("Y", np.stack([h, e, residual]), i0, (float(scale[0]), float(scale[1]), 1.0),
                     "generated tissue in the real target image's stain (bench_saasn.target_site)")


def prepare_target_synth(work: Path = WORK, count: int = TARGET_SYNTH) -> Path:
    """Generated tiles stained like the target (:func:`target_site`) into ``work/train/target_synth``: with them
    Y holds generated tissue as X does, so a discriminator cannot tell the domains apart by the tissue alone."""
    from pathgen.data.synth import render_tile, tile_seed

    folder = work / "train" / "target_synth"
    if folder.is_dir() and len(list(folder.glob("*.png"))) >= count:
        return folder
    site = target_site(work)
    i = kept = 0
    while kept < count:
        t = render_tile(TILE, tile_seed(3, i), site)
        i += 1
        if _tissue_share(t.image) < 0.3:
            continue
        _save(folder, f"Y_{kept:04d}", t.image)
        kept += 1
    print(f"train/target_synth: {kept} tiles (scale H {site.concentration_scale[0]:.2f}, "
          f"E {site.concentration_scale[1]:.2f})", flush=True)
    return folder


def run_dir(work: Path, name: str, arch: str = "small") -> Path:
    """``runs/NAME`` for the ``small`` preset, ``runs/NAME-ARCH`` for the others."""
    return work / "runs" / (name if arch == "small" else f"{name}-{arch}")


def source_dirs(work: Path, split: str) -> list[Path]:
    return [work / split / s for s in (*SYNTH_SITES, "cmu")]


def train(work: Path = WORK, which: str = "both", epochs: int = 8, steps: int = 100, seed: int = 0,
          arch: str = "small", cycle_warmup: int | None = None, saasn_run: Path | None = None,
          ablation_run: Path | None = None, colour_pool: int | None = None,
          weights: dict[str, float] | None = None, synthetic_target: bool = False) -> None:
    """Train SAASN (``saasn``) and the CycleGAN-style ablation (``cyclegan``) with the ``arch`` preset; runs go
    to ``runs/NAME`` (``runs/NAME-ARCH`` for other presets than ``small``). ``cycle_warmup`` overrides the
    preset's L1-cycle warm-up steps (``TrainConfig.cycle_warmup_steps``); ``saasn_run`` / ``ablation_run``
    replace the default run folders (an existing run there is resumed); ``colour_pool`` overrides the preset's
    ``SAASNConfig.colour_pool``; ``weights`` (``alpha``, ``beta``, ``gamma``, ``delta``) override the SAASN run's
    loss weights (the ablation keeps the CycleGAN objective's); ``synthetic_target`` adds the generated tiles in the
    target's stain (:func:`prepare_target_synth`) to Y."""
    import torch

    from pathgen.saasn.data import DataConfig
    from pathgen.saasn.losses import LossConfig
    from pathgen.saasn.networks import preset
    from pathgen.saasn.train import TRAIN_PRESETS, train_preset, train_saasn

    torch.set_num_threads(1)
    targets = [str(work / "train" / "target")]
    if synthetic_target:
        targets.append(str(prepare_target_synth(work)))
    data = DataConfig([str(p) for p in source_dirs(work, "train")], targets, balance="sites")
    runs = {"saasn": LossConfig(**(weights or {})), "cyclegan": LossConfig.cyclegan()}
    for name, losses in runs.items():
        if which not in ("both", name):
            continue
        tcfg = train_preset(arch if arch in TRAIN_PRESETS else "small")
        if cycle_warmup is not None:
            tcfg.cycle_warmup_steps = cycle_warmup
        tcfg.epochs, tcfg.steps_per_epoch, tcfg.seed, tcfg.device, tcfg.threads = epochs, steps, seed, "cpu", 1
        out = {"saasn": saasn_run, "cyclegan": ablation_run}[name] or run_dir(work, name, arch)
        out.parent.mkdir(parents=True, exist_ok=True)
        resume = (out / "state" / "training.json").is_file()
        t0 = time.perf_counter()
        model = preset(arch)
        if colour_pool is not None:
            model.colour_pool = colour_pool
            model.__post_init__()
        res = train_saasn(out, data, model, losses, tcfg, resume=resume, epochs=epochs, quiet=True)
        print(f"{name}: {res.epochs_done} epochs, {res.steps_done} steps in {time.perf_counter() - t0:.0f} s; "
              f"last epoch {json.dumps({k: round(v, 4) for k, v in res.last_epoch_means.items()})}", flush=True)


def select_strength(work: Path = WORK, saasn_run: Path | None = None, arch: str = "small", per_site: int = 50,
                    strengths: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11)),
                    z: float = 1.645) -> float:
    """Choose the stain-map strength on *training* tiles (never the test tiles) and print the sweep.

    Rule (the issue's bar, with confidence): the largest strength at which, over the X → Y tiles of the selection
    set, the paired per-tile SSIM difference to *each* classical method has a one-sided lower confidence bound
    (mean − ``z``·sd/√n; 1.645: 95 %) above 0, and the mean colour distance is at most each classical method's.
    More strength moves the colours further towards the target, so the largest such strength is the closest
    colour match that still keeps structure better than both. The paired bound, not the bare mean, because the
    classical methods' SSIM moves with the tiles drawn by more than the stain map's does.

    ``per_site`` training tiles per site (the first ones) and as many target training tiles as the colour
    reference; the classical methods fit their target to all the target's training tiles, as in :func:`evaluate`.
    """
    from pathgen.metrics.image import ssim_gray
    from pathgen.saasn.evaluate import colour_distance, evaluate_stain, load_tiles
    from pathgen.saasn.infer import SaasnNormalizer
    from pathgen.saasn.stainmap import StainMap, fit_stain_map

    saasn_run = saasn_run or run_dir(work, "saasn", arch)
    sel = work / "select"  # the first per_site training tiles of each site, linked (no copies)
    for d in source_dirs(work, "train") + [work / "train" / "target"]:
        (sel / d.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(d.glob("*.png"))[:per_site]:
            link = sel / d.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    sites = {d.name: sel / d.name for d in source_dirs(work, "train")}
    cache = work / "select_cache.json"
    classical = json.loads(cache.read_text()) if cache.is_file() else None
    if classical is None or "classical_reference" not in classical:  # older caches: no per-tile SSIM, test-fit
        classical = evaluate_stain(sites, sel / "target", methods=CLASSICAL_ROWS, reverse=False,
                                   fit_target=work / "train" / "target")
        cache.write_text(json.dumps(classical, indent=2) + "\n")
    dirs = classical["directions"]
    base = {m: (np.concatenate([classical["results"][m][d]["ssim"] for d in dirs]),
                float(np.mean([classical["results"][m][d]["colour_swd"] for d in dirs]))) for m in CLASSICAL_ROWS}
    gen = SaasnNormalizer(saasn_run, device="cpu")
    target = load_tiles(sel / "target")[1]
    fitted = {}
    for name in (d.split(" → ")[0] for d in dirs):  # the cache's tile order
        tiles = load_tiles(sites[name])[1]
        fitted[name] = (tiles, fit_stain_map(tiles, [gen(t) for t in tiles]))
    print(f"strength selection on training tiles ({per_site} per site), paired one-sided bound z = {z}")
    for m, (ssim, colour) in base.items():
        print(f"  {m}: SSIM {ssim.mean():.4f}, colour {colour:.3f}")
    chosen = None
    for st in strengths:
        ssims, colours = [], []
        for tiles, matrix in fitted.values():
            out = [StainMap(matrix, st)(t) for t in tiles]
            ssims.extend(ssim_gray(o, t) for o, t in zip(out, tiles))
            colours.append(colour_distance(out, tiles, target))
        ssims = np.asarray(ssims)
        bounds = {}
        for m, (ssim, _) in base.items():
            diff = ssims - ssim
            bounds[m] = diff.mean() - z * diff.std(ddof=1) / np.sqrt(len(diff))
        ok = all(b > 0 for b in bounds.values()) and all(np.mean(colours) <= c for _, c in base.values())
        print(f"  saasn-map s={st:.1f}: SSIM {ssims.mean():.4f}, colour {np.mean(colours):.3f}, lower bounds "
              + ", ".join(f"{m} {b:+.4f}" for m, b in bounds.items()) + (" ok" if ok else ""), flush=True)
        if ok:
            chosen = st
    if chosen is None:
        chosen = strengths[0]
        print(f"no strength meets the bar on training tiles; falling back to {chosen:.1f}")
    print(f"chosen strength {chosen:.1f}")
    return chosen


CLASSICAL_ROWS = ("macenko", "vahadane")


def evaluate(work: Path = WORK, saasn_run: Path | None = None, ablation_run: Path | None = None,
             out_json: Path | None = None, append: bool = True, arch: str = "small",
             strength: float | None = None, sweep: bool = False) -> dict:
    """Run :func:`pathgen.saasn.evaluate.evaluate_stain` on the test tiles and append the table to RESULTS.md."""
    from pathgen.saasn.evaluate import evaluate_stain, format_table

    saasn_run = saasn_run or run_dir(work, "saasn", arch)
    ablation_run = ablation_run or run_dir(work, "cyclegan", arch)
    sources = {p.name: p for p in source_dirs(work, "test")}
    t0 = time.perf_counter()
    # The model-free rows do not change between runs: they are computed once and cached. The classical methods
    # fit their target to the training tiles, the only target tiles SAASN learns from (``fit_target``); the rows
    # they get when fitted to the test tiles themselves (the oracle) are kept alongside, marked.
    cache = work / "eval_cache.json"
    fixed = ("identity", "macenko", "vahadane")
    cached = json.loads(cache.read_text()) if cache.is_file() else None
    if cached is None or sorted(cached["methods"]) != sorted(fixed) or "oracle" not in cached:
        cached = evaluate_stain(sources, work / "test" / "target", methods=fixed, device="cpu",
                                fit_target=work / "train" / "target",
                                fit_sources={p.name: p for p in source_dirs(work, "train")})
        cached["oracle"] = evaluate_stain(sources, work / "test" / "target", methods=CLASSICAL_ROWS,
                                          device="cpu")["results"]
        cache.write_text(json.dumps(cached, indent=2) + "\n")
    models = evaluate_stain(sources, work / "test" / "target", saasn=saasn_run,
                            ablation=ablation_run if ablation_run.exists() else None,
                            methods=("saasn", "saasn-map", "cyclegan", "cyclegan-map"), device="cpu",
                            strength=strength)
    oracle = {f"{m} (test-fit)": r for m, r in cached["oracle"].items()}
    order = ["identity", "macenko", "vahadane", *oracle, *models["methods"]]
    report = {**models, "methods": order, "results": {**cached["results"], **oracle, **models["results"]},
              "strength": strength,
              "classical_reference": {"X → Y": "train/target", "Y → X": "train/{B,C,D,cmu} pooled"}}
    if sweep:  # the whole structure/colour trade-off of the stain map on the test tiles (analysis, not selection)
        for st in (0.2, 0.4, 0.6, 0.8, 1.0):
            row = evaluate_stain(sources, work / "test" / "target", saasn=saasn_run, methods=("saasn-map",),
                                 device="cpu", strength=st)
            report["methods"].append(f"saasn-map s={st:g}")
            report["results"][f"saasn-map s={st:g}"] = row["results"]["saasn-map"]
    seconds = time.perf_counter() - t0
    table = format_table(report)
    print(table)
    out_json = out_json or work / "eval.json"
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    if append:
        from _common import append_results

        counts = ", ".join(f"{k}: {v}" for k, v in report["tiles"].items())
        lines = [f"- test tiles ({TILE} px): {counts}",
                 f"- SAASN run: `{os.path.relpath(saasn_run, HERE.parent)}`; ablation run: "
                 + (f"`{os.path.relpath(ablation_run, HERE.parent)}`" if ablation_run.exists() else "none"),
                 f"- saasn-map: the same X→Y / Y→X generators in stain-map mode, strength "
                 f"{report.get('strength', 'stored')} (one OD map per direction, fitted on that site's tiles "
                 "pooled); cyclegan-map: the ablation's generators the same way, at the same strength",
                 "- classical rows: target fitted to the training tiles (`train/target`; Y → X: the training "
                 "source tiles), as SAASN only learns from those; `(test-fit)` rows: fitted to the test tiles "
                 "the colour distance is measured against (an oracle, the protocol of the earlier tables)",
                 f"- evaluation wall time: {seconds:.0f} s", "", table]
        append_results("SAASN stain normalisation (Table 4.1 protocol + colour distance)", lines)
    return report


SHIP_DIR = HERE.parent / "sample_data" / "models" / "saasn_small"


def _architecture_note(model: dict) -> str:
    """What the generator adds to the paper's pix2pix U-Net, for TRAINED_WITH.md."""
    if model.get("full_res_skip"):
        return ("the paper's pix2pix U-Net plus pathgen's full-resolution skip head (`SAASNConfig.full_res_skip`: "
                "the last up step's features and the input image go through two 3×3 convs)")
    if model.get("colour_transform"):
        space = model.get("colour_space", "rgb")
        where = ("on optical density, `OD_y = A(x)·OD_x` (Beer–Lambert; glass stays glass)" if space == "od"
                 else "on RGB, `y = A(x)·x + b(x)`")
        return ("the paper's pix2pix U-Net whose outermost features drive pathgen's colour-transform head "
                f"(`SAASNConfig.colour_transform`): a per-pixel 3×3 colour map {where}, on a grid of one map per "
                f"{model.get('colour_pool', 4)} px, bilinearly upsampled, starting at the identity; the "
                "generator recolours and cannot redraw structure")
    return "the paper's pix2pix U-Net"


def _loss_note(losses: dict) -> str:
    """The run's loss weights for TRAINED_WITH.md, with the departure from the text's weights spelled out."""
    w = {k: float(losses[k]) for k in ("alpha", "beta", "gamma", "delta")}
    text = (f"Loss weights α = {w['alpha']:g}, β = {w['beta']:g}, γ = {w['gamma']:g}, δ = {w['delta']:g}, "
            f"{losses.get('adversarial', 'lsgan').upper()}, boundary control "
            f"{'on' if losses.get('boundary_control', True) else 'off'}")
    if w != {"alpha": 10.0, "beta": 10.0, "gamma": 10.0, "delta": 0.1}:
        text += " (the text: α = β = γ = 10, δ = 0.1; see `benchmarks/RESULTS.md` for why and for the text's weights)"
    return text


def ship(work: Path = WORK, run: Path | None = None, dest: Path = SHIP_DIR, arch: str = "small",
         strength: float | None = None) -> None:
    """Copy the run's X→Y generator and config into ``dest`` with TRAINED_WITH.md (paths made repo-relative).

    With ``strength``, the model's default inference becomes the stain-map mode at that strength
    (``config.json`` ``inference``); without, the generator paints every tile.
    """
    import shutil

    run = run or run_dir(work, "saasn", arch)
    repo = HERE.parent
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "generator.safetensors", dest / "generator.safetensors")
    cfg = json.loads((run / "config.json").read_text())
    cfg["generators"] = {"x2y": "generator.safetensors"}  # the reverse generator is not shipped (size)
    for key in ("sources", "targets"):
        cfg[key] = [os.path.relpath(p, repo) if os.path.isabs(p) else p for p in cfg.get(key, [])]
    if strength is not None:
        cfg["inference"] = {"mode": "stain-map", "strength": float(strength)}
    else:
        cfg.pop("inference", None)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    run_info = json.loads((run / "run.json").read_text())
    train_cfg = run_info["train"]
    size_mb = (dest / "generator.safetensors").stat().st_size / 2 ** 20
    import csv

    with (run / "losses.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # "seconds" restarts at 0 when a run is resumed: add up each segment's last value
    train_seconds = sum(float(a["seconds"]) for a, b in zip(rows, rows[1:] + [None])
                        if b is None or float(b["seconds"]) < float(a["seconds"]))
    steps_warm = int(train_cfg.get("cycle_warmup_steps", 0) or 0)
    warmup = ("" if not steps_warm else
              f"; the L1 cycle weight α rises linearly from 0 to {float(run_info['losses']['alpha']):g} over the "
              f"first {steps_warm} steps "
              "(`TrainConfig.cycle_warmup_steps`: the colour map starts at the identity, an exact zero of the L1 "
              "cycle loss whose slope there keeps the adversarial term from moving it; see `benchmarks/RESULTS.md`)")
    arch_opt = "" if arch == "small" else f" --arch {arch}"
    text_weights = {"alpha": 10.0, "beta": 10.0, "gamma": 10.0, "delta": 0.1}
    weight_opts = "".join(f" --{k} {float(run_info['losses'][k]):g}" for k, v in text_weights.items()
                          if float(run_info["losses"][k]) != v)
    run_opt = "" if run == run_dir(work, "saasn", arch) else f" --saasn-run {os.path.relpath(run, repo)}"
    synthetic = any(Path(t).name == "target_synth" for t in cfg.get("targets", []))
    target_line = ("tiles of the real image `target_image.png` (columns x < 700)" + (
        f" plus {TARGET_SYNTH} generated tiles stained like it (`bench_saasn.py --synthetic-target`: Macenko stain "
        "vectors, I0 and 99th-percentile concentrations of the target's training tiles), so that X and Y both "
        "hold generated and real tissue and differ by stain" if synthetic else ""))
    synth_opt = " --synthetic-target" if synthetic else ""
    synth_cli = " --target benchmarks/work/saasn/train/target_synth" if synthetic else ""
    if strength is None:
        use = "every tile is painted by the generator (`--saasn-mode generator`)"
    else:
        use = (f"by default in stain-map mode at strength {strength:g} (`config.json` `inference`; "
               "`pathgen.saasn.stainmap`): the generator runs on tissue tiles sampled across the slide, one linear "
               "map of optical density is fitted to what it made of them and applied to every pixel, so no "
               "structure is invented and the whole slide gets one stain; `--saasn-mode generator` paints every "
               "tile instead. The strength was chosen on training tiles (`python benchmarks/bench_saasn.py "
               f"select{arch_opt}{run_opt}`: the largest at which the structure SSIM beats Macenko's and "
               "Vahadane's on the same tiles with 95 % confidence, paired per tile, at no worse colour)")
    note = ("" if run_info.get("resumed_at_epoch") is None else
            f"The run was interrupted and resumed at epoch {run_info['resumed_at_epoch']} (resume is exact).\n")
    text = f"""# SAASN small model (X→Y generator)

Trained on CPU (one torch thread) from the repository's sample data:

- sources X (pooled, sampled equally per site): generated tissue of sites {', '.join(SYNTH_SITES)}
  (`pathgen.data.synth`, 256-px tiles, {SYNTH_TRAIN} per site) and tiles of the real slide
  `cmu_small_region.svs` (top two thirds, level 0, 0.499 µm/px);
- target Y: {target_line}.

Architecture preset `{arch}` ({run_info["parameters"]["generator"]:,} generator parameters, {size_mb:.1f} MB):
{_architecture_note(run_info["model"])}.
{_loss_note(run_info["losses"])}{warmup}. Adam 2e-4 (0.5, 0.999), batch
{train_cfg["batch_size"]}, 128-px crops, {train_cfg["epochs"]} epochs × {run_info["steps_per_epoch"]} steps, linear
learning-rate decay over the second half, seed {train_cfg["seed"]}. Training loop wall time (losses.csv):
{train_seconds / 60:.0f} min on 2 CPU cores shared with other jobs.
{note}
Exact commands (from the repository root):

```
python benchmarks/bench_saasn.py prepare
python benchmarks/bench_saasn.py train --which saasn{arch_opt}{weight_opts}{synth_opt} --epochs {train_cfg["epochs"]} --steps {run_info["steps_per_epoch"]} --seed {train_cfg["seed"]}{run_opt}
python benchmarks/bench_saasn.py ship{arch_opt}{run_opt}{"" if strength is None else f" --strength {strength:g}"}
```

`train` calls `pathgen.saasn.train.train_saasn`; the same run from the command line is

```
pathgen train saasn --preset {arch}{weight_opts} --balance sites --epochs {train_cfg["epochs"]} --steps-per-epoch {run_info["steps_per_epoch"]} \\
    --batch-size {train_cfg["batch_size"]} --seed {train_cfg["seed"]} --device cpu --threads 1 \\
    --source benchmarks/work/saasn/train/B --source benchmarks/work/saasn/train/C \\
    --source benchmarks/work/saasn/train/D --source benchmarks/work/saasn/train/cmu \\
    --target benchmarks/work/saasn/train/target{synth_cli} -o {os.path.relpath(run, repo)}
```

Inference: {use}.

Use: `pathgen normalize slide.svs -o out.tif --method saasn` (this folder is the default checkpoint), or
`pathgen.saasn.infer.normalize_slide_saasn(slide, out, "sample_data/models/saasn_small")`. Measured quality:
`benchmarks/RESULTS.md`, section "SAASN stain normalisation".
"""
    (dest / "TRAINED_WITH.md").write_text(text)
    print(f"shipped {dest} ({size_mb:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("prepare", "train", "select", "eval", "ship", "all"))
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--which", choices=("both", "saasn", "cyclegan"), default="both")
    ap.add_argument("--arch", default="small", help="architecture preset (pathgen.saasn.networks.PRESETS)")
    ap.add_argument("--cycle-warmup", type=int, default=None,
                    help="steps over which the L1 cycle weight rises from 0 (default: the preset's)")
    ap.add_argument("--colour-pool", type=int, default=None,
                    help="override the preset's colour-field grid (SAASNConfig.colour_pool)")
    for w in ("alpha", "beta", "gamma", "delta"):
        ap.add_argument(f"--{w}", type=float, default=None, help=f"SAASN loss weight {w} (default: the text's)")
    ap.add_argument("--synthetic-target", action="store_true",
                    help="add generated tissue in the target's stain to Y (prepare_target_synth)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--saasn-run", type=Path, default=None)
    ap.add_argument("--ablation-run", type=Path, default=None)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="eval: also the stain map at strengths 0.2 ... 1.0")
    ap.add_argument("--strength", type=float, default=None,
                    help="stain-map strength for eval/ship (default: chosen on training tiles by `select`)")
    args = ap.parse_args(argv)
    if args.step in ("prepare", "all"):
        prepare(args.work)
    if args.step in ("train", "all"):
        train(args.work, args.which, args.epochs, args.steps, args.seed, args.arch, args.cycle_warmup,
              args.saasn_run, args.ablation_run, args.colour_pool,
              {w: getattr(args, w) for w in ("alpha", "beta", "gamma", "delta") if getattr(args, w) is not None},
              args.synthetic_target)
    strength = args.strength
    if args.step in ("select", "all") or (args.step in ("eval", "ship") and strength is None):
        strength = select_strength(args.work, args.saasn_run, args.arch)
    if args.step in ("eval", "all"):
        evaluate(args.work, args.saasn_run, args.ablation_run, append=not args.no_append, arch=args.arch,
                 strength=strength, sweep=args.sweep)
    if args.step in ("ship", "all"):
        ship(args.work, args.saasn_run, arch=args.arch, strength=strength)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
