"""Command-line flags and YAML configs of `tools/train.py` and `tools/test.py`.

The flags are the original toolbox's (same names, same defaults) minus the ones that do nothing for these models
(NAS, KD, DBB, DyRep, auxiliary tower), plus a few of ours (marked "ours" in their help). A YAML file given with
`-c` supplies defaults; any flag given on the command line wins over it. Unknown YAML keys are errors, but for the
keys of those left-out flags at their off values (`ORIGINAL_FEATURES_OFF`: the original's `args.yaml` lists them all),
which are skipped; switched on, they are refused by name. A YAML value
is read from its text as argparse reads the same word (`experiment: 20240501` is the name '20240501', `epochs: 7.9`
is refused as `--epochs 7.9` is); `null` is taken only by a flag whose default is None.

`--overwrite`, `--resume`, `--rewind` and `--branch` say what one command does to a run folder, not how an experiment
is configured: a config file may not set `overwrite` or `rewind` (deleting a run is asked for on the command line
only), and `args.yaml` leaves them out, so that `-c experiments/NAME/args.yaml` starts a new run rather than deleting or
continuing that one.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Any, Optional, Sequence

import yaml

from ..common import atomic_write_text

DATASETS = ("imagenet", "cifar10", "cifar100", "digits")
# On/off flags of an experiment's config take `--no-NAME` too, so that the command line can switch off what a YAML
# file switches on (the run-control and --debug / --trust-checkpoint flags are plain `store_true`).
SWITCH = argparse.BooleanOptionalAction
RUN_CONTROL_FLAGS = ("overwrite", "resume", "rewind", "branch")  # per command, left out of args.yaml (module doc)

DEFAULT_EXPERIMENT = "exp"  # the run folder under --output when neither the flags nor the config name one

# The original toolbox's flags of features this code leaves out, with the values that leave them off (its defaults):
# the args.yaml of each of its runs holds them all.
ORIGINAL_FEATURES_OFF: dict[str, tuple[str, Any]] = {
    "model_config": ("model config files", ""), "drop_path_strategy": ("drop-path strategies", "const"),
    "auxiliary": ("auxiliary tower", False), "auxiliary_weight": ("auxiliary tower", 0.4),
    "kd": ("knowledge distillation", ""), "teacher_model": ("knowledge distillation", ""),
    "teacher_pretrained": ("knowledge distillation", True), "teacher_ckpt": ("knowledge distillation", ""),
    "kd_loss_weight": ("knowledge distillation", 1.0), "ori_loss_weight": ("knowledge distillation", 1.0),
    "teacher_module": ("knowledge distillation", ""), "student_module": ("knowledge distillation", ""),
    "kd_loss_kwargs": ("knowledge distillation", None), "dbb": ("DBB", False), "dyrep": ("DyRep", False),
    "dyrep_adjust_interval": ("DyRep", 10), "dyrep_max_adjust_epochs": ("DyRep", 100),
    "dyrep_recal_bn_iters": ("DyRep", 20), "dyrep_recal_bn_every_epoch": ("DyRep", False),
    "edgenn_config": ("EdgeNN", ""),
}


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the message names the file and key."""


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
                             f"model_kwargs value must be (e.g. {key}=[1, 2])")
            from_cli.add(key)
        setattr(namespace, self.dest, merged)
        setattr(namespace, "_cli_" + self.dest, sorted(from_cli))


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
                   help="ours: also exclude parameters flagged _no_weight_decay (A_log, D) and search weights")
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
    g.add_argument("--image-mean", type=float, nargs=3, default=None, help="normalisation mean")
    g.add_argument("--image-std", type=float, nargs=3, default=None, help="normalisation std")
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
    g.add_argument("--dist-port", default="29500", help="master port of --slurm runs without MASTER_PORT")
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
    parser.add_argument("-c", "--config", default="", help="YAML file of defaults; command-line flags win")
    _add_data_model_flags(parser)
    _add_optim_flags(parser)
    _add_precision_flags(parser)
    _add_schedule_flags(parser)
    _add_augment_flags(parser)
    _add_misc_flags(parser)
    if evaluation:
        for action in parser._actions:
            action.help = EVALUATION_HELP.get(action.dest, action.help)
            if action.dest not in EVALUATION_FLAGS:
                action.help = argparse.SUPPRESS
        for group in parser._action_groups:
            group.title = EVALUATION_GROUP_TITLES.get(group.title, group.title)
    return parser


def _read_yaml(path: str, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """A YAML config's values, and per key the text its value is written as (`_written_texts`). A `_base_` key
    names a file, or a list of files, relative to this one: they are read first, in order, and each later one and
    then this file update them (`_merge_values`: mappings key by key). `chain` holds the files that include this one
    (a cycle is refused)."""
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to the current directory {os.getcwd()})"
        raise ConfigError(f"config file not found: {path}{where}")
    chain = (*chain, path)
    if any(os.path.samefile(path, other) for other in chain[:-1]):
        raise ConfigError(f"{chain[0]}: _base_ cycle: {' -> '.join(chain)}")
    try:
        with open(path, encoding="utf-8") as f:
            loader = yaml.SafeLoader(f)
            try:
                node = loader.get_single_node()
                cfg = (loader.construct_document(node) if node is not None else None) or {}
            finally:
                loader.dispose()
    except (UnicodeDecodeError, yaml.reader.ReaderError) as err:
        raise ConfigError(f"{path}: not a YAML text file (a checkpoint or other binary file?)") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values, got {type(cfg).__name__}")
    for key in cfg:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is not a flag name")
    _refuse_repeated_keys(node, path)
    texts = _written_texts(node) if isinstance(node, yaml.MappingNode) else {}
    bases = cfg.pop("_base_", None)
    texts.pop("_base_", None)
    if bases is None:
        return _merge_values({}, cfg, path), texts
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    merged_texts: dict[str, Any] = {}
    for base in bases:
        values, base_texts = _read_yaml(os.path.join(os.path.dirname(path), base), chain)
        merged = _merge_values(merged, values, path)
        merged_texts.update(base_texts)
    merged_texts.update(texts)
    return _merge_values(merged, cfg, path), merged_texts


def _merge_values(base: dict[str, Any], update: dict[str, Any], path: str) -> dict[str, Any]:
    """`base` updated by `update` as mmengine merges configs: a mapping over a mapping (`model_kwargs`) is merged key
    by key, so a file that sets one model argument keeps its base's others, unless it holds `_delete_: true`, which
    replaces the base's mapping whole; any other value replaces the base's. `_delete_` keys never reach the result."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{path}: key {key!r}: _delete_ is true or false, got {delete!r}")
            inherited = merged.get(key)
            value = _merge_values({} if delete or not isinstance(inherited, dict) else inherited, value, path)
        merged[key] = value
    return merged


def _refuse_repeated_keys(node: Optional[yaml.Node], path: str) -> None:
    """Refuse a key written twice in one mapping of the file (YAML keeps the last one without a word)."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, path)
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            line = key_node.start_mark.line + 1
            if key_node.value in lines:
                raise ConfigError(f"{path}: key {key_node.value!r} is given twice (lines {lines[key_node.value]} and "
                                  f"{line}): keep one")
            lines[key_node.value] = line
        _refuse_repeated_keys(value_node, path)


def _written_texts(node: yaml.MappingNode) -> dict[str, Any]:
    """Per key of a YAML mapping, its value as written in the file (`20240501`, `2024.10`, `1e-3`): the text that
    argparse would convert; a list for a list (None for an item that is not a scalar), None for a mapping."""
    texts: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        if isinstance(value_node, yaml.ScalarNode):
            texts[key_node.value] = value_node.value
        elif isinstance(value_node, yaml.SequenceNode):
            texts[key_node.value] = [item.value if isinstance(item, yaml.ScalarNode) else None
                                     for item in value_node.value]
        else:
            texts[key_node.value] = None
    return texts


KINDS = {None: "text", int: "an integer", float: "a number"}   # what a flag of each argparse `type` takes


def _convert(action: argparse.Action, value: Any, text: str | None, where: str) -> Any:
    """One YAML scalar of a flag, converted from its written `text` as argparse converts a command-line word.

    YAML's own reading is not used: it makes `20240501` an int and `2024-05-01` a date for a text flag, `0300` the
    octal 192 and `7.9` a float for an int flag. YAML booleans and nulls are refused: `model: true` is surely a
    mistake, and argparse could not read `true` as a number either.
    """
    kind = KINDS.get(action.type, "a value")
    if isinstance(value, bool):
        hint = " (quote it if you mean the word)" if action.type is None else ""
        raise ConfigError(f"{where}: {text} is a YAML boolean, not {kind}{hint}")
    if value is None:
        raise ConfigError(f"{where}: expected {kind}, got null")
    if text is None:
        raise ConfigError(f"{where}: expected {kind}, got {value!r}")
    if action.type is None:
        return text
    try:
        return action.type(text)
    except ValueError as err:
        raise ConfigError(f"{where}: bad value {text!r}: expected {kind}") from err


def _coerce(action: argparse.Action, value: Any, text: Any, where: str) -> Any:
    """Convert and check one YAML value as argparse would convert the same text on the command line; `text` is the
    value as written (`_written_texts`). `null` is taken only by a flag whose default is None."""
    if action.dest == "model_kwargs":
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: model_kwargs must be a mapping, got {value!r}")
        return dict(value or {})
    if value is None:
        if action.default is not None:
            raise ConfigError(f"{where}: null is not a value of this flag (its default is {action.default!r}): "
                              f"give a value or leave the key out")
        return None
    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    is_list = isinstance(value, (list, tuple))
    if isinstance(action.nargs, int) and action.nargs > 0 and (not is_list or len(value) != action.nargs):
        raise ConfigError(f"{where}: expected a list of {action.nargs} values, got {value!r}")
    if action.nargs == "+" and (not is_list or not value):
        raise ConfigError(f"{where}: expected a list of one or more values, got {value!r}")
    if action.nargs is None and is_list:
        raise ConfigError(f"{where}: expected one value, got the list {value!r}")
    if is_list:
        value = [_convert(action, item, item_text, where) for item, item_text in zip(value, text)]
    else:
        value = _convert(action, value, text, where)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


# Allowed ranges of the numeric flags: (dest, low, high, low included, high included); None leaves a side open.
RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("batch_size", 1, None, True, True), ("val_batch_size_multiplier", 0, None, False, True),
    ("smoothing", 0, 1, True, False), ("num_classes", 2, None, True, True),
    ("opt_eps", 0, None, False, True), ("opt_betas", 0, 1, True, False), ("momentum", 0, 1, True, False),
    ("weight_decay", 0, None, True, True), ("clip_grad_max_norm", 0, None, False, True),
    ("grad_accum_steps", 1, None, True, True),
    ("decay_epochs", 0, None, False, True), ("lr", 0, None, False, True), ("warmup_lr", 0, None, True, True),
    ("min_lr", 0, None, True, True), ("epochs", 1, None, True, True), ("warmup_epochs", 0, None, True, True),
    ("decay_rate", 0, None, False, True), ("img_size", 1, None, True, True), ("crop_pct", 0, 1, False, True),
    ("scale", 0, 1, False, True), ("ratio", 0, None, False, True), ("hflip", 0, 1, True, True),
    ("image_std", 0, None, False, True), ("color_jitter", 0, None, True, True), ("cutout_length", 0, None, True, True),
    ("reprob", 0, 1, True, True), ("drop", 0, 1, True, False), ("drop_path_rate", 0, 1, True, False),
    ("mixup", 0, None, True, True), ("cutmix", 0, None, True, True), ("cutmix_minmax", 0, 1, False, True),
    ("mixup_prob", 0, 1, True, True), ("mixup_switch_prob", 0, 1, True, True), ("model_ema_decay", 0, 1, True, True),
    ("seed", 0, None, True, True), ("log_interval", 1, None, True, True), ("workers", 0, None, True, True),
    ("keep_num", 1, None, True, True), ("threads", 0, None, True, True),
)


def _flag(dest: str) -> str:
    return "-b/--batch-size" if dest == "batch_size" else "--" + dest.replace("_", "-")


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse a numeric flag outside its range (`RANGES`); the message names the flag and the value."""
    for dest, low, high, low_in, high_in in RANGES:
        value = getattr(args, dest, None)
        if value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            bad_low = low is not None and (item < low if low_in else item <= low)
            bad_high = high is not None and (item > high if high_in else item >= high)
            if bad_low or bad_high:
                lo = "" if low is None else f"{'[' if low_in else '('}{low}"
                hi = "inf)" if high is None else f"{high}{']' if high_in else ')'}"
                raise ConfigError(f"{_flag(dest)} must be in {lo or '(-inf'}, {hi}, got {item!r}")
    if args.cutmix_minmax is not None and len(args.cutmix_minmax) != 2:
        raise ConfigError(f"--cutmix-minmax takes two values (min max), got {args.cutmix_minmax!r}")
    if not str(args.dist_port).isdigit() or not 0 < int(args.dist_port) < 65536:
        raise ConfigError(f"--dist-port must be a port number (1-65535), got {args.dist_port!r}")
    name = os.path.normpath(args.experiment) if args.experiment else ""
    if not name or name == "." or os.path.isabs(name) or name.split(os.sep)[0] == "..":
        raise ConfigError(f"--experiment must name a folder inside --output {args.output} (e.g. my_run or "
                          f"ablations/my_run), got {args.experiment!r}")
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts a run afresh and --resume continues one: give only one of them")
    for flag in ("rewind", "branch"):
        if getattr(args, flag) and args.resume in ("", "auto"):
            raise ConfigError(f"--{flag} continues a run from one of its checkpoints: give that checkpoint with "
                              f"--resume")
    if args.rewind and args.branch:
        raise ConfigError("--rewind continues a run in its own folder and --branch in a new one: give only one of "
                          "them")
    if args.dataset == "digits" and args.data_path:
        raise ConfigError(f"--data-path {args.data_path}: --dataset digits is scikit-learn's bundled images and "
                          f"reads no folder; for your images give --dataset imagenet (class folders or meta lists)")


def read_config(path: str, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The flag values a YAML config gives (its `_base_` files merged), each converted and checked as `parse_args`
    converts the same text on the command line (`parser`: `build_parser()`'s). Errors name the file and the key."""
    cfg, texts = _read_yaml(path)
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in cfg.items():
        if key == "config" or (key in ORIGINAL_FEATURES_OFF and value in (ORIGINAL_FEATURES_OFF[key][1], None, {})):
            continue
        if key in ORIGINAL_FEATURES_OFF:
            raise ConfigError(f"{path}: key {key!r} is {value!r}: the original's {ORIGINAL_FEATURES_OFF[key][0]} is "
                              f"not part of this code (remove the key, or give it {ORIGINAL_FEATURES_OFF[key][1]!r})")
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        if key in ("overwrite", "rewind") and value:
            raise ConfigError(f"{path}: key {key!r}: a config file cannot delete a run; give --{key} on the command "
                              f"line")
        values[key] = _coerce(actions[key], value, texts.get(key), f"{path}: key {key!r}")
    return values


def parse_args(argv: Sequence[str] | None = None, description: str = "LocalMamba training",
               evaluation: bool = False) -> argparse.Namespace:
    """Parse `-c FILE` then the command line; the command line wins. Errors name the file and the key.
    `evaluation`: tools/test.py's parser (`build_parser`)."""
    parser = build_parser(description, evaluation)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    config_values = read_config(known.config, parser) if known.config else {}
    parser.set_defaults(**config_values)
    args = parser.parse_args(argv)
    args.model_kwargs = dict(args.model_kwargs or {})
    args.config_model = config_values.get("model") if config_values.get("model") == args.model else None
    args.cli_model_kwargs = list(getattr(args, "_cli_model_kwargs", []))
    if hasattr(args, "_cli_model_kwargs"):
        delattr(args, "_cli_model_kwargs")
    check_ranges(args)
    return args


def config_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved flags as a plain dict that `-c` accepts again (internal fields and the run-control flags
    `RUN_CONTROL_FLAGS`, `overwrite` / `resume` / `rewind` / `branch`, left out), from any working directory: the
    `--directions` file is named by its absolute path (a checkpoint's refusal hint names it too)."""
    skip = {"cli_model_kwargs", "config_model", *RUN_CONTROL_FLAGS}
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in skip or key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    if out.get("directions"):
        out["directions"] = os.path.abspath(out["directions"])
    return out


def save_config(args: argparse.Namespace, path: str) -> None:
    """Write the resolved config as YAML (`args.yaml`)."""
    atomic_write_text(path, yaml.safe_dump(config_dict(args), default_flow_style=False, sort_keys=True))
