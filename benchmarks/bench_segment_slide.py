"""Whole-slide nuclei segmentation: throughput and peak memory of `pathgen segment` on a generated slide.

Runs the CLI in a child process (so peak RSS is the job's own) on the generated ``synth_SIZE.svs`` of
``bench_convert.py`` (made if missing) with the shipped ``hovernet_small`` model, then reopens the outputs and
counts the nuclei. Figures: wall time, tiles/s and Mpx/s over the whole slide (tissue-free tiles are skipped, as
in normal use, and the count of processed tiles is reported), CPU seconds and peak RSS.

    python benchmarks/bench_segment_slide.py --size 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from _common import WORK, append_results, run_measured
from bench_convert import make_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--checkpoint", default=None, help="HoVer-Net run folder (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    src = make_slide(args.size)
    out = WORK / f"segment_{args.size}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pathgen", "segment", str(src), "-o", str(out), "--quiet"]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    wall, peak, cpu = run_measured(cmd, cpu=True)
    info = json.loads((out / "segment.json").read_text())
    run = info.get("run", info)
    windows = run.get("windows")
    processed = run.get("processed", windows)
    nuclei = run.get("nuclei")
    mpx = args.size * args.size / 1e6
    lines = [
        f"- slide: `{os.path.relpath(src, WORK.parent.parent)}` ({args.size}×{args.size} px, 0.5 µm/px, JPEG tiles)",
        f"- model: {args.checkpoint or 'sample_data/models/hovernet_small (default)'}; CPU, "
        f"{args.threads or os.cpu_count()} threads; 1-min load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| wall (s) | CPU (s) | windows (processed) | tiles/s | Mpx/s (slide area) | nuclei | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
        f"| {wall:.0f} | {cpu:.0f} | {windows} ({processed}) | {(processed or 0) / wall:.2f} | {mpx / wall:.3f} | "
        f"{nuclei} | {peak:.0f} |",
    ]
    append_results(f"Whole-slide segmentation, {args.size}² generated slide (issue 5)", lines)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
