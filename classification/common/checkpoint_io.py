"""Reading and writing checkpoint files safely.

Every read uses ``torch.load(weights_only=True)``: a file that can only be read by unpickling arbitrary objects (which
can run code) is refused with :class:`UnsafeCheckpointError`, unless the caller passes ``trust=True`` (the tools'
``--trust-checkpoint``). Writes go through a temporary file and a rename, and get the permissions of the user's umask.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import tempfile
import warnings
import zipfile
from typing import Any, BinaryIO, Callable, Mapping, Optional

import torch

TRUST_FLAG = '--trust-checkpoint'
TMP_PREFIX = '.tmp-'

# Containers, in the order they are looked for: released files, training checkpoints, EMA weights.
STATE_DICT_KEYS = ('state_dict', 'model', 'ema_model', 'state_dict_ema')
# Where the EMA weights are kept: ours and the original's 'ema_model', timm train.py's 'state_dict_ema' ('model_ema').
EMA_KEYS = ('ema_model', 'state_dict_ema', 'model_ema')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that only loads by running pickled code; the message names the opt-in flag."""


def _read(path: str, trust: bool, mmap: bool) -> Any:
    with warnings.catch_warnings():  # torch warns about any pickle protocol but 2 before it refuses or reads the file
        warnings.filterwarnings('ignore', message='Detected pickle protocol', category=UserWarning)
        if path.startswith(('http://', 'https://')):
            return torch.hub.load_state_dict_from_url(path, map_location='cpu', weights_only=not trust)
        return torch.load(path, map_location='cpu', weights_only=not trust, mmap=mmap)


# torch.save writes a zip archive; files of torch < 1.6 are a pickle stream (protocol 2 starts with 0x80).
CHECKPOINT_MAGIC = (b'PK\x03\x04', b'\x80')


CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.pt', '.ckpt')


def _folder_given(folder: str) -> str:
    """The error for a folder given as a checkpoint: naming its checkpoint files (``last.pth.tar`` first), if any."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(CHECKPOINT_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, name)))
    if not names:
        return f'{folder} is a folder, holding no checkpoint file ({", ".join("*" + s for s in CHECKPOINT_SUFFIXES)})'
    names.sort(key=lambda name: name != 'last.pth.tar')
    shown = ', '.join(names[:4]) + (f', ... ({len(names)} in all)' if len(names) > 4 else '')
    return f'{folder} is a folder: give a checkpoint file in it, e.g. {os.path.join(folder, names[0])} ({shown})'


def _truncated(path: str) -> CheckpointError:
    """The error for the checkpoint file `path` cut short, naming its size."""
    return CheckpointError(f'{path} looks truncated ({os.path.getsize(path):,} bytes, its end is missing: a copy or a '
                           f'write that did not finish); copy it again or give another checkpoint')


def _cut_short(path: str, head: bytes, err: BaseException) -> bool:
    """Whether the checkpoint file `path` (starting with `head`) failed to read (`err`) because it ends early: an
    archive without the directory a zip file ends with, a pickle stream that runs out."""
    if head == CHECKPOINT_MAGIC[0]:
        return not zipfile.is_zipfile(path)
    return isinstance(err, EOFError) or 'EOF' in str(err)


# torch < 1.6's torch.save writes five pickles (its magic number, protocol version, system info, the object, its
# storage keys), then the storages' bytes; the first, at its default pickle protocol:
LEGACY_PICKLES = 5
LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def _legacy_pickles(path: str) -> str:
    """What the pickle file `path` is to torch < 1.6's format, its pickles walked opcode by opcode (nothing is
    unpickled): 'whole' (its five pickles end: torch reads the rest), 'cut' (it ends inside them, where torch would
    report an index, a struct size or a forbidden global), or 'other' (its first pickle is not torch's magic number:
    no torch.save wrote it)."""
    with open(path, 'rb') as f:
        try:
            if torch.serialization.MAGIC_NUMBER not in [arg for _, arg, _ in pickletools.genops(f)]:
                return 'other'
        except ValueError:  # pickletools' error for a stream that ends before an opcode's argument or its STOP
            f.seek(0)
            return 'cut' if LEGACY_MAGIC.startswith(f.read()) else 'other'
        try:
            for _ in range(LEGACY_PICKLES - 1):
                for _ in pickletools.genops(f):
                    pass
        except ValueError:
            return 'cut'
    return 'whole'


# A safetensors file starts with its JSON header's length (8 bytes, little-endian), then the header, a JSON object.
SAFETENSORS_HEAD = 9


def _is_safetensors(path: str, head: bytes) -> bool:
    """Whether the file ``path``, starting with ``head`` (its first ``SAFETENSORS_HEAD`` bytes), is a safetensors
    file: named so, or a header length within the file followed by a JSON object."""
    if path.endswith('.safetensors'):
        return True
    return (len(head) == SAFETENSORS_HEAD and head.endswith(b'{')
            and SAFETENSORS_HEAD - 1 + int.from_bytes(head[:-1], 'little') <= os.path.getsize(path))


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` on the CPU (it holds nothing else, so nothing to trust)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device='cpu')
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f'cannot read the safetensors file {path}: {_first_line(err)} (cut short, or not a '
                              f'safetensors file?)') from None


def load_checkpoint(path: str, *, trust: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file (or http(s) URL) onto the CPU with ``weights_only=True``; the result is a dict.

    ``trust=True`` unpickles arbitrary objects: only for files from a trusted source. ``mmap=True`` maps a file's
    tensors instead of reading them (for a look at its plain entries). A safetensors file (timm's and the Hugging
    Face hub's format of weights alone) is read as its flat dict of tensors. Errors name the file.
    """
    is_url = path.startswith(('http://', 'https://'))
    if not is_url and os.path.isdir(path):
        raise CheckpointError(_folder_given(path))
    if not is_url and not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if not is_url:
        with open(path, 'rb') as f:
            head = f.read(SAFETENSORS_HEAD)
        if _is_safetensors(path, head):
            return _read_safetensors(path)
        head = head[:4]
        if head != CHECKPOINT_MAGIC[0] and CHECKPOINT_MAGIC[0].startswith(head):  # empty, or cut in its first bytes
            raise _truncated(path)
        if not head.startswith(CHECKPOINT_MAGIC):
            raise CheckpointError(f'{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle; '
                                  f'it starts with {head!r})')
        pickles = _legacy_pickles(path) if head != CHECKPOINT_MAGIC[0] else 'archive'
        if pickles == 'cut':
            raise _truncated(path)
        if pickles == 'other':
            raise CheckpointError(f'{path} is not a PyTorch checkpoint (a pickle, but not one torch.save wrote: it '
                                  f'does not start with torch\'s magic number)')
        mmap = mmap and head == CHECKPOINT_MAGIC[0]  # only an archive can be mapped
    try:
        ckpt = _read(path, trust, mmap)
    except pickle.UnpicklingError as err:
        if 'Weights only load failed' in str(err) or 'weights_only' in str(err):
            raise UnsafeCheckpointError(
                f'{path} holds pickled objects beyond tensors and plain containers, and loading it could run code; '
                f'if you trust its source, pass {TRUST_FLAG}') from None
        raise CheckpointError(f'cannot read checkpoint {path}: not a PyTorch checkpoint ({err})') from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        if not is_url and _cut_short(path, head, err):
            raise _truncated(path) from None
        if is_url and isinstance(err, OSError):  # urllib's URLError / HTTPError: no network, a wrong address
            raise CheckpointError(f'cannot download checkpoint {path}: {type(err).__name__}: {_first_line(err)} (no '
                                  f'network here? download it and give the local file)') from None
        raise CheckpointError(f'cannot read checkpoint {path}: not a PyTorch checkpoint ({type(err).__name__}: '
                              f'{_first_line(err)})') from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    return ckpt


def load_checkpoint_on_all_ranks(path: str, *, trust: bool = False) -> dict[str, Any]:
    """:func:`load_checkpoint` called by every process of a run at once. In a distributed run an http(s) URL is
    downloaded by the first process of each node (``LOCAL_RANK`` 0) while the others wait at a barrier, then read
    from torch.hub's cache: one download per node, not one per process. A failed download releases the others, which
    then try it themselves (and so stop with the same error). A single process reads as :func:`load_checkpoint`."""
    import torch.distributed as dist
    if (not path.startswith(('http://', 'https://')) or not dist.is_available() or not dist.is_initialized()
            or dist.get_world_size() == 1):
        return load_checkpoint(path, trust=trust)
    if int(os.environ.get('LOCAL_RANK', dist.get_rank())) == 0:
        try:
            return load_checkpoint(path, trust=trust)
        finally:
            dist.barrier()
    dist.barrier()
    return load_checkpoint(path, trust=trust)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = 'module.') -> dict[str, torch.Tensor]:
    """Remove every leading ``prefix`` (DDP wraps once, the original's EMA of a DDP model twice) from all keys."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out


def is_weights_alone(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint is a flat dict of tensors (``torch.save(model.state_dict())``, a safetensors file); an
    empty one counts."""
    return all(isinstance(v, torch.Tensor) for v in checkpoint.values())


def epoch_position(step: int, steps_per_epoch: Optional[int] = None, grad_accum_steps: int = 1) -> str:
    """Where ``step`` batches of an epoch stand, for messages: ``step 4 of 10``; under gradient accumulation, where
    a step is an optimizer step over several batches, ``batch 4 of 10 (optimizer step 2 of 5)``; without the
    epoch's length, ``step 4`` or ``batch 4 (optimizer step 2)``."""
    def of(count: Optional[int]) -> str:
        return f" of {count}" if count else ""

    if grad_accum_steps == 1:
        return f"step {step}{of(steps_per_epoch)}"
    updates = steps_per_epoch // grad_accum_steps if steps_per_epoch else None
    return f"batch {step}{of(steps_per_epoch)} (optimizer step {step // grad_accum_steps}{of(updates)})"


def saved_epoch_position(checkpoint: Mapping[str, Any], with_length: bool = True) -> str:
    """:func:`epoch_position` of a training checkpoint saved in the middle of an epoch: its ``step``, its
    ``steps_per_epoch`` (``with_length``) and its run's ``grad_accum_steps`` (1 where its config does not say)."""
    accum = (checkpoint.get("config") or {}).get("grad_accum_steps") or 1
    steps = checkpoint.get("steps_per_epoch") if with_length else None
    return epoch_position(checkpoint["step"], steps, accum)


def state_dict_from(checkpoint: Mapping[str, Any], key: Optional[str] = None,
                    source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint, ``module.`` prefixes stripped.

    ``checkpoint[key]`` if ``key`` is given (``'ema_model'``: the first of ``EMA_KEYS`` present, so timm's EMA too);
    else the first of ``STATE_DICT_KEYS`` present; else the checkpoint itself when it is already a flat tensor dict.
    ``source`` (the file) is named in the error.
    """
    keys = EMA_KEYS if key == 'ema_model' else (key,) if key else STATE_DICT_KEYS
    for candidate in keys:
        if isinstance(checkpoint.get(candidate), Mapping):
            return strip_prefix(checkpoint[candidate])
    if key is None and is_weights_alone(checkpoint):  # empty: no weights at all
        return strip_prefix(checkpoint)
    if key == 'ema_model' and key in checkpoint and checkpoint[key] is None:
        raise CheckpointError(f"{source}: holds no EMA weights (its run was trained without --model-ema)")
    names = sorted(map(str, checkpoint))
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    ema = key == 'ema_model'
    also = f", nor timm's {' / '.join(map(repr, EMA_KEYS[1:]))}" if ema else ''
    raise CheckpointError(f"{source}: no {' or '.join(map(repr, keys[:1] if ema else keys))} weights{also} "
                          f"(keys: {shown})")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _replace(tmp: str, path: str) -> None:
    """Rename the written and synced ``tmp`` to ``path`` and sync the folder, so that after a crash of the machine
    ``path`` holds either its old content or the new one, whole."""
    os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the file what any other output of the run gets
    os.replace(tmp, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (a folder can be synced on POSIX only; elsewhere this does nothing)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a folder; the rename stands, as durable as they make it
        pass
    finally:
        os.close(fd)


def _write_atomically(path: str, write: Callable[[BinaryIO], Any], suffix: str) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder (created if missing), sync it, rename it to ``path``;
    on any failure the temporary file is removed and the error raised, an OSError naming ``path`` where it named the
    temporary file or no file (a full disk, a folder where ``path`` should be)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.strerror and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror, path) from err
        raise


class _ErrorRecordingWriter:
    """A binary file's ``write`` that remembers the error raised in it: a KeyboardInterrupt (a second Ctrl-C during a
    save) or an OSError (a full disk, a file past its size limit). torch's stream writer turns any exception of a write
    into a RuntimeError, whose text (`unexpected pos 704 vs 598`) says neither that the run was interrupted nor why
    the write failed."""

    def __init__(self, f: BinaryIO):
        self.file, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except (KeyboardInterrupt, OSError) as err:
            if self.error is None:
                self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(obj: Any, f: BinaryIO) -> None:
    """``torch.save(obj, f)``; a KeyboardInterrupt or OSError of a write is raised as it is."""
    writer = _ErrorRecordingWriter(f)
    try:
        torch.save(obj, writer)
    except RuntimeError:
        if writer.error is not None:
            raise writer.error from None
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: ``path`` is never left half written.

    A failed write (disk full, file too large, permissions) raises :class:`CheckpointError` naming ``path``; Ctrl-C
    during the write raises KeyboardInterrupt.
    """
    try:
        _write_atomically(path, lambda f: _torch_save(obj, f), '.pth.tar')
    except (OSError, RuntimeError) as err:  # torch's stream writer reports a failed write as RuntimeError
        raise CheckpointError(f'cannot write checkpoint {path}: {_write_failure(err)}') from err


def _write_failure(err: BaseException) -> str:
    """Why a write failed, in one line (`_first_line`); a file that stands where the path needs a folder (the
    FileExistsError of ``os.makedirs``, whose text alone is `File exists`) is named."""
    if isinstance(err, FileExistsError) and err.filename:
        return f'{err.filename} is a file, not a folder'
    return _first_line(err)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) as :func:`atomic_save` writes a checkpoint: a run's small files (``args.yaml``,
    ``directions.yaml``) are never left half written by a crash either."""
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` as :func:`atomic_save` writes a checkpoint (the tools' figures and tables)."""
    _write_atomically(path, lambda f: f.write(data), os.path.splitext(path)[1])


def _first_line(err: BaseException) -> str:
    """Why a read, download or write failed, in one line: an OSError's own text (`No space left on device`) without
    the file names it carries (the caller names the checkpoint), else the error's first line."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a synced temporary file and a rename (``dst`` is never left half written)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix='.pth.tar', dir=os.path.dirname(os.path.abspath(dst)))
        os.close(fd)
        shutil.copyfile(src, tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        _replace(tmp, dst)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise CheckpointError(f'cannot write checkpoint {dst}: {_first_line(err)}') from err
        raise


def remove_temporary_files(folder: str) -> list[str]:
    """Delete the ``.tmp-*`` files an interrupted write left in ``folder``; returns their names."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith(TMP_PREFIX))
    for name in names:
        os.remove(os.path.join(folder, name))
    return names
