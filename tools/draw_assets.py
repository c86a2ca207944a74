"""Redraw the README's figures from the code: `python tools/draw_assets.py [--out assets]`.

Writes scan_orders.png (every candidate direction's order on the 14x14 LocalVim grid, from `scan_maps`),
search_probs.png (the heat map `vis_search_prob.py` draws, for a supernet with seeded random search weights) and
speed.png (the whole-model table of README.md's "Speed" section) and resolution_sweep.png (the CPU resolution
sweep in docs/measurements/cpu_resolution_sweep.csv, written by `tools/benchmark.py --sweep ... --csv`).
"""
import argparse
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_SWEEP = os.path.join(ROOT, "docs", "measurements", "cpu_resolution_sweep.csv")
sys.path.insert(0, ROOT)
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def main() -> None:
    from classification import figures
    from classification.benchmarks import plot_resolution_sweep, read_sweep_csv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "assets"), help="output folder (default: assets/)")
    parser.add_argument("--grid", type=int, nargs=2, default=(14, 14), help="token grid of the scan-order figure")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example search weights")
    args = parser.parse_args()
    if min(args.grid) < 1:
        parser.error(f"--grid must be two positive sizes (H W), got {' '.join(map(str, args.grid))}")
    os.makedirs(args.out, exist_ok=True)
    figures.draw_scan_orders(os.path.join(args.out, "scan_orders.png"), grid=tuple(args.grid))
    figures.draw_example_search_probs(os.path.join(args.out, "search_probs.png"), seed=args.seed)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        settings, rows = figures.read_speed_table(f.read())
    figures.draw_speed_chart(os.path.join(args.out, "speed.png"), settings, rows,
                             caption="README speed table: 2-core EPYC Zen 4, AVX-512, fp32, 224², img/s on the bars")
    plot_resolution_sweep(read_sweep_csv(CPU_SWEEP), os.path.join(args.out, "resolution_sweep.png"))
    print(f"wrote scan_orders.png, search_probs.png, speed.png, resolution_sweep.png into {args.out}")


if __name__ == "__main__":
    run_cli(main)
