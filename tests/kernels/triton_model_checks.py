"""Whole small models with every op forced to triton (under TRITON_INTERPRET=1) against every op on the reference:
logits and the gradient of every parameter. Run by test_triton_models.py in a subprocess (the interpreter must be
chosen before the kernels are defined). Prints one ``ok`` line per model; exits non-zero at the first mismatch."""
import sys

import timm
import torch
from fast_interpreter import use_fast_interpreter

import classification.models  # noqa: F401  (registers the models)
from localmamba_kernel_runtime import backends

MODELS = {
    # LocalVMamba: no conv, so the token-major scan; windows with padding (w2 on odd grids), 2-3 directions a block
    "local_vssm_tiny": dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), num_classes=5,
                            directions=[["h", "v_flip", "w2"], ["w2_flip", "h_flip"], ["v", "w7"], ["h"]]),
    # LocalVim: conv, middle class token, windows with padding (w2 on the 3x3 grid)
    "local_vim_tiny": dict(depth=2, embed_dim=16, num_classes=5, img_size=24, patch_size=8,
                           directions=[["h", "v_flip", "w2", "w2_flip"], ["h_flip", "v"]]),
}
TOLERANCE = 1e-4


def logits_and_grads(model, images, backend):
    backends.force_backend(backend)
    model.zero_grad()
    logits = model(images)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def main():
    use_fast_interpreter()
    for name, kwargs in MODELS.items():
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs).eval()     # eval: no stochastic depth, the same graph twice
        images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
        logits, grads = logits_and_grads(model, images, "triton")
        logits_ref, grads_ref = logits_and_grads(model, images, "reference")
        if grads.keys() != grads_ref.keys():
            sys.exit(f"{name}: gradients of {sorted(grads.keys() ^ grads_ref.keys())} present on one side only")
        errors = {"logits": relative_error(logits, logits_ref)}
        errors.update({n: relative_error(grads[n], grads_ref[n]) for n in grads_ref})
        worst = max(errors, key=errors.get)
        if not errors[worst] < TOLERANCE:
            sys.exit(f"{name}: {worst} relative error {errors[worst]:.2e} >= {TOLERANCE:.0e}")
        print(f"ok {name}: logits {errors['logits']:.1e}, {len(grads_ref)} gradients, worst {errors[worst]:.1e}")


if __name__ == "__main__":
    main()
