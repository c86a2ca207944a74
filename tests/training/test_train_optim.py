"""Optimizer parameter groups and the LR schedule against hand-computed values."""
import copy
import math
import re

import pytest
import timm
import torch
import torch.nn as nn

import classification  # noqa: F401  (registers the models)
from classification.engine.config import parse_args
from classification.engine.optim import build_optimizer, param_groups
from classification.engine.scheduler import WarmupScheduler, build_scheduler


class Toy(nn.Module):
    """Parameters of every kind the grouping rules distinguish."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))
        self.fc = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.A_log = nn.Parameter(torch.zeros(6, 2))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(6))
        self.D._no_weight_decay = True
        self.multi_scan = nn.Module()
        self.multi_scan.weights = nn.Parameter(torch.zeros(8, 1, 1, 1))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self):
        return {"pos_embed"}


def names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_original_groups_decay_A_log_and_search_weights():
    m = Toy()
    no_decay, decay = param_groups(m, lr=1e-3, weight_decay=0.04)
    assert names(m, no_decay) == ["D", "fc.bias", "norm.bias", "norm.weight", "pos_embed"]
    assert names(m, decay) == ["A_log", "fc.weight", "multi_scan.weights"]
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.04)
    assert no_decay["initial_lr"] == decay["initial_lr"] == 1e-3


@pytest.mark.parametrize("name, kwargs, exempt_tables", [
    ("local_vssm_tiny", dict(dims=8, depths=(1, 1, 1, 1), directions=[["h", "w2"]] * 4), set()),
    ("local_vim_tiny_middle_cls_token", dict(img_size=32, embed_dim=16, depth=2, directions=[["h", "w2"], ["v"]]),
     {"pos_embed", "cls_token"}),
])
def test_real_models_decay_every_tensor_of_two_or_more_dims_but_the_listed_tables(name, kwargs, exempt_tables):
    """The original's rule on the released models (facts §5.5): every bias and norm there is 1-D, so the no-decay
    group is the 1-D parameters plus the names of `no_weight_decay()` (VSSM: none; LocalVim: pos_embed, cls_token),
    and everything else decays, A_logs and the 2-D `dt_projs_bias` included. A name test on `bias` instead of
    `.bias` exempted `dt_projs_bias` from the decay the published runs gave it."""
    model = timm.create_model(name, num_classes=3, **kwargs)
    assert set(model.no_weight_decay()) == exempt_tables
    params = dict(model.named_parameters())
    no_decay, decay = param_groups(model, lr=1e-3, weight_decay=0.04)
    assert names(model, no_decay) == sorted(n for n, p in params.items() if p.ndim == 1 or n in exempt_tables)
    assert names(model, decay) == sorted(n for n, p in params.items() if p.ndim >= 2 and n not in exempt_tables)
    assert len(no_decay["params"]) + len(decay["params"]) == len(params)
    if name.startswith("local_vssm"):
        two_dim = [n for n in names(model, decay) if n.endswith(("dt_projs_bias", "x_proj_weight", "A_logs"))]
        assert len(two_dim) == 3 * 4 and all(params[n].ndim >= 2 for n in two_dim)


def test_honor_no_weight_decay_is_opt_in():
    m = Toy()
    no_decay, decay = param_groups(m, lr=1e-3, weight_decay=0.04, honor_no_weight_decay=True)
    assert names(m, decay) == ["fc.weight"]
    assert "A_log" in names(m, no_decay) and "multi_scan.weights" in names(m, no_decay)


@pytest.mark.parametrize("name, kwargs", [
    ("local_vssm_tiny", dict(dims=8, depths=(1, 1, 1, 1), directions=[["h", "w2"]] * 4)),
    ("local_vim_tiny_middle_cls_token", dict(img_size=32, embed_dim=16, depth=2, directions=[["h", "w2"], ["v"]])),
])
@pytest.mark.parametrize("copied_by", ["deepcopy", "to_empty"])
def test_honor_no_weight_decay_exempts_A_log_and_D_of_a_copied_model(name, kwargs, copied_by):
    """A deep copy (or a model built on the meta device and then `to_empty`) loses attributes set on a parameter, so
    a `_no_weight_decay` mark on A_log left it in the decay group of such a model; the mixers name them instead."""
    if copied_by == "deepcopy":
        model = copy.deepcopy(timm.create_model(name, num_classes=3, **kwargs))
    else:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=3, **kwargs)
        model.to_empty(device="cpu")
    state_names = {n for n, _ in model.named_parameters() if re.search(r"\.(A_logs?|Ds?)(_\d+)?$", n)}
    assert len(state_names) == (2 * 4 if name.startswith("local_vssm") else 2 * 3)
    no_decay, decay = param_groups(model, lr=1e-3, weight_decay=0.04, honor_no_weight_decay=True)
    assert state_names <= set(names(model, no_decay)) and not state_names & set(names(model, decay))
    _, original_decay = param_groups(model, lr=1e-3, weight_decay=0.04)
    assert {n for n in state_names if "A_log" in n} <= set(names(model, original_decay))


def test_single_group_without_filter_or_without_decay():
    m = Toy()
    assert len(param_groups(m, 1e-3, 0.04, filter_no_decay=False)) == 1
    (only,) = param_groups(m, 1e-3, 0.0)
    assert len(only["params"]) == 8  # the frozen parameter is left out


def test_adamw_from_flags():
    opt = build_optimizer(Toy(), parse_args(["--opt", "adamw", "--lr", "2e-3", "--weight-decay", "0.05",
                                             "--opt-eps", "1e-6"]))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05] and opt.defaults["eps"] == 1e-6


def test_sgd_and_rmsprop_from_flags():
    """The original's optimizers: SGD with Nesterov momentum 0.9 unless --sgd-no-nesterov; RMSprop and RMSpropTF
    take --opt-eps and --momentum."""
    sgd = build_optimizer(Toy(), parse_args(["--opt", "sgd"]))
    assert isinstance(sgd, torch.optim.SGD) and (sgd.defaults["nesterov"], sgd.defaults["momentum"]) == (True, 0.9)
    assert build_optimizer(Toy(), parse_args(["--opt", "sgd", "--sgd-no-nesterov"])).defaults["nesterov"] is False
    for name in ("rmsprop", "rmsproptf"):
        opt = build_optimizer(Toy(), parse_args(["--opt", name, "--opt-eps", "1e-3", "--momentum", "0.5"]))
        assert (opt.defaults["eps"], opt.defaults["momentum"]) == (1e-3, 0.5)


def test_opt_no_filter_weight_decays_every_parameter():
    """--opt-no-filter: one group that decays every parameter by --weight-decay, the 1-D bias included. With a zero
    gradient AdamW's step is the decoupled decay alone, p * (1 - lr * wd)."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    opt = build_optimizer(model, parse_args(["--opt", "adamw", "--opt-no-filter", "--lr", "0.5",
                                             "--weight-decay", "0.1"]))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    opt.step()
    torch.testing.assert_close(model.bias, torch.tensor([1.0 - 0.5 * 0.1]))
    torch.testing.assert_close(model.weight, torch.full((1, 2), 1.0 - 0.5 * 0.1))


def test_adamw_betas_and_sgd_momentum_come_from_their_flags():
    adamw = build_optimizer(Toy(), parse_args(["--opt", "adamw", "--opt-betas", "0.8", "0.99"]))
    assert adamw.defaults["betas"] == (0.8, 0.99)
    sgd = build_optimizer(Toy(), parse_args(["--opt", "sgd", "--momentum", "0.5"]))
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.5, True)


def test_honor_no_weight_decay_takes_the_names_the_root_module_lists():
    """`opt_in_no_weight_decay` on the model itself names its own parameters, without a module prefix."""
    model = nn.Module()
    model.scale = nn.Parameter(torch.ones(2, 2))
    model.fc = nn.Linear(2, 2)
    model.opt_in_no_weight_decay = ("scale",)
    no_decay, decay = param_groups(model, lr=1e-3, weight_decay=0.04, honor_no_weight_decay=True)
    assert (names(model, no_decay), names(model, decay)) == (["fc.bias", "scale"], ["fc.weight"])


def test_sgd_without_momentum_is_plain_sgd():
    """--opt sgd --momentum 0 (Nesterov by default): torch refuses Nesterov without momentum, which ended the run in
    a traceback; the update of Nesterov momentum 0 is plain SGD's, p - lr * (g + wd * p)."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    opt = build_optimizer(model, parse_args(["--opt", "sgd", "--momentum", "0", "--lr", "0.5",
                                             "--weight-decay", "0.1"]))
    model(torch.tensor([[3.0, 4.0]])).sum().backward()     # gradient (3, 4)
    opt.step()
    assert opt.defaults["nesterov"] is False
    torch.testing.assert_close(model.weight, torch.tensor([[1.0 - 0.5 * (3.0 + 0.1), -2.0 - 0.5 * (4.0 - 0.2)]]))


def test_a_no_weight_decay_entry_with_the_g_prefix_matches_by_substring():
    """timm's and the original's rule: `[g]pos` in `no_weight_decay()` exempts every name containing `pos`."""
    model = Toy()
    model.no_weight_decay = lambda: {"[g]pos"}
    no_decay, _ = param_groups(model, lr=1e-3, weight_decay=0.04)
    assert "pos_embed" in names(model, no_decay)
    model.no_weight_decay = lambda: {"pos"}
    assert "pos_embed" not in names(model, param_groups(model, lr=1e-3, weight_decay=0.04)[0])


def test_groups_of_another_initial_lr_keep_their_ratio_to_the_schedule():
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "initial_lr": 1e-3}, {"params": [params[1]], "initial_lr": 1e-4}],
                          lr=1e-3)
    sched = WarmupScheduler(opt, "cosine", lr=1e-3, steps_per_epoch=10, epochs=5, warmup_epochs=2, warmup_lr=1e-7,
                            min_lr=1e-6)
    for _ in range(45):
        first, second = (group["lr"] for group in opt.param_groups)
        assert second == pytest.approx(first / 10)
        sched.step()


def make(kind, warmup=2, **kw):
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "initial_lr": 1e-3}], lr=1e-3)
    args = dict(lr=1e-3, steps_per_epoch=10, epochs=5, warmup_epochs=warmup, warmup_lr=1e-7, min_lr=1e-6)
    args.update(kw)
    return WarmupScheduler(opt, kind, **args), opt


def cosine(u, span=30, lr=1e-3, lo=1e-6):
    return lo + (lr - lo) * (1 + math.cos(math.pi * u / span)) / 2


def test_warmup_is_constant_within_each_epoch_then_cosine_per_iteration():
    s, opt = make("cosine")
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        s.step()
    assert seen[:10] == [1e-7] * 10
    assert seen[10:20] == [pytest.approx(1e-7 + (1e-3 - 1e-7) * 10 / 20)] * 10
    assert seen[20] == pytest.approx(1e-3) and seen[21] == pytest.approx(1e-3)
    assert seen[22] == pytest.approx(cosine(1)) and seen[49] == pytest.approx(cosine(28))
    assert all(a > b for a, b in zip(seen[21:], seen[22:]))


def test_resume_jump_equals_stepping():
    s1, o1 = make("cosine")
    for _ in range(33):
        s1.step()
    s2, o2 = make("cosine")
    s2.load_state_dict({"t": 33})
    assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"] == pytest.approx(cosine(33 - 21))


@pytest.mark.parametrize("kind, t, expected", [
    ("step", 30, 1e-3),           # u = 9: no decay yet
    ("step", 31, 0.5e-3),         # u = 10 = one step of decay_epochs * E
    ("linear", 35, 1e-3 * (30 - 14) / 30),
])
def test_step_and_linear(kind, t, expected):
    s, _ = make(kind, decay_epochs=1, decay_rate=0.5)
    assert s.lr_at(t) == pytest.approx(expected)


def test_a_fractional_decay_epochs_counts_its_iterations():
    """--decay-epochs is a float: 1.5 epochs of 10 iterations decay every 15 iterations (not every 10)."""
    s, _ = make("step", warmup=0, decay_epochs=1.5, decay_rate=0.5)
    assert s.lr_at(14) == pytest.approx(1e-3) and s.lr_at(15) == pytest.approx(0.5e-3)
    assert s.lr_at(29) == pytest.approx(0.5e-3) and s.lr_at(30) == pytest.approx(0.25e-3)


def test_a_decay_period_of_a_fractional_number_of_iterations_is_not_rounded():
    """--decay-epochs 2.4 of 7 iterations is a period of 16.8 iterations, as the original's StepLR takes it: the LR
    halves at iterations 17, 34 and 51 (floor(u / 16.8)), not at 16, 32 and 48 (a period rounded down to 16)."""
    s, _ = make("step", warmup=0, steps_per_epoch=7, epochs=10, decay_epochs=2.4, decay_rate=0.5)
    assert [s.lr_at(t) for t in (16, 17, 33, 34, 50, 51)] == pytest.approx(
        [1e-3, 0.5e-3, 0.5e-3, 0.25e-3, 0.25e-3, 0.125e-3])


def test_decay_by_epoch_leaves_a_fractional_step_schedule_as_it_is():
    """--decay-by-epoch does not apply to the step schedule: with --decay-epochs 1.5 of 10 iterations the LR halves at
    iteration 15, as without the flag (with u rounded down to whole epochs it halved at 20 only)."""
    s, _ = make("step", warmup=0, decay_epochs=1.5, decay_rate=0.5, decay_by_epoch=True)
    assert s.lr_at(14) == pytest.approx(1e-3) and s.lr_at(15) == pytest.approx(0.5e-3)
    assert s.lr_at(29) == pytest.approx(0.5e-3) and s.lr_at(30) == pytest.approx(0.25e-3)


def test_decay_by_epoch_and_no_warmup():
    s, _ = make("cosine", decay_by_epoch=True)
    assert s.lr_at(35) == pytest.approx(cosine(10)) and s.lr_at(40) == pytest.approx(cosine(10))
    s, _ = make("cosine", warmup=0)
    # without warmup the original's scheduler has already stepped once before the first iteration
    assert s.lr_at(0) == s.lr_at(1) == pytest.approx(cosine(1, span=50))
    assert s.lr_at(2) == pytest.approx(cosine(2, span=50))


def test_step_schedule_without_decay_rate_flag_decays_by_a_tenth():
    cfg = parse_args(["--sched", "step", "--lr", "0.01", "--epochs", "4", "--warmup-epochs", "0",
                      "--decay-epochs", "1"])
    assert cfg.decay_rate is None
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    # no warmup: u = t; step_size = 1 epoch = 10 iterations; lr * 0.1 ** (u // 10)
    assert sched.lr_at(9) == pytest.approx(0.01)
    assert sched.lr_at(10) == pytest.approx(0.01 * 0.1)
    assert sched.lr_at(25) == pytest.approx(0.01 * 0.1 ** 2)


def test_step_schedule_takes_the_decay_rate_flag():
    cfg = parse_args(["--sched", "step", "--lr", "0.01", "--epochs", "4", "--warmup-epochs", "0",
                      "--decay-epochs", "1", "--decay-rate", "0.5"])
    sched = build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr), cfg, steps_per_epoch=10)
    assert [sched.lr_at(t) for t in (9, 10, 25)] == pytest.approx([0.01, 0.005, 0.0025])
