"""`pathgen convert` against the I/O floor, and peak memory as the slide grows.

The floor is a bare tifffile loop over the same slide: decode every level-0 JPEG tile and encode it again with the
same codec and quality, nothing else (no pyramid, no stitching). pathgen additionally builds and writes every
coarser level. Peak RSS is the maximum resident set of the `pathgen convert` process.

    python benchmarks/bench_convert.py --sizes 20000 40000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from _common import WORK, append_results, run_measured


def make_slide(size: int, seed: int = 0):
    from pathgen.data.synth import write_synthetic_slide

    path = WORK / f"synth_{size}.svs"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_synthetic_slide(path, size, size, seed=seed, site="A", tile_size=512, mpp=0.5, fmt="svs", quality=90)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s")
    return path


def io_floor(path) -> tuple[float, float]:
    """(wall, CPU) seconds to decode and re-encode every level-0 tile, sequentially, with tifffile +
    imagecodecs."""
    import imagecodecs
    import tifffile

    t0, c0 = time.perf_counter(), time.process_time()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        tables = page.jpegtables
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            fh.seek(offset)
            data = fh.read(count)
            tile = imagecodecs.jpeg_decode(data, tables=tables)
            imagecodecs.jpeg_encode(tile, level=90)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000])
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved floor/convert pairs per size; medians are reported (this VM is noisy)")
    args = ap.parse_args()
    rows = ["| slide | floor wall / CPU (s) | convert wall / CPU (s) | ratio wall | ratio CPU | peak RSS (MB) |",
            "|---|---|---|---|---|---|"]
    rss = {}
    for size in args.sizes:
        src = make_slide(size)
        out = WORK / f"converted_{size}.tiff"
        floors, convs, ratios, cpu_ratios, peaks = [], [], [], [], []
        for _ in range(args.repeat):
            out.unlink(missing_ok=True)
            floor, floor_cpu = io_floor(src)
            wall, peak, cpu = run_measured([sys.executable, "-m", "pathgen", "convert", str(src), "-o", str(out),
                                            "--quiet"], cpu=True)
            floors.append((floor, floor_cpu))
            convs.append((wall, cpu))
            ratios.append(wall / floor)
            cpu_ratios.append(cpu / floor_cpu)
            peaks.append(peak)
            print(f"  {size}: floor {floor:.2f} s, convert {wall:.2f} s ({wall / floor:.2f}x), RSS {peak:.0f} MB",
                  flush=True)
        out.unlink(missing_ok=True)
        med = lambda v: float(np.median(v))  # noqa: E731
        rss[size] = max(peaks)
        rows.append(f"| {size}×{size} JPEG q90 | {med([f[0] for f in floors]):.2f} / {med([f[1] for f in floors]):.2f}"
                    f" | {med([c[0] for c in convs]):.2f} / {med([c[1] for c in convs]):.2f} | {med(ratios):.2f}× "
                    f"(runs {', '.join(f'{r:.2f}' for r in ratios)}) | {med(cpu_ratios):.2f}× | {rss[size]:.0f} |")
        print(rows[-1], flush=True)
    lines = rows
    if len(args.sizes) >= 2:
        a, b = args.sizes[0], args.sizes[-1]
        lines.append("")
        lines.append(f"- RSS growth {a}² → {b}²: {100 * (rss[b] / rss[a] - 1):+.1f} % "
                     f"(pixels ×{(b / a) ** 2:.0f}); targets: ratio ≤ 1.5×, RSS ≤ 1500 MB, growth < 25 %")
    lines.append(f"- {args.repeat} interleaved floor/convert pairs per size, medians (ratio = median of per-pair "
                 f"ratios); 1-min load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. The "
                 "floor runs on one thread; convert (including interpreter start-up) uses the default pool and also "
                 "builds and writes every coarser level and the thumbnail.")
    append_results("pathgen convert vs I/O floor (issue 2)", lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
