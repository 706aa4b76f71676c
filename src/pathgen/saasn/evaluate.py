"""`pathgen eval stain`: structure preservation (the SAASN paper's Table 4.1 protocol) and colour match.

For every direction — each source site to the target domain Y, and Y back to the pooled source domain X — and
every method, each test tile is normalised and compared:

* **Structure** (METHODS.md §6.1): grayscale SSIM between the normalised tile and its source tile
  (:func:`pathgen.metrics.image.ssim_gray`: 0.299 R + 0.587 G + 0.114 B, 11 × 11 Gaussian window, σ = 1.5),
  reported as mean ± std over the tiles. It measures what was kept, not whether the stain moved: a method that
  changes nothing scores 1.
* **Colour** (beyond the paper): the sliced Wasserstein-1 distance, in CIELAB units, between the colours of the
  normalised tiles' tissue pixels (pooled over the direction) and the colours of the reference domain's tissue
  pixels (the target tiles for X → Y, the pooled source tiles for Y → X). Tissue pixels are those with
  L < 100·``luminosity_threshold`` in the *source* tile (so a method cannot shrink the compared set) and, for the
  reference tiles, in those tiles. 64 random unit directions, each distance from 512 quantiles. Lower is better;
  the unnormalised input's distance is reported as the ``identity`` row.

Methods: ``identity`` (no change), ``saasn`` (a SAASN run/model: ``generator.safetensors`` for X → Y and
``generator_y2x.safetensors`` for Y → X, every tile painted by the generator), ``saasn-map`` (the same generators
in stain-map mode, :mod:`pathgen.saasn.stainmap`: one map of optical density per direction, fitted to the
generator's outputs on that site's tiles pooled, as the classical methods' slide-level source fit), ``cyclegan`` (the
ablation: the same networks trained without SAASN's terms), ``cyclegan-map`` (the ablation in stain-map mode, at
the same strength as ``saasn-map``), ``macenko`` and ``vahadane`` (:class:`pathgen.stain.normalize.StainNormalizer`;
target fitted on a reference set pooled, source fitted on each site's tiles pooled, as a slide-level fit).

**Which tiles the classical methods fit their target to.** A learnt normaliser only ever sees its training tiles;
a classical one is given a reference. With ``fit_target`` (and ``fit_sources`` for Y → X) the reference is a set
the caller names — the training tiles, so that every method gets the same information about the target. Without,
the classical methods fit their target to the very tiles the colour distance is measured against (the reference
domain's test tiles): an oracle that the learnt methods do not get, kept as the default for a single folder of
tiles where there is nothing else. The report says which (``classical_reference``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathgen.errors import PathgenError
from pathgen.metrics.colour import (ColourDistanceConfig, colour_distance, sliced_wasserstein,  # noqa: F401
                                    tissue_lab)

CLASSICAL = ("macenko", "vahadane")
REVERSE = "Y → X"


def load_tiles(path: str | os.PathLike) -> tuple[list[str], list[np.ndarray]]:
    """Names and ``(H, W, 3)`` uint8 arrays of the tiles in a folder (or its ``images/``), or of one image file."""
    from pathgen.io.image import read_image
    from pathgen.saasn.data import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_dir():
        root = p / "images" if (p / "images").is_dir() else p
        files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PathgenError("folder holds no PNG/JPEG/TIFF tiles", p)
    elif p.is_file():
        files = [p]
    else:
        raise PathgenError("no such file or folder", p)
    return [f.name for f in files], [read_image(f) for f in files]


def _stack(images: list[np.ndarray]):
    """One array when every image has the same shape (the normaliser's fast path), else the list."""
    return np.stack(images) if len({im.shape for im in images}) == 1 else images


def _classical_target(method: str, reference: list[np.ndarray], device: str, seed: int):
    from pathgen.stain.normalize import StainNormalizer

    return StainNormalizer(method, device=device, seed=seed).fit_target(_stack(reference))


def _classical(norm, sources: list[np.ndarray]) -> list[np.ndarray]:
    """``sources`` normalised by a target-fitted classical normaliser, their stain fitted on them pooled (the
    source fit is seeded afresh each time, so reusing one target fit across directions changes nothing)."""
    norm.fit_source(_stack(sources))
    return [np.asarray(norm.transform(s)) for s in sources]


def _generator(checkpoint, direction: str, device: str):
    from pathgen.saasn.infer import SaasnNormalizer

    try:
        return SaasnNormalizer(checkpoint, device=device, direction=direction, max_batch=4)
    except PathgenError as err:
        if direction == "y2x":  # e.g. a shipped model, which keeps only the X → Y generator
            raise PathgenError(f"{err.problem}; evaluate X → Y only (--no-reverse)", err.path) from err
        raise


def evaluate_stain(sources: dict[str, str | os.PathLike], target: str | os.PathLike, saasn=None, ablation=None,
                   methods: tuple[str, ...] = ("identity", "saasn", "saasn-map", "cyclegan", "cyclegan-map",
                                               "macenko", "vahadane"),
                   reverse: bool = True, device: str = "cpu", seed: int = 0, strength: float | None = None,
                   colour: ColourDistanceConfig = ColourDistanceConfig(), save_dir: str | os.PathLike | None = None,
                   fit_target: str | os.PathLike | None = None,
                   fit_sources: dict[str, str | os.PathLike] | None = None) -> dict:
    """Evaluate stain normalisers on held-out tiles (module docstring).

    Parameters
    ----------
    sources : dict of site name → folder (or image file)
        Test tiles of each source site.
    target : path
        Test tiles of the target domain.
    saasn, ablation : path, optional
        SAASN checkpoint folders for the ``saasn`` and ``cyclegan`` methods (skipped when None).
    methods : tuple of str
        Any of identity, saasn, saasn-map, cyclegan, cyclegan-map, macenko, vahadane.
    reverse : bool
        Also evaluate the Y → X direction (target tiles normalised to the pooled sources).
    device : str
    seed : int
        Seed of the classical normalisers' pixel sampling (and of the stain-map fit's).
    strength : float, optional
        Stain-map strength of ``saasn-map`` and ``cyclegan-map`` (default: the one stored with the SAASN model,
        else 1).
    colour : ColourDistanceConfig
    save_dir : path, optional
        Write every normalised tile as ``save_dir/<method>/<direction>/<tile>.png`` for inspection.
    fit_target : path, optional
        Tiles (folder or image) the classical methods fit the target stain to for the X → Y directions, e.g. the
        target's training tiles. Default: ``target`` itself (the oracle setting, module docstring).
    fit_sources : dict of site name → folder, optional
        Tiles pooled as the classical methods' target for Y → X. Default: the ``sources`` tiles pooled.

    Returns
    -------
    dict
        ``{"directions": [...], "methods": [...], "results": {method: {direction: {"ssim_mean", "ssim_std",
        "colour_swd", "n", "ssim" (per tile)}}}, "tiles": {site: n}, "colour_config": {...},
        "classical_reference": {"X → Y": str, "Y → X": str}}``
    """
    from dataclasses import asdict

    from pathgen.metrics.image import ssim_gray
    from pathgen.saasn.stainmap import StainMap, fit_stain_map

    unknown = sorted(set(methods) - {"identity", "saasn", "saasn-map", "cyclegan", "cyclegan-map", *CLASSICAL})
    if unknown:
        raise PathgenError(f"unknown method(s) {', '.join(unknown)} (choose identity, saasn, saasn-map, cyclegan, "
                           "cyclegan-map, macenko, vahadane)")
    checkpoints = {"saasn": saasn, "saasn-map": saasn, "cyclegan": ablation, "cyclegan-map": ablation}
    active = [m for m in methods if m not in checkpoints or checkpoints[m] is not None]
    if not sources:
        raise PathgenError("no source sites given")
    site_tiles = {name: load_tiles(path) for name, path in sources.items()}
    target_names, target_tiles = load_tiles(target)
    pooled_sources = [t for _, tiles in site_tiles.values() for t in tiles]
    # what the classical methods fit their target to, per direction (the evaluation reference unless named)
    fit_y = load_tiles(fit_target)[1] if fit_target is not None else target_tiles
    fit_x = ([t for path in fit_sources.values() for t in load_tiles(path)[1]] if fit_sources
             else pooled_sources)
    classical_reference = {"X → Y": str(fit_target) if fit_target is not None else "evaluation target tiles",
                           REVERSE: (", ".join(str(p) for p in fit_sources.values()) if fit_sources
                                     else "evaluation source tiles")}
    directions: list[tuple[str, list[str], list[np.ndarray], list[np.ndarray]]] = [
        (f"{name} → Y", names, tiles, target_tiles) for name, (names, tiles) in site_tiles.items()]
    if reverse:
        directions.append((REVERSE, target_names, target_tiles, pooled_sources))

    # both stain-map rows at one strength: the one given, else the SAASN model's stored one
    generators: dict = {}
    map_strength = strength
    if map_strength is None and saasn is not None and any(m.endswith("-map") for m in active):
        generators[(str(saasn), "x2y")] = _generator(saasn, "x2y", device)
        map_strength = generators[(str(saasn), "x2y")].resolve_mode("stain-map", None)[1]
    results: dict[str, dict] = {}
    targets: dict = {}
    painted: dict = {}
    for method in active:
        results[method] = {}
        for label, names, tiles, reference in directions:
            x2y = label != REVERSE
            if method == "identity":
                outputs = [t.copy() for t in tiles]
            elif method in CLASSICAL:
                if (method, x2y) not in targets:  # one target fit per method and side, shared by directions
                    targets[(method, x2y)] = _classical_target(method, fit_y if x2y else fit_x, device, seed)
                outputs = _classical(targets[(method, x2y)], tiles)
            else:
                key = "x2y" if x2y else "y2x"
                gen_key = (str(checkpoints[method]), key)
                if gen_key not in generators:
                    generators[gen_key] = _generator(checkpoints[method], key, device)
                gen = generators[gen_key]
                # a model and its -map row share the generator's outputs: it paints each direction's tiles once
                if (gen_key, label) not in painted:
                    painted[(gen_key, label)] = [gen(t) for t in tiles]
                outputs = painted[(gen_key, label)]
                if method.endswith("-map"):
                    s = map_strength if map_strength is not None else gen.resolve_mode("stain-map", None)[1]
                    stain_map = StainMap(fit_stain_map(tiles, outputs, seed=seed), s, fit_tiles=len(tiles))
                    outputs = [stain_map(t) for t in tiles]
            scores = np.array([ssim_gray(o, t) for o, t in zip(outputs, tiles)])
            results[method][label] = {
                "ssim_mean": float(scores.mean()), "ssim_std": float(scores.std()), "n": int(len(scores)),
                "ssim": [round(float(v), 6) for v in scores],  # per tile, in tile order: for paired comparisons
                "colour_swd": colour_distance(outputs, tiles, reference, colour)}
            if save_dir is not None:
                _save_outputs(Path(save_dir) / method / label.replace(" → ", "_to_"), names, outputs)
    return {"directions": [d[0] for d in directions], "methods": active, "results": results,
            "tiles": {**{name: len(t[1]) for name, t in site_tiles.items()}, "Y": len(target_tiles)},
            "colour_config": asdict(colour), "classical_reference": classical_reference}


def _save_outputs(folder: Path, names: list[str], outputs: list[np.ndarray]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, outputs):
        Image.fromarray(image).save(folder / f"{Path(name).stem}.png", format="PNG")


def format_table(report: dict) -> str:
    """Markdown tables: grayscale SSIM mean ± std, then colour distance, methods × directions, each with the mean
    over the X → Y directions (what a many-to-one normaliser is used for) and over all directions."""
    dirs = report["directions"]
    to_y = [d for d in dirs if d != REVERSE]
    means = ["mean → Y"] + (["mean all"] if len(to_y) < len(dirs) else [])

    def avg(r, key, ds):
        return float(np.mean([r[d][key] for d in ds]))

    def header(title):
        return [title, "", "| Method | " + " | ".join(dirs + means) + " |", "|---|" + "---|" * (len(dirs) + len(means))]

    lines = header("Grayscale SSIM, normalised vs source (higher = structure better kept; mean ± std over tiles)")
    for m in report["methods"]:
        r = report["results"][m]
        cells = [f"{r[d]['ssim_mean']:.3f} ± {r[d]['ssim_std']:.3f}" for d in dirs]
        cells += [f"{avg(r, 'ssim_mean', ds):.4f}" for ds in (to_y, dirs)[:len(means)]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [""] + header("Colour distance to the reference domain: sliced W1 over tissue pixels in CIELAB "
                           "(lower = closer colours)")
    for m in report["methods"]:
        r = report["results"][m]
        cells = [f"{r[d]['colour_swd']:.2f}" for d in dirs]
        cells += [f"{avg(r, 'colour_swd', ds):.3f}" for ds in (to_y, dirs)[:len(means)]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ref = report.get("classical_reference")
    if ref and any(m in CLASSICAL for m in report["methods"]):
        lines += ["", "Classical methods' target fitted to: " + "; ".join(f"{d}: {v}" for d, v in ref.items()
                                                                          if d != REVERSE or REVERSE in dirs)]
    return "\n".join(lines)
