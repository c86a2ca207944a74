"""The command-line flags of `tools/train.py` and `tools/test.py` (`build_parser`): names, defaults and help.

They are the original toolbox's flags (same names, same defaults) minus the ones that do nothing for these models, plus
a few of ours (marked "ours" in their help); `config.py` reads a YAML config into them.
"""
from __future__ import annotations

import argparse

import yaml

DATASETS = ("imagenet", "cifar10", "cifar100", "digits")
# On/off flags of an experiment's config take `--no-NAME` too, so that the command line can switch off what a YAML
# file switches on (the run-control and --debug / --trust-checkpoint flags are plain `store_true`).
SWITCH = argparse.BooleanOptionalAction

# what the original's --kd mse / diffkd, --teacher-module, --student-module and --kd-loss-kwargs need, refused here
FEATURE_DISTILLATION = ("feature distillation (it hooks CNN modules named in its KD_MODULES table: ResNets, "
                        "MobileNets, Swins)")

DEFAULT_EXPERIMENT = "exp"  # the run folder under --output when neither the flags nor the config name one


class KeyValueAction(argparse.Action):
    """Collect `key=value` items into a dict, values parsed as YAML scalars; updates the current (YAML) dict.

    Not timm's `ParseKwargs`: that one replaces the YAML file's dict instead of updating it key by key, and reads
    `false` / `1e-3` as strings (`ast.literal_eval`) where a YAML config and this flag must read the same values.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        from_cli = set(getattr(namespace, "_cli_" + self.dest, ()))
        for item in values:
            if "=" not in item:
                parser.error(f"{option_string} expects key=value items, got {item!r}")
            key, value = item.split("=", 1)
            try:
                merged[key] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                parser.error(f"{option_string} {item}: the value is not YAML ({problem}), as a config file's "
                             f"{self.dest} value must be (e.g. {key}=[1, 2])")
            from_cli.add(key)
        setattr(namespace, self.dest, merged)
        setattr(namespace, "_cli_" + self.dest, sorted(from_cli))


class RefusedFlagAction(argparse.Action):
    """A flag of the original's that this code does not support: given, the parse ends with `reason` (its value is
    never stored, nor written to args.yaml)."""

    def __init__(self, option_strings, dest, reason: str = "", **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.reason}")


class ConfigOnceAction(argparse.Action):
    """`-c FILE`, given once and not empty: a second `-c` would drop the first file without a word, and an empty
    name (`-c "$UNSET"`) would run on the defaults."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values:
            parser.error(f"{option_string}: the file name is empty (an unset shell variable?)")
        given = getattr(namespace, self.dest)
        if given != self.default:
            parser.error(f"-c/--config is given twice ({given} and {values}): give one file (a file may name "
                         f"others as its _base_)")
        setattr(namespace, self.dest, values)


def _add_data_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="imagenet", choices=DATASETS, help="dataset (digits: ours)")
    g.add_argument("--data-path", default="", help="dataset root (default data/imagenet or data/cifar)")
    g.add_argument("--model", default="local_vim_tiny", help="model name, with or without the timm_ prefix")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=KeyValueAction, metavar="KEY=VALUE",
                   help="ours: extra keyword arguments for the model constructor (update the YAML dict)")
    g.add_argument("--directions", default=None, help="ours: directions.yaml written by tools/vis_search_prob.py")
    g.add_argument("--num-classes", type=int, default=None, help="ours: classifier size (default: the dataset's)")
    g.add_argument("--resume", default="",
                   help="checkpoint to resume (train) or to evaluate (test); train: 'auto' (ours) continues "
                        "<output>/<experiment>/last.pth.tar if it exists, else starts the run")
    g.add_argument("--finetune", default="",
                   help="ours (DeiT / Vim's flag): start a fresh run from this checkpoint's weights (training or "
                        "released form); position tables are resized to the model's grid, a classifier of another "
                        "shape keeps its initialisation")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="ours: allow a checkpoint that needs pickle (it can run code): only files you trust")
    g.add_argument("-b", "--batch-size", type=int, default=32, help="batch size per process")
    g.add_argument("--val-batch-size-multiplier", type=float, default=1.0, help="val batch = batch size x this")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")


def _add_optim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="sgd", choices=("sgd", "adamw", "rmsprop", "rmsproptf"), help="optimizer")
    g.add_argument("--opt-eps", type=float, default=1e-8, help="optimizer epsilon")
    g.add_argument("--opt-betas", type=float, nargs=2, default=None, help="AdamW betas (default 0.9 0.999)")
    g.add_argument("--opt-no-filter", action=SWITCH, default=False, help="weight-decay every parameter (one group)")
    g.add_argument("--honor-no-weight-decay", action=SWITCH, default=False,
                   help="ours: also exclude A_log, D (and parameters flagged _no_weight_decay) and search weights")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD / RMSprop momentum")
    g.add_argument("--sgd-no-nesterov", action=SWITCH, default=False, help="plain momentum SGD")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--clip-grad-norm", action=SWITCH, default=False, help="clip the gradient norm")
    g.add_argument("--clip-grad-max-norm", type=float, default=5.0, help="max gradient norm when clipping")
    g.add_argument("--grad-accum-steps", type=int, default=1,
                   help="ours: one optimizer step per N batches, their gradients averaged: the step of a global batch "
                        "of -b x processes x N (an epoch's last batches that do not fill N are not trained); the LR "
                        "schedule, the EMA and clipping count optimizer steps")


def _add_precision_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision and compilation")
    g.add_argument("--amp", action=SWITCH, default=False,
                   help="mixed precision training (autocast, --amp-dtype); evaluation stays fp32, as the original")
    g.add_argument("--amp-eval", action=SWITCH, default=False,
                   help="ours: evaluate under autocast (validation in training, tools/test.py); default fp32")
    g.add_argument("--compile", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="ours: tools/test.py evaluates the model under torch.compile in this mode (reduce-overhead: "
                        "CUDA graphs, for small batches; a smaller last batch is padded: one compilation); "
                        "default: eager")
    g.add_argument("--amp-dtype", default=None, choices=("float16", "bfloat16"),
                   help="ours: autocast dtype of --amp / --amp-eval (float16 trains with a GradScaler); default: "
                        "float16 on CUDA, as the original, bfloat16 on the CPU")


def _add_schedule_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument("--sched", default="step", choices=("step", "cosine", "linear"), help="LR schedule")
    g.add_argument("--decay-epochs", type=float, default=3, help="step schedule: epochs between decays")
    g.add_argument("--lr", type=float, default=0.01, help="peak learning rate (not scaled by world size)")
    g.add_argument("--warmup-lr", type=float, default=1e-4, help="learning rate of the first warmup epoch")
    g.add_argument("--min-lr", type=float, default=1e-5, help="cosine floor")
    g.add_argument("--epochs", type=int, default=200, help="epochs to train")
    g.add_argument("--warmup-epochs", type=int, default=3, help="warmup epochs (LR constant within an epoch)")
    g.add_argument("--decay-rate", "--dr", type=float, default=None, help="step schedule: decay factor")
    g.add_argument("--decay-by-epoch", "--decay_by_epoch", action=SWITCH, default=False,
                   help="cosine / linear: decay once per epoch instead of every iteration")


def _add_augment_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--img-size", type=int, default=None, help="ours: input size (default: the dataset's)")
    g.add_argument("--crop-pct", type=float, default=None, help="ours: eval centre-crop fraction")
    g.add_argument("--scale", type=float, nargs=2, default=None, help="ours: random-resized-crop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=None, help="ours: random-resized-crop aspect range")
    g.add_argument("--hflip", type=float, default=None, help="ours: horizontal flip probability")
    g.add_argument("--image-mean", type=float, nargs="+", default=None,
                   help="normalisation mean: 3 values (RGB), 1 for a model of in_chans=1 (gray images)")
    g.add_argument("--image-std", type=float, nargs="+", default=None,
                   help="normalisation std: 3 values (RGB), 1 for a model of in_chans=1 (gray images)")
    g.add_argument("--interpolation", default="bilinear", choices=("bilinear", "bicubic"), help="resize filter")
    g.add_argument("--color-jitter", type=float, default=0.0, help="colour jitter (only without --aa)")
    g.add_argument("--cutout-length", type=int, default=0, help="CIFAR only: cutout square side")
    g.add_argument("--aa", default=None, help="RandAugment policy, e.g. rand-m9-mstd0.5")
    g.add_argument("--aa-impl", default="original", choices=("original", "timm"),
                   help="ours: whose RandAugment runs a rand-* policy (the original's 19 ops, or timm's)")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="const", choices=("const", "rand", "pixel"), help="random erasing fill")
    g.add_argument("--drop", type=float, default=0.0, help="dropout rate (passed as drop_rate when > 0)")
    g.add_argument("--drop-path-rate", type=float, default=0.0, help="stochastic depth rate")
    g = p.add_argument_group("mixup")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (> 0 enables)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (> 0 enables)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, help="cutmix min/max box ratio")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix instead of mixup")
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="mixing granularity")


def _add_distillation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knowledge distillation (of the logits)")
    g.add_argument("--kd", default="",
                   help="method: kd (KL divergence at temperature 4), kdt<tau> (e.g. kdt4), dist (DIST), dist_t<tau>; "
                        "default '': no distillation")
    g.add_argument("--teacher-model", default="", help="teacher model name, with or without the timm_ prefix")
    g.add_argument("--teacher-model-kwargs", nargs="*", default={}, action=KeyValueAction, metavar="KEY=VALUE",
                   help="ours: keyword arguments of the teacher's constructor, read as --model-kwargs, used over the "
                        "model_kwargs its checkpoint's run recorded (e.g. depth=12 for weights that record none)")
    g.add_argument("--teacher-pretrained", action=SWITCH, default=True,
                   help="the original downloads the teacher's weights; here they come from --teacher-ckpt, which "
                        "--kd needs")
    g.add_argument("--teacher-no-pretrained", dest="teacher_pretrained", action="store_false",
                   help="the original's spelling of --no-teacher-pretrained")
    g.add_argument("--teacher-ckpt", default="", help="the teacher's weights (training or released checkpoint)")
    g.add_argument("--kd-loss-weight", type=float, default=1.0, help="weight of the distillation loss")
    g.add_argument("--ori-loss-weight", type=float, default=1.0,
                   help="weight of the run's own loss (cross-entropy, smoothing or mixup included)")
    feature = f"the original's {FEATURE_DISTILLATION} is not part of this code: distill the logits with --kd"
    for flag, nargs in (("--teacher-module", None), ("--student-module", None), ("--kd-loss-kwargs", "*")):
        g.add_argument(flag, action=RefusedFlagAction, reason=feature, nargs=nargs,
                       help="refused: the original's feature distillation")


def _add_misc_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EMA")
    g.add_argument("--model-ema", action=SWITCH, default=False, help="keep and validate an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay per step")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=42, help="random seed (rank r uses seed + r)")
    g.add_argument("--log-interval", type=int, default=50, help="iterations between log lines")
    g.add_argument("-j", "--workers", type=int, default=4, help="data loading processes per rank")
    g.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="run name: outputs go to <output>/<experiment>/")
    g.add_argument("--overwrite", action="store_true",
                   help="ours: start afresh in an experiment folder that holds a run (its checkpoints, CSV files, "
                        "logs and args.yaml are deleted once the new run's inputs are checked)")
    g.add_argument("--rewind", action="store_true",
                   help="ours: with --resume of an earlier checkpoint of a run (not its last.pth.tar), continue the "
                        "run from it in its folder, deleting the checkpoints and CSV rows written after it")
    g.add_argument("--branch", action="store_true",
                   help="ours: with --resume of a training checkpoint, continue from it in <output>/<experiment> "
                        "(a new folder, given the run's CSV history up to the checkpoint); the run is left as it is")
    g.add_argument("--debug", action="store_true", help="ours: show the traceback of errors (also LOCALMAMBA_DEBUG=1)")
    g.add_argument("--output", default="experiments", help="ours: root folder of the runs")
    g.add_argument("--device", default="auto", help="ours: auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--keep-num", type=int, default=10, help="ours: how many best checkpoints to keep")
    g.add_argument("--threads", type=int, default=0, help="ours: CPU threads per process (0: torch's default)")
    g.add_argument("--slurm", action=SWITCH, default=False, help="take ranks from SLURM_* (tools/slurm_train.sh)")
    g.add_argument("--dist-port", default=None,
                   help="master port of --slurm runs without MASTER_PORT (default: from the job's SLURM_JOB_ID, so "
                        "two jobs on one node do not meet)")
    g.add_argument("--local-rank", "--local_rank", type=int, default=0,
                   help="accepted for torch.distributed.launch; the LOCAL_RANK variable is used")


# The flags that change what `tools/test.py` does; its --help shows only these (`build_parser`).
EVALUATION_FLAGS = frozenset((
    "help", "config", "dataset", "data_path", "model", "model_kwargs", "directions", "num_classes", "resume",
    "trust_checkpoint", "batch_size", "val_batch_size_multiplier", "amp_eval", "amp_dtype", "compile", "img_size",
    "crop_pct", "image_mean", "image_std", "interpolation", "model_ema", "log_interval", "workers", "experiment",
    "debug", "output", "device", "threads", "slurm", "dist_port", "local_rank"))
EVALUATION_HELP = {
    "resume": "the checkpoint to evaluate (training or released form)",
    "model_ema": "also evaluate the checkpoint's EMA weights",
    "batch_size": "batch size per process; evaluation batches are this x --val-batch-size-multiplier",
    "experiment": "run name: the eval log goes to <output>/<experiment>/",
}
EVALUATION_GROUP_TITLES = {"augmentation and regularisation": "input transform"}


def build_parser(description: str = "LocalMamba training", evaluation: bool = False) -> argparse.ArgumentParser:
    """The full parser shared by training and evaluation (as the original): both read the same config files.
    `evaluation`: the help lists only `EVALUATION_FLAGS`; the training flags are still accepted."""
    epilog = ("The training flags (optimizer, schedule, augmentation, mixup, run-folder control) are accepted too, "
              "so that a training config or a run's args.yaml works with -c; they do not change an evaluation."
              if evaluation else None)
    parser = argparse.ArgumentParser(description=description, epilog=epilog)
    parser.add_argument("-c", "--config", default="", action=ConfigOnceAction,
                        help="YAML file of defaults; command-line flags win")
    _add_data_model_flags(parser)
    _add_optim_flags(parser)
    _add_precision_flags(parser)
    _add_schedule_flags(parser)
    _add_augment_flags(parser)
    _add_distillation_flags(parser)
    _add_misc_flags(parser)
    if evaluation:
        for action in parser._actions:
            action.help = EVALUATION_HELP.get(action.dest, action.help)
            if action.dest not in EVALUATION_FLAGS:
                action.help = argparse.SUPPRESS
        for group in parser._action_groups:
            group.title = EVALUATION_GROUP_TITLES.get(group.title, group.title)
    return parser
