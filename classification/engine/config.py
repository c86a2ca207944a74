"""The configuration of `tools/train.py` and `tools/test.py`: a YAML config read into the flags (`flags.py`), the
command line, the range checks, and the run's `args.yaml`.

The flags leave out the original toolbox's that do nothing for these models (NAS, feature distillation, DBB, DyRep,
auxiliary tower).
A YAML file given with `-c` supplies defaults; any flag given on the command line wins over it. Unknown YAML keys
are errors, but for the keys of those left-out flags at their off values (`ORIGINAL_FEATURES_OFF`: the original's
`args.yaml` lists them all), which are skipped; switched on, they are refused by name. A YAML value is read from its
text as argparse reads the same word (`experiment: 20240501` is the name '20240501', `epochs: 7.9`
is refused as `--epochs 7.9` is); `null` is taken only by a flag whose default is None.

`--overwrite`, `--resume`, `--rewind` and `--branch` say what one command does to a run folder, not how an experiment
is configured: a config file may not set `overwrite` or `rewind` (deleting a run is asked for on the command line
only) or `branch` (the command printed to continue the branch, which keeps `-c`, would branch again), and
`args.yaml` leaves them out, so that `-c experiments/NAME/args.yaml` starts a new run rather than deleting or continuing
that one. `--trust-checkpoint` (unpickle a checkpoint, which can run code) is per command too: left out of
`args.yaml`, and refused in a config file, so that no later command reading the file trusts a checkpoint unasked.

`args.yaml` records the dataset's defaults that the run filled in (image size, mean / std, crop, data path, classes)
and lists their names as `filled_from_dataset`: `-c RUN/args.yaml --dataset OTHER` has OTHER fill them again (unless
the command line gives them), where it kept the first dataset's before; those OTHER fills alike (cifar10 and cifar100:
the size, the mean, the data folder) keep the file's values, e.g. the data folder it names by its absolute path.
"""
from __future__ import annotations

import argparse
import codecs
import math
import os
from typing import Any, Optional, Sequence

import yaml

from ..common import atomic_write_text
from ..common.suggest import did_you_mean
from ..data.defaults import DATASET_FILLED_FLAGS, NORMALIZATION_FLAGS, filled_alike
from ..data.image_decoding import IMAGE_MODES
from .flags import FEATURE_DISTILLATION, KeyValueAction, build_parser

# per command, left out of args.yaml (module doc)
RUN_CONTROL_FLAGS = ("overwrite", "resume", "rewind", "branch", "trust_checkpoint")

# The original toolbox's flags of features this code leaves out, with the values that leave them off (its defaults):
# the args.yaml of each of its runs holds them all.
ORIGINAL_FEATURES_OFF: dict[str, tuple[str, Any]] = {
    "model_config": ("model config files", ""), "drop_path_strategy": ("drop-path strategies", "const"),
    "auxiliary": ("auxiliary tower", False), "auxiliary_weight": ("auxiliary tower", 0.4),
    "teacher_module": (FEATURE_DISTILLATION, ""), "student_module": (FEATURE_DISTILLATION, ""),
    "kd_loss_kwargs": (FEATURE_DISTILLATION, None), "dbb": ("DBB", False), "dyrep": ("DyRep", False),
    "dyrep_adjust_interval": ("DyRep", 10), "dyrep_max_adjust_epochs": ("DyRep", 100),
    "dyrep_recal_bn_iters": ("DyRep", 20), "dyrep_recal_bn_every_epoch": ("DyRep", False),
    "edgenn_config": ("EdgeNN", ""),
}


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the message names the file and key."""


def _read_yaml(path: str, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """A YAML config's values, and per key the text its value is written as (`_written_texts`). A `_base_` key
    names a file, or a list of files, relative to this one: they are read first, in order, and each later one and
    then this file update them (`_merge_values`: mappings key by key). `chain` holds the files that include this one
    (a cycle is refused)."""
    if os.path.isdir(path):
        run_config = os.path.join(path, "args.yaml")
        given = f": its run's config is {run_config}" if os.path.isfile(run_config) else ""
        raise ConfigError(f"config {path} is a folder, not a YAML file{given}")
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
        raise ConfigError(f"{path}: {_not_utf8_text(path)}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(err)}") from err
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
        base_path = os.path.join(os.path.dirname(path), base)
        if os.path.isdir(base_path):
            raise ConfigError(f"{path}: its _base_ {base} is a folder ({base_path}), not a YAML file")
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: its _base_ {base} is not there ({base_path}): a _base_ path is read relative "
                              f"to the file that names it")
        values, base_texts = _read_yaml(base_path, chain)
        merged = _merge_values(merged, values, path)
        merged_texts.update(base_texts)
    merged_texts.update(texts)
    return _merge_values(merged, cfg, path), merged_texts


def _not_utf8_text(path: str) -> str:
    """Why a config's first MiB is no UTF-8 text: another encoding (UTF-16, Latin-1: which byte, on which line)
    or a binary file."""
    with open(path, "rb") as f:
        data = f.read(2 ** 20)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "saved as UTF-16, not UTF-8: save it as UTF-8"
    if b"\0" not in data:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(data) - 3:   # not a character cut by the MiB's end
                line = data[:err.start].count(b"\n") + 1
                return f"not UTF-8 (byte 0x{data[err.start]:02x} on line {line}): save it as UTF-8"
    return "not a YAML text file (a checkpoint or other binary file?)"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where (` at line L, column C`) and what (`: ...`), with a hint for a tab."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return ": " + " ".join(str(err).split())
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = ", ".join(text for text in (err.context, err.problem) if text)
    hint = " (YAML indents and separates with spaces, not tabs)" if "'\\t'" in what else ""
    return f"{where}: {what}{hint}"


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
    if isinstance(action, KeyValueAction):   # model_kwargs, teacher_model_kwargs
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: {action.dest} must be a mapping, got {value!r}")
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


# The largest --seed: torch seeds a generator with an unsigned 64-bit integer, and a run seeds with --seed plus the
# rank and the epoch.
MAX_SEED = 2 ** 63 - 1

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
    ("image_mean", 0, 1, True, True), ("image_std", 0, None, False, True), ("color_jitter", 0, None, True, True),
    ("cutout_length", 0, None, True, True),
    ("reprob", 0, 1, True, True), ("drop", 0, 1, True, False), ("drop_path_rate", 0, 1, True, False),
    ("mixup", 0, None, True, True), ("cutmix", 0, None, True, True), ("cutmix_minmax", 0, 1, False, True),
    ("mixup_prob", 0, 1, True, True), ("mixup_switch_prob", 0, 1, True, True), ("model_ema_decay", 0, 1, True, True),
    ("seed", 0, MAX_SEED, True, True), ("log_interval", 1, None, True, True), ("workers", 0, None, True, True),
    ("keep_num", 1, None, True, True), ("threads", 0, None, True, True),
    ("kd_loss_weight", 0, None, True, True), ("ori_loss_weight", 0, None, True, True),
)


def _flag(dest: str) -> str:
    return "-b/--batch-size" if dest == "batch_size" else "--" + dest.replace("_", "-")


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse a numeric flag outside its range (`RANGES`) or not finite (`nan`, `inf`: float() reads them); the
    message names the flag and the value."""
    for dest, low, high, low_in, high_in in RANGES:
        value = getattr(args, dest, None)
        if value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            bad_low = low is not None and (item < low if low_in else item <= low)
            bad_high = high is not None and (item > high if high_in else item >= high)
            if bad_low or bad_high or not math.isfinite(item):
                lo = "" if low is None else f"{'[' if low_in else '('}{low}"
                hi = "inf)" if high is None else f"{high}{']' if high_in else ')'}"
                raise ConfigError(f"{_flag(dest)} must be in {lo or '(-inf'}, {hi}, got {item!r}")
    if args.cutmix_minmax is not None and len(args.cutmix_minmax) != 2:
        raise ConfigError(f"--cutmix-minmax takes two values (min max), got {args.cutmix_minmax!r}")
    for dest in NORMALIZATION_FLAGS:
        values = getattr(args, dest, None)
        if values is not None and len(values) not in IMAGE_MODES:
            raise ConfigError(f"{_flag(dest)} takes 3 values (RGB images) or 1 (gray images, a model of in_chans=1), "
                              f"got {values!r}")
    if args.dist_port is not None and (not str(args.dist_port).isdigit() or not 0 < int(args.dist_port) < 65536):
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


def _filled_flags(value: Any, where: str) -> list[str]:
    """The `filled_from_dataset` list of an args.yaml: names of flags that a dataset fills (`DATASET_FILLED_FLAGS`)."""
    if not isinstance(value, list) or not all(isinstance(key, str) and key in DATASET_FILLED_FLAGS for key in value):
        raise ConfigError(f"{where}: expected a list of the flags a dataset fills "
                          f"({', '.join(sorted(DATASET_FILLED_FLAGS))}), got {value!r}")
    return value


def read_config(path: str, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The flag values a YAML config gives (its `_base_` files merged), each converted and checked as `parse_args`
    converts the same text on the command line (`parser`: `build_parser()`'s). Errors name the file and the key."""
    cfg, texts = _read_yaml(path)
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in cfg.items():
        if key == "filled_from_dataset":
            values[key] = _filled_flags(value, f"{path}: key {key!r}")
            continue
        if key == "config" or (key in ORIGINAL_FEATURES_OFF and value in (ORIGINAL_FEATURES_OFF[key][1], None, {})):
            continue
        if key in ORIGINAL_FEATURES_OFF:
            raise ConfigError(f"{path}: key {key!r} is {value!r}: the original's {ORIGINAL_FEATURES_OFF[key][0]} is "
                              f"not part of this code (remove the key, or give it {ORIGINAL_FEATURES_OFF[key][1]!r})")
        if key not in actions:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, actions, n=1)}")
        if key in ("overwrite", "rewind") and value:
            raise ConfigError(f"{path}: key {key!r}: a config file cannot delete a run; give --{key} on the command "
                              f"line")
        if key == "branch" and value:
            raise ConfigError(f"{path}: key 'branch': a config file cannot branch a run (the command that continues "
                              f"the branch would branch it again); give --branch on the command line")
        if key == "trust_checkpoint" and value:
            raise ConfigError(f"{path}: key {key!r}: a config file cannot let checkpoints run code; remove the key "
                              f"and give --trust-checkpoint on the command line for a file you trust")
        values[key] = _coerce(actions[key], value, texts.get(key), f"{path}: key {key!r}")
    return values


# flags naming a file or folder: a leading ~ in their value (a config file's, or --flag=~/x, which no shell expands)
# is the home folder
PATH_FLAGS = ("data_path", "directions", "finetune", "output", "resume", "teacher_ckpt")


def _other_folder(path: str, config_path: Optional[str]) -> bool:
    """Whether `path` (a --data-path, `~` not yet expanded) names another folder than the config's `config_path`."""
    def real(folder: Optional[str]) -> str:
        return os.path.realpath(os.path.expanduser(folder)) if folder else ""
    return real(path) != real(config_path)


def parse_args(argv: Sequence[str] | None = None, description: str = "LocalMamba training",
               evaluation: bool = False) -> argparse.Namespace:
    """Parse `-c FILE` then the command line; the command line wins. Errors name the file and the key; a `~` that
    begins a `PATH_FLAGS` value is the home folder.
    `evaluation`: tools/test.py's parser (`build_parser`). The values that FILE's run filled from its dataset's
    defaults (its `filled_from_dataset` list) are read with that dataset only: another `--dataset` fills its own;
    in training, the class count found in its data is read with that data folder only (another `--data-path` counts
    its own)."""
    parser = build_parser(description, evaluation)
    config = parser.parse_known_args(argv)[0].config  # by the parser itself: `--co` is as ambiguous here as later
    config_values = read_config(config, parser) if config else {}
    filled = config_values.pop("filled_from_dataset", [])
    own_defaults = {key: parser.get_default(key) for key in filled}
    parser.set_defaults(**config_values)
    dataset = parser.parse_known_args(argv)[0].dataset
    if filled and dataset != parser.get_default("dataset"):
        # the config's dataset filled them: another --dataset fills its own, unless it fills one alike
        alike = filled_alike(parser.get_default("dataset"), dataset)
        parser.set_defaults(**{key: value for key, value in own_defaults.items() if key not in alike})
        filled = [key for key in filled if key in alike]
    data_path = parser.parse_known_args(argv)[0].data_path
    if "num_classes" in filled and not evaluation and _other_folder(data_path, config_values.get("data_path")):
        # counted in the config's data: other data is counted again (an evaluation keeps its checkpoint's head)
        parser.set_defaults(num_classes=own_defaults["num_classes"])
        filled.remove("num_classes")
    args = parser.parse_args(argv)
    for key in PATH_FLAGS:
        if str(getattr(args, key, None)).startswith("~"):
            setattr(args, key, os.path.expanduser(getattr(args, key)))
    args.filled_from_dataset = [key for key in filled if getattr(args, key) == config_values.get(key)]
    args.config_model = config_values.get("model") if config_values.get("model") == args.model else None
    args.cli_model_kwargs = list(getattr(args, "_cli_model_kwargs", []))
    for key in ("model_kwargs", "teacher_model_kwargs"):
        setattr(args, key, dict(getattr(args, key) or {}))
        if hasattr(args, f"_cli_{key}"):
            delattr(args, f"_cli_{key}")
    check_ranges(args)
    return args


def config_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved flags as a plain dict that `-c` accepts again (internal fields and the per-command flags
    `RUN_CONTROL_FLAGS`, `overwrite` / `resume` / `rewind` / `branch` / `trust_checkpoint`, left out), from any
    working directory: `--output`, `--data-path` and the `--directions` file are named by their absolute paths (so
    `-c RUN/args.yaml --resume auto` finds the run's folder and data, and a checkpoint's refusal hint names the
    file)."""
    skip = {"cli_model_kwargs", "config_model", *RUN_CONTROL_FLAGS}
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in skip or key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    for key in ("output", "data_path", "directions", "teacher_ckpt"):
        if out.get(key):
            out[key] = os.path.abspath(out[key])
    return out


def save_config(args: argparse.Namespace, path: str) -> None:
    """Write the resolved config as YAML (`args.yaml`)."""
    atomic_write_text(path, yaml.safe_dump(config_dict(args), default_flow_style=False, sort_keys=True))
