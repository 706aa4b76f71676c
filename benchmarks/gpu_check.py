"""GPU check: every model trains a few steps, a slide is normalised and segmented, and dask-cuda runs one worker
per GPU — on ``cuda`` and on the CPU, timed side by side. Run it first whenever a CUDA machine is available.

What it does (about 5 minutes on one H100; ``--smoke`` runs tiny sizes on the CPU only, to check the script):

1. the machine: torch, CUDA, every GPU's name and memory;
2. training steps (``pathgen train …`` through the CLI, ``--device cuda`` vs ``--device cpu``): HoVer-Net, SAASN,
   NASDM, MaskGen, and the renal latent diffusion model when this checkout has it; steps per second from the
   difference between runs of n and 2n steps (process start-up and model loading cancel out);
3. slide jobs on a generated slide: Macenko normalisation, SAASN (generator mode) and HoVer-Net segmentation,
   each on ``cuda`` and on the CPU (the CPU on a smaller crop, scaled per megapixel); megapixels per second;
4. dask-cuda: the normalisation again with ``--workers N --device cuda`` (one worker per GPU) when ``dask_cuda``
   imports; else it says so (``pip install .[gpu]``).

Every figure is printed and appended, with the command line and the machine, to ``benchmarks/RESULTS.md``.

Run (from the repository root, on the GPU machine; see ``benchmarks/gpu_check.sh`` for carrying the wheels the
project needs beside the machine's own PyTorch)::

    python benchmarks/gpu_check.py            # the full check (cuda vs cpu)
    python benchmarks/gpu_check.py --smoke    # tiny CPU-only run: checks the script itself
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))


def pathgen(*args, check: bool = True, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``pathgen ARGS`` in a fresh process; returns (seconds, process)."""
    cmd = [sys.executable, "-c", "import sys; from pathgen.cli import main; sys.exit(main(sys.argv[1:]))",
           *[str(a) for a in args], "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"pathgen {' '.join(map(str, args))} failed: {proc.stderr.strip()[-400:]}")
    return seconds, proc


def machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [f"{torch.cuda.get_device_name(i)} "
                        f"({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
                        for i in range(torch.cuda.device_count())]
    return info


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, cuda: str, cpu: str, ratio: str) -> None:
        self.rows.append((what, cuda, cpu, ratio))
        print(f"  {what:<44} cuda {cuda:>14}   cpu {cpu:>14}   {ratio}", flush=True)

    def markdown(self) -> str:
        lines = ["| check | cuda | cpu | cuda / cpu |", "|---|---|---|---|"]
        lines += [f"| {w} | {a} | {b} | {r} |" for w, a, b, r in self.rows]
        return "\n".join(lines)


def _rate(n: float, seconds: float, unit: str) -> str:
    return f"{n / seconds:.2f} {unit}/s" if seconds > 0 else "-"


def training(work: Path, devices: list[str], steps: dict[str, int], table: Table) -> None:
    """A few training steps of every model on each device (steps per second, process start included)."""
    data = work / "tiles"
    if not data.exists():
        pathgen("data", "synth-tiles", "-o", data, "-n", 16, "--seed", 0, "--size", 128)
    target = work / "target"
    if not target.exists():
        pathgen("data", "synth-tiles", "-o", target, "-n", 8, "--seed", 1, "--size", 128, "--sites", "E")
    jobs = {
        "HoVer-Net": lambda dev, n, out: ("train", "hovernet", "--data", data, "-o", out, "--epochs", 1,
                                          "--steps-per-epoch", n, "--batch-size", 8, "--patch-size", 128,
                                          "--val-fraction", 0.25, "--device", dev),
        "SAASN": lambda dev, n, out: ("train", "saasn", "--source", data / "images", "--target", target / "images",
                                      "-o", out, "--epochs", 1, "--steps-per-epoch", n, "--preset", "small",
                                      "--device", dev),
        "NASDM": lambda dev, n, out: ("train", "nasdm", "--data", data, "-o", out, "--steps", n, "--finetune-steps",
                                      0, "--preset", "small", "--image-size", 32, "--warmup", 1, "--device", dev),
        "MaskGen": lambda dev, n, out: ("train", "maskgen", "--data", data, "-o", out, "--steps", n, "--preset",
                                        "small", "--warmup", 1, "--device", dev),
    }
    _, helptext = pathgen("train", "--help", check=False)
    if "renal" in helptext.stdout:
        renal = work / "renal"
        if not renal.exists():
            pathgen("data", "synth-renal", "-o", renal, "-n", 8, "--size", 128, "--seed", 0, check=False)
        jobs["renal LDM"] = lambda dev, n, out: ("train", "renal", "--data", renal, "-o", out, "--steps", n,
                                                 "--device", dev)
    for name, args in jobs.items():
        times = {}
        for dev in devices:
            n = steps["cuda" if dev.startswith("cuda") else "cpu"]
            try:
                # n and 2n steps in fresh processes: the difference is n steps without start-up and loading
                spent = []
                for k in (n, 2 * n):
                    out = work / "runs" / f"{name.replace(' ', '_')}_{dev.replace(':', '')}_{k}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    spent.append(pathgen(*args(dev, k, out))[0])
                times[dev] = (n, max(spent[1] - spent[0], 1e-3))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                times[dev] = None
                print(f"  {name} on {dev}: {exc}", flush=True)
        cells = {d: (_rate(*t, "steps") if t else "failed") for d, t in times.items()}
        ratio = "-"
        if all(times.get(d) for d in devices) and len(devices) == 2:
            (nc, sc), (nd, sd) = times[devices[0]], times[devices[1]]
            ratio = f"{(nc / sc) / (nd / sd):.1f}×"
        table.add(f"train {name}", cells.get("cuda", "-"), cells.get("cpu", "-"), ratio)


def slide_jobs(work: Path, devices: list[str], side: int, cpu_side: int, table: Table) -> None:
    """Normalise (Macenko, SAASN) and segment a generated slide on each device (megapixels per second)."""
    big = work / f"slide_{side}.svs"
    small = work / f"slide_{cpu_side}.svs"
    for path, s in ((big, side), (small, cpu_side)):
        if not path.exists():
            pathgen("data", "synth-slide", "-o", path, "--width", s, "--height", s, "--workers", os.cpu_count() or 1)
    jobs = {
        "normalize Macenko": lambda src, dev, out: ("normalize", src, "-o", out / "m.tiff", "--method", "macenko",
                                                    "--device", dev),
        "normalize SAASN (generator)": lambda src, dev, out: ("normalize", src, "-o", out / "s.tiff", "--method",
                                                              "saasn", "--saasn-mode", "generator", "--device",
                                                              dev),
        "segment HoVer-Net": lambda src, dev, out: ("segment", src, "-o", out / "seg", "--device", dev),
    }
    for name, args in jobs.items():
        rates = {}
        for dev in devices:
            src, s = (big, side) if dev.startswith("cuda") else (small, cpu_side)
            out = work / "jobs" / f"{name.split()[1]}_{dev.replace(':', '')}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            try:
                seconds, _ = pathgen(*args(src, dev, out))
                rates[dev] = s * s / 1e6 / seconds
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"  {name} on {dev}: {exc}", flush=True)
        cells = {d: f"{r:.2f} MP/s" for d, r in rates.items()}
        ratio = f"{rates[devices[0]] / rates[devices[-1]]:.1f}×" if len(rates) == 2 and len(devices) == 2 else "-"
        table.add(f"{name} ({side}² cuda, {cpu_side}² cpu)", cells.get("cuda", "-"), cells.get("cpu", "-"), ratio)


def dask_cuda_workers(work: Path, side: int, table: Table) -> None:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        table.add("dask-cuda: one worker per GPU", "not installed", "-", "pip install .[gpu]")
        return
    import torch

    n = torch.cuda.device_count()
    out = work / "jobs" / "daskcuda"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds, _ = pathgen("normalize", work / f"slide_{side}.svs", "-o", out / "m.tiff", "--method", "macenko",
                         "--device", "cuda", "--workers", n)
    table.add(f"normalize Macenko, dask-cuda {n} worker(s)", f"{side * side / 1e6 / seconds:.2f} MP/s", "-", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU only (checks the script)")
    parser.add_argument("--side", type=int, default=8192, help="side of the generated slide for cuda (pixels)")
    parser.add_argument("--cpu-side", type=int, default=2048, help="side of the slide the CPU gets (pixels)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    a = parser.parse_args()
    import torch

    from _common import append_results

    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        print("no CUDA GPU visible: run with --smoke for a CPU-only check of the script", file=sys.stderr)
        return 2
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    side, cpu_side = (a.side, a.cpu_side) if cuda else (512, 512)
    steps = {"cuda": 30, "cpu": 4} if cuda else {"cpu": 1}
    info = machine()
    print(f"machine: {info}", flush=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="pathgen-gpu-check-"))
    table = Table()
    t0 = time.perf_counter()
    training(work, devices, steps, table)
    slide_jobs(work, devices, side, cpu_side, table)
    if cuda:
        dask_cuda_workers(work, side, table)
    minutes = (time.perf_counter() - t0) / 60
    print(f"done in {minutes:.1f} min", flush=True)
    if not a.no_record:
        append_results(f"GPU check ({'smoke, CPU only' if a.smoke else ', '.join(info.get('gpus', []))})",
                       [f"machine: {info}", f"wall time: {minutes:.1f} min", "", table.markdown()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
