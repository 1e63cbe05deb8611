"""Packing throughput: `fetalclip data pack` (cleaning off) against a naive PIL re-encode loop.

Both sides read the same shared HC18 images and write one tar of PNGs. The baseline is what a first script
would do: one process, decode each image with PIL and re-encode it as PNG (PIL defaults) into a tar. Ours is
`pack_shards` with its defaults except cleaning: worker processes, PNG pass-through with ancillary chunks
stripped, captions, JSON metadata, and the filled head masks HC18 has (which the baseline does not even make).

    python benchmarks/pack.py [--limit N] [--workers W]

Prints each side's images/s; the last line is `ratio: X` (ours / baseline, higher is better).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from fetalclip.data.datasets import open_hc18, register_adapter
from fetalclip.data.shards import pack_shards

REPO = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (our worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline(files: list[str], out: Path) -> float:
    start = time.perf_counter()
    with tarfile.open(out, "w") as tar:
        for index, path in enumerate(files):
            with Image.open(path) as image:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
            info = tarfile.TarInfo(f"{index:08d}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return time.perf_counter() - start


def ours(spec: str, out: Path, workers: int | None) -> float:
    start = time.perf_counter()
    pack_shards([spec], out, shard_size=1000, clean=False, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FETALCLIP_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--limit", type=int, default=300, help="images to pack (HC18 has 804 here)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for ours (default: cores)")
    args = parser.parse_args()
    hc18 = Path(args.data) / "hc18"
    if not hc18.is_dir():
        sys.exit(f"HC18 not found at {hc18} (set FETALCLIP_DATA)")
    limit = args.limit
    register_adapter("hc18-bench", lambda path: open_hc18(path).subset(range(min(limit, len(open_hc18(path))))))
    spec = f"hc18-bench:{hc18}"
    files = [r["source"] for r in open_hc18(str(hc18)).records[:limit]]
    n = len(files)
    print(f"images: {n} HC18 PNGs, cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        # Warm the page cache so neither side pays for the first read from disk.
        for path in files:
            Path(path).read_bytes()
        cpu = _cpu_seconds()
        base_s = baseline(files, Path(tmp) / "baseline.tar")
        base_cpu = _cpu_seconds() - cpu
        cpu = _cpu_seconds()
        ours_s = ours(spec, Path(tmp) / "ours", args.workers)
        ours_cpu = _cpu_seconds() - cpu
    base_rate, ours_rate = n / base_s, n / ours_s
    # CPU time per image is what a loaded shared machine distorts least; n_cores / cpu-per-image is the
    # rate the same work reaches on that many idle cores.
    cores = os.cpu_count() or 1
    print(f"baseline (PIL decode + PNG re-encode, 1 process): {base_s:.2f} s wall, {base_rate:.1f} images/s, "
          f"{1000 * base_cpu / n:.1f} ms CPU/image (idle 1 core: {n / base_cpu:.0f} images/s)")
    print(f"ours (fetalclip data pack --no-clean, masks on): {ours_s:.2f} s wall, {ours_rate:.1f} images/s, "
          f"{1000 * ours_cpu / n:.1f} ms CPU/image (idle {cores} cores: {cores * n / ours_cpu:.0f} images/s)")
    print(f"ratio: {ours_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
