"""Speed, FLOP and GPU-correctness measurements of the models and the kernel ops (what ``tools/benchmark.py``,
``tools/flops.py``, ``tools/speed_test.py`` and ``tools/gpu_check.py`` run). The only part of the library that uses
the kernel packages' backend registry directly, to time each backend in turn.

    from classification.benchmarks import build_model, flops_row, images_per_second
    images_per_second({"local_vim_tiny": build_model("local_vim_tiny")}, batch=8)   # {'local_vim_tiny': img/s}
    flops_row("local_vim_tiny")        # {'model', 'img_size', 'params', 'original', 'fvcore', 'unsupported'}

- ``op_speed``: kernel ops, every backend against the reference (``benchmark_op``).
- ``model_speed``: images per second of models, against a timm baseline (``images_per_second``, ``benchmark_models``).
- ``resolution_sweep``: inference img/s and peak memory against image size, the size where a model overtakes its
  baseline, and its figure (``resolution_sweep``, ``plot_resolution_sweep``); ``peak_memory``: a forward's peak.
- ``ema_speed``: the update of ``--model-ema`` against timm's ModelEmaV2 (``benchmark_ema``).
- ``flops``: parameters and FLOPs in the original's and in fvcore's convention (``flops_row``, ``flops_rows``).
- ``gpu_check``: the Triton backends against the reference, outputs and gradients, then timings.
- ``timing``, ``tables``: interleaved medians; text tables and CSV files.
- ``stopping``: a tool's run stopped by Ctrl-C or an error ends in one line and keeps the rows that ended.
"""
from ..engine.model_builder import UnknownModelError
from .flops import count_params, flops_row, flops_rows, format_flops_table
from .model_speed import benchmark_models, build_model, default_baseline, format_model_table, images_per_second
from .resolution_sweep import (crossing_size, device_description, format_sweep_table, plot_resolution_sweep,
                               read_sweep_csv, resolution_sweep)
from .op_speed import CASES, OpShape, benchmark_op, format_op_table, print_op_benchmark, unavailable_backends
from .tables import output_file_problem, render_table, write_csv
from .timing import DTYPES, median_seconds, parse_device

__all__ = [
    "CASES", "DTYPES", "OpShape", "UnknownModelError", "benchmark_models", "benchmark_op", "build_model",
    "count_params", "crossing_size", "default_baseline", "device_description", "flops_row", "flops_rows",
    "format_flops_table", "format_model_table", "format_op_table", "format_sweep_table", "images_per_second",
    "median_seconds", "output_file_problem", "parse_device", "plot_resolution_sweep", "print_op_benchmark",
    "read_sweep_csv", "render_table", "resolution_sweep", "unavailable_backends", "write_csv",
]
