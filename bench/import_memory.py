"""Peak RAM of importing a release-layout checkpoint (memory-mapped; only the chosen weights are read).

    python -m mmgen_edge.bench.import_memory [--depth 7] [--keep DIR]

Writes a random SiT-B/2-shaped checkpoint (model + ema + AdamW state: about 4x the EMA weights, >= 1 GB by
default), then converts it in a fresh process and reports the peak RSS growth of that process over its
baseline (after imports and torch's one-time initialisation) next to the EMA weights' size. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mmgen_edge.cli import positive_int

MEASURE = r"""
import json, sys
import torch, mmgen_edge.export.checkpoint as ck
def status_kb(field):  # VmHWM belongs to this exec'd address space (ru_maxrss would include the parent's fork)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
# warm-up: the first model built on the meta device costs ~70 MB of one-time torch initialisation, whatever its size
from mmgen_edge.config import preset
from mmgen_edge.export.model import MMGen
with torch.device("meta"):
    MMGen(preset("SiT-S/8", resolution=64))
base = status_kb("VmRSS")
summary = ck.convert_checkpoint(sys.argv[1], sys.argv[2], sha256="skip")
print(json.dumps({"baseline_rss_bytes": base * 1024, "peak_rss_bytes": status_kb("VmHWM") * 1024, "weights_bytes": summary.bytes_written}))
"""


def measure(depth: int, workdir: Path) -> dict[str, float]:
    from mmgen_edge.export.synthetic import write_release_checkpoint

    ckpt = workdir / "release_layout.pt"
    write_release_checkpoint(ckpt, model="SiT-B/2", resolution=256, depth=depth)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(ckpt), str(workdir / "model")], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    growth = result["peak_rss_bytes"] - result["baseline_rss_bytes"]
    return {
        "checkpoint_bytes": ckpt.stat().st_size,
        "weights_bytes": result["weights_bytes"],
        "peak_rss_growth_bytes": growth,
        "growth_over_weights": growth / result["weights_bytes"],
        "baseline_rss_bytes": result["baseline_rss_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=positive_int, default=7, help="SiT-B/2 blocks (7 -> ~1.2 GB checkpoint)")
    parser.add_argument("--keep", type=Path, help="work in this directory instead of a temporary one")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        print(json.dumps(measure(args.depth, args.keep)))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(args.depth, Path(tmp))))


if __name__ == "__main__":
    main()
