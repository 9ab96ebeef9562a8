"""One estimator protocol, in scikit-learn's manner, and one folder format for every fitted estimator
(``docs/estimators.md``): ``__init__`` stores the parameters, ``fit(...)`` checks them and returns ``self``,
``score_samples`` is higher = more trustworthy (or normal), :class:`~gradtrust.errors.NotFittedError` before
``fit``; ``save(folder)`` writes ``estimator.json`` (format tag, parameters, state, metadata, the weights'
SHA-256) and ``weights.safetensors`` atomically, ``load(folder)`` reads them and executes nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from gradtrust.errors import GradTrustError, InputError, ModelError, NotFittedError

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "Estimator", "as_array", "as_matrix", "check_channels_first", "check_int",
           "check_number", "write_files_atomically"]

CONFIG_FILE = "estimator.json"
WEIGHTS_FILE = "weights.safetensors"
E = TypeVar("E", bound="Estimator")


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum``; :class:`InputError` naming the parameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_number(name: str, value: Any, minimum: float = 0.0, *, strict: bool = False) -> float:
    """``value`` as a finite ``float`` >= ``minimum`` (> with ``strict``); :class:`InputError` otherwise."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value)
            or value < minimum or (strict and value == minimum)):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}.")
    return float(value)


def as_array(x: Any, name: str) -> np.ndarray:
    """A NumPy array from an array, a torch tensor (without importing torch), a pandas object or lists."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):
        x = x.to_numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise InputError(f"`{name}` cannot be read as an array: {exc}") from exc


def as_matrix(x: Any, name: str, columns: str = "features") -> np.ndarray:
    """A finite float64 ``(samples, columns)`` matrix with at least one row and column (:func:`as_array`);
    :class:`InputError` saying what is wrong otherwise."""
    a = as_array(x, name)
    if a.ndim != 2:
        raise InputError(f"`{name}` must be a 2-D (samples, {columns}) array; got shape {a.shape}.")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"`{name}` is empty (shape {a.shape}): at least one sample and one column are needed.")
    if a.dtype == object or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"`{name}` must hold real numbers; got dtype {a.dtype}.")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InputError(f"`{name}` holds {int((~np.isfinite(a)).sum())} NaN or infinite value(s); drop those "
                         "samples (or fix the model) first.")
    return a


def check_channels_first(shape: tuple[int, ...], what: str) -> None:
    """Refuse a channels-last image batch ``(N, H, W, C)`` where ``(N, C, H, W)`` is expected: the channel axis
    is the short one (1, 3 or 4), so a batch whose last axis is that short and whose second is not (e.g. a
    NumPy array from PIL) would otherwise be read as ``shape[1]`` channels of ``shape[2] x shape[3]`` images."""
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        raise InputError(f"{what} have shape {tuple(shape)}, laid out channels-last (N, H, W, C); GradTrust expects "
                         "(N, C, H, W): transpose them first, x.permute(0, 3, 1, 2) (torch) or "
                         "np.transpose(x, (0, 3, 1, 2)) (NumPy).")


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so that a rename inside it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_atomically(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name → bytes) into ``folder``, whole or not at all: fsynced in a temporary folder beside
    it, which becomes ``folder`` by one rename, or whose files replace those of an existing ``folder`` in the
    order given (the last is the commit point). On failure the temporary folder goes and ``folder`` is intact."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        fsync_path(tmp)
        if folder.exists():
            for name in files:
                os.replace(tmp / name, folder / name)
        else:
            os.rename(tmp, folder)
        fsync_path(folder)
        fsync_path(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON holds it (a NumPy scalar as a number, a torch.device as its string, a tuple as a list)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


class Estimator:
    """The base of every GradTrust estimator (see the module docstring). A subclass names its ``format_name``
    (``"gradtrust.<kind>"``) and ``format_version``, the ``fitted_attribute`` that ``fit`` sets, ``fit_call`` and
    ``saved_by`` for messages, and implements ``_get_state`` (JSON-able facts, named arrays) / ``_set_state``."""

    format_name: ClassVar[str]
    format_version: ClassVar[int] = 1
    fitted_attribute: ClassVar[str]
    fit_call: ClassVar[str] = "fit(...)"
    saved_by: ClassVar[str] = ""
    unsaved_params: ClassVar[tuple[str, ...]] = ()  # they change no result (progress bars)
    metadata_: dict[str, Any]  # what the caller saved with it (set by load)

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters as stored (scikit-learn's ``get_params(deep=False)``)."""
        params = inspect.signature(type(self).__init__).parameters.values()
        return {p.name: getattr(self, p.name) for p in params
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params}){'' if self.is_fitted() else ' (not fitted)'}"

    def is_fitted(self) -> bool:
        return getattr(self, self.fitted_attribute, None) is not None

    def check_fitted(self) -> Any:
        """The fitted attribute; :class:`NotFittedError` before ``fit``/``load``."""
        if not self.is_fitted():
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted yet: call {self.fit_call} or {name}.load(folder) first.")
        return getattr(self, self.fitted_attribute)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
        """Write the fitted estimator into ``folder`` atomically, with ``metadata`` (JSON-able; default: the
        loaded ``metadata_``). Refuses a folder holding another estimator unless ``overwrite``."""
        from safetensors.numpy import save as safetensors_bytes

        self.check_fitted()
        state, arrays = self._get_state()
        out = Path(folder)
        weights = safetensors_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        config = {"format": self.format_name, "format_version": self.format_version,
                  "params": _jsonable({k: v for k, v in self.get_params().items() if k not in self.unsaved_params}),
                  "state": _jsonable(state),
                  "metadata": _jsonable(getattr(self, "metadata_", {}) if metadata is None else metadata),
                  "weights_sha256": hashlib.sha256(weights).hexdigest()}
        if not overwrite and (out / CONFIG_FILE).exists():
            try:
                old = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            diff = [f"{k}: {old.get(k)!r} there, {config[k]!r} here" for k in ("format", "params", "metadata")
                    if old.get(k) != config[k]]
            if diff:
                raise InputError(f"{out} already holds a different estimator ({'; '.join(diff)}): save elsewhere, "
                                 "or pass overwrite=True (--force on the command line) to replace it.")
        try:
            write_files_atomically(out, {WEIGHTS_FILE: weights, CONFIG_FILE: json.dumps(config, indent=2).encode()})
        except OSError as exc:
            raise GradTrustError(f"cannot save the {type(self).__name__} into {out}: {exc.strerror or exc} "
                                 f"({exc.filename or out}); choose a writable folder with free space.") from exc
        return out

    @classmethod
    def _keys_message(cls, path: Path, section: str, found: set[str], expected: set[str]) -> str:
        extra, missing = sorted(found - expected), sorted(expected - found)
        what = "; ".join(part for part in (f"unknown {', '.join(map(repr, extra))}" if extra else "",
                                           f"missing {', '.join(map(repr, missing))}" if missing else "") if part)
        return (f"{path} is not a {cls.__name__} this version saved: its {section!r} keys differ ({what}). Was it "
                "edited by hand? Fit and save it again.")

    @classmethod
    def _check_keys(cls, path: Path, config: dict[str, Any]) -> None:
        """Refuse a configuration with unknown or missing keys: a missing parameter would silently take its
        default, an unknown one would be ignored (:class:`ModelError` naming them)."""
        top = {"format", "format_version", "params", "state", "metadata", "weights_sha256"}
        if set(config) - top or {"params", "state"} - set(config):
            raise ModelError(cls._keys_message(path, "top-level", set(config), top))
        if not isinstance(config["params"], dict) or not isinstance(config["state"], dict):
            raise ModelError(f"{path}: 'params' and 'state' must be JSON objects; fit and save it again.")
        signature = inspect.signature(cls.__init__).parameters.values()
        expected = {p.name for p in signature if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        expected -= set(cls.unsaved_params)
        if set(config["params"]) != expected:
            raise ModelError(cls._keys_message(path, "params", set(config["params"]), expected))

    @classmethod
    def load(cls: type[E], folder: str | Path, **params: Any) -> E:
        """The estimator :meth:`save` wrote into ``folder``; ``params`` not ``None`` override the saved ones
        (e.g. ``device``). Nothing in the folder is imported or executed."""
        from safetensors.numpy import load as safetensors_arrays

        path = Path(folder)
        cfg_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights_path.is_file():
            raise ModelError(f"{path} is not a saved {cls.__name__} model: it holds no {cls.saved_by} "
                             f"({CONFIG_FILE} and {WEIGHTS_FILE}).")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
            weights = weights_path.read_bytes()
            if (config.get("format"), config.get("format_version")) != (cls.format_name, cls.format_version):
                raise ModelError(f"{cfg_path} holds a {config.get('format')!r} estimator, not {cls.format_name!r}, "
                                 f"or format version {config.get('format_version')!r}, not {cls.format_version}: "
                                 "fit and save it again with this version.")
            if hashlib.sha256(weights).hexdigest() != config.get("weights_sha256"):
                raise ModelError(f"{weights_path} does not match {cfg_path} (an interrupted save?): save it again.")
            cls._check_keys(cfg_path, config)
            saved = {k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()}
            estimator = cls(**{**saved, **{k: v for k, v in params.items() if v is not None}})
            estimator._set_state(dict(config["state"]), safetensors_arrays(weights))
            estimator.metadata_ = dict(config.get("metadata") or {})
            wrote = set(estimator._get_state()[0])  # the state keys this class saves
            if set(config["state"]) != wrote:
                raise ModelError(cls._keys_message(cfg_path, "state", set(config["state"]), wrote))
        except GradTrustError:
            raise
        except (OSError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise ModelError(f"{path} holds a damaged {cls.__name__} ({type(exc).__name__}: {exc}): save it "
                             "again.") from exc
        return estimator
