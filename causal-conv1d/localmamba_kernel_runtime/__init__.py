"""The kernel runtime shared by LocalMamba's op packages (``localmamba_conv1d``, ``localmamba_ssm``), which import it;
it imports neither.

- ``backends``: the per-call backend registry and ``LOCALMAMBA_BACKEND``.
- ``ckernel``: builds the C kernels on first use (cached) and loads them.
- ``kernel_args``: checks a kernel's ctypes argument struct against the C struct it mirrors.
- ``task_runner``: runs a loaded kernel over its items on threads and checks the status it returns.
- ``csrc/``: the C headers every kernel includes (``vector_math.h``: 8-wide vectors and polynomial math;
  ``kernel_args.h``: argument structs with a layout Python can check) and ``task_runner.c``.
- ``settings``: the environment variables checked at once (what a tool refuses before it starts).
- ``precision``: fp32 compute under autocast; ``validation``: helpers of the argument checks.
- ``derivatives``: the one-line refusal of a second derivative through a kernel backward.
- ``launch_limits``: the GPU a Triton op launches on (its tensors', made current), what one Triton kernel call can
  address (32-bit offsets, CUDA's grid) and the batch slices that keep each call inside it.

It ships with ``localmamba_conv1d`` (``pip install ./causal-conv1d`` installs both).
"""
