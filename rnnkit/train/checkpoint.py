"""Run folders: atomic writes, safetensors and JSON only (nothing is ever unpickled).

    RUN_DIR/config.json        the TrainConfig and the rnnkit version that wrote it
    RUN_DIR/vocab.json         vocabularies (symbols, labels) the task built
    RUN_DIR/last.safetensors   everything to resume: weights (model.*), optimizer state (optim.*),
                               RNG states (rng.*), the carried hidden state (carry.*), and under
                               torchrun those of every other process (rank<r>.rng.*, ...); step,
                               schedule and optimizer settings in the JSON metadata
    RUN_DIR/best.safetensors   the weights of the best validation by the run's select_by metric
                               (the task's own, config.SELECTION); metrics and select_by in
                               the metadata
    RUN_DIR/metrics.jsonl      one JSON object per line: training and validation records

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the old one, so an interruption leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from .errors import UserError

CONFIG = "config.json"
VOCAB = "vocab.json"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
_META_KEY = "rnnkit"


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; UserError (the old file
    left as it was) when the folder is not writable, the disk is full or a size limit is hit."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a run folder is shared as usual
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            kept = "the previous file is intact" if os.path.exists(path) else "nothing was written"
            raise UserError(f"{path}: cannot write ({e.strerror or e}); {kept}") from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str, obj: Any) -> None:
    """Strict JSON (no NaN or Infinity, which other readers refuse), written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
                        ).encode())


def read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (is {os.path.dirname(path) or '.'} a run folder?)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt JSON ({e})") from None


# ---- tensors ----------------------------------------------------------------------------------
def save_tensors(path: str, tensors: dict[str, Tensor], meta: dict) -> None:
    """Tensors and a JSON-able ``meta`` dict into one safetensors file, atomically."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, save(flat, metadata={_META_KEY: json.dumps(meta)}))


def load_tensors(path: str) -> tuple[dict[str, Tensor], dict]:
    """(tensors, meta) of a file written by save_tensors; UserError if missing or corrupt."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:  # not "corrupt": the file may be fine, and the user can fix access
        raise UserError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    return tensors, meta


def check_finite(weights: dict[str, Tensor], path: str) -> None:
    """UserError naming the first tensor of ``weights`` that holds NaN or infinity (training
    never saves such weights: the file was damaged or written by something else)."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise UserError(f"{path}: the weights {name!r} hold NaN or infinity; the checkpoint "
                            "is damaged (training never saves non-finite weights)")


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ---- optimizer state ----------------------------------------------------------------------------
def flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    """An optimizer state_dict as (tensors, JSON) with no pickled objects."""
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---- whole checkpoints --------------------------------------------------------------------------
def save_last(run_dir: str, model_state: dict, optimizer_state: dict,
              ranks: list[dict[str, Tensor]], meta: dict) -> None:
    """``ranks[r]``: the tensors process r alone holds, named ``rng.<name>`` (its RNG states) and
    ``carry.<i>`` (its carried hidden state); one entry for a single process. Process 0's are
    saved under those names, those of process r > 0 under ``rank<r>.<name>``."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    optim_tensors, optim_meta = flatten_optimizer(optimizer_state)
    tensors.update(optim_tensors)
    for r, own in enumerate(ranks):
        prefix = f"rank{r}." if r else ""
        tensors.update({prefix + k: v for k, v in own.items()})
    save_tensors(os.path.join(run_dir, LAST), tensors,
                 {**meta, "world": len(ranks), "optimizer": optim_meta})


def load_last(run_dir: str) -> dict:
    """{'model', 'optimizer', 'rng', 'carry', 'ranks', 'meta'} of RUN_DIR/last.safetensors;
    'rng' and 'carry' are process 0's; 'ranks' lists every process's, as {'rng': {name: tensor},
    'carry': tuple or None} (save_last's names, see there)."""
    tensors, meta = load_tensors(os.path.join(run_dir, LAST))
    ranks = []
    for r in range(int(meta.get("world", 1))):
        prefix = f"rank{r}." if r else ""
        carry = _prefixed(tensors, prefix + "carry.")
        ranks.append({"rng": _prefixed(tensors, prefix + "rng."),
                      "carry": tuple(carry[str(i)] for i in range(len(carry))) or None})
    return {"model": _prefixed(tensors, "model."), "rng": ranks[0]["rng"],
            "optimizer": unflatten_optimizer(tensors, meta.pop("optimizer")),
            "carry": ranks[0]["carry"], "ranks": ranks, "meta": meta}


def save_best(run_dir: str, model_state: dict, meta: dict) -> None:
    save_tensors(os.path.join(run_dir, BEST), dict(model_state), meta)


def load_weights(run_dir: str, which: str = "best") -> tuple[dict[str, Tensor], dict]:
    """Model weights (and metadata) of the best or last checkpoint of a run folder."""
    if which == "last":
        state = load_last(run_dir)
        return state["model"], state["meta"]
    path = os.path.join(run_dir, BEST)
    if not os.path.isfile(path) and os.path.isfile(os.path.join(run_dir, LAST)):
        return load_weights(run_dir, "last")
    return load_tensors(path)


# ---- metrics ----------------------------------------------------------------------------------
def append_metrics(run_dir: str, record: dict) -> None:
    path = os.path.join(run_dir, METRICS)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def read_metrics(run_dir: str) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl that are JSON objects with an integer step; lines
    cut short by a crash, not UTF-8, or holding anything else are skipped."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (is {run_dir} a run folder?)")
    records = []
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(record)
    return records


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop records after ``step`` (written after the checkpoint a resumed run starts from)."""
    path = os.path.join(run_dir, METRICS)
    if os.path.isfile(path):
        keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep).encode())
