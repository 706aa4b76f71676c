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
    args = ap.parse_args()
    rows = ["| slide | floor wall / CPU (s) | convert wall / CPU (s) | ratio wall | ratio CPU | peak RSS (MB) |",
            "|---|---|---|---|---|---|"]
    rss = {}
    for size in args.sizes:
        src = make_slide(size)
        out = WORK / f"converted_{size}.tiff"
        out.unlink(missing_ok=True)
        floor, floor_cpu = io_floor(src)
        wall, peak, cpu = run_measured([sys.executable, "-m", "pathgen", "convert", str(src), "-o", str(out),
                                        "--quiet"], cpu=True)
        rss[size] = peak
        rows.append(f"| {size}×{size} JPEG q90 | {floor:.1f} / {floor_cpu:.1f} | {wall:.1f} / {cpu:.1f} | "
                    f"{wall / floor:.2f}× | {cpu / floor_cpu:.2f}× | {peak:.0f} |")
        print(rows[-1], flush=True)
        out.unlink(missing_ok=True)
    lines = rows
    if len(args.sizes) >= 2:
        a, b = args.sizes[0], args.sizes[-1]
        lines.append("")
        lines.append(f"- RSS growth {a}² → {b}²: {100 * (rss[b] / rss[a] - 1):+.1f} % "
                     f"(pixels ×{(b / a) ** 2:.0f}); targets: ratio ≤ 1.5×, RSS ≤ 1500 MB, growth < 25 %")
    lines.append(f"- machine load while measuring (1-min load average): {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} cores; the floor runs on one thread, convert on the default pool. CPU time "
                 "is the contention-robust comparison; convert also builds and writes every coarser level.")
    append_results("pathgen convert vs I/O floor (issue 2)", lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
