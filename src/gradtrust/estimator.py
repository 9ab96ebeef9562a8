"""The one estimator protocol (scikit-learn's conventions) and the one folder every fitted estimator is saved in.

``Detector``, ``MahalanobisDetector``, ``Introspective``, ``GradCON`` and ``TemperatureScaling`` subclass
:class:`Estimator`: ``__init__`` stores its parameters and nothing else (they are checked by ``fit``);
``fit(...)`` returns ``self``; ``score_samples(X)`` gives one float64 per sample, higher = more trustworthy
(or more normal); ``predict`` where a prediction exists; ``get_params()``; an estimator used before ``fit`` or
``load`` raises :class:`~gradtrust.errors.NotFittedError`. An estimator of a trained network takes the network
as its first argument (``Introspective.fit(model, X, y)``, ``.score_samples(model, X)``): a saved folder never
names code to import, the caller passes the model.

``save(folder)`` writes, and ``load(folder)`` reads, one layout for every estimator:

    estimator.json         {"format": "gradtrust.<kind>", "format_version": N, "params": {...}, "state": {...},
                            "metadata": {...}, "weights_sha256": "<SHA-256 of weights.safetensors>"}
    weights.safetensors    the fitted arrays (safetensors with NumPy dtypes: no pickle, nothing to execute)

Saving is atomic: both files are written and fsynced in a temporary folder beside ``folder``, which is then
renamed into place; into an existing folder (which may hold other things, e.g. a feature cache) the weights
are replaced first and ``estimator.json`` last, and ``load`` checks the weights against the SHA-256 it records,
so an interrupted save is never read as a fitted estimator. A folder that holds another estimator (another
kind, other parameters or metadata) is refused unless ``overwrite=True``.
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

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "Estimator", "check_channels_first", "check_int", "check_number",
           "write_files_atomically"]

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


def check_channels_first(shape: tuple[int, ...], what: str) -> None:
    """Refuse a channels-last image batch ``(N, H, W, C)`` where ``(N, C, H, W)`` is expected.

    The channel axis of an image is the short one (1, 3 or 4): a 4-D batch whose last axis is that short and
    whose second is not was laid out channels-last (e.g. a NumPy ``uint8`` array from PIL), which a
    convolutional network would otherwise read as ``shape[1]`` channels of ``shape[2] x shape[3]`` images.
    """
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        raise InputError(f"{what} have shape {tuple(shape)}, laid out channels-last (N, H, W, C); GradTrust expects "
                         "(N, C, H, W): transpose them first, x.permute(0, 3, 1, 2) (torch) or "
                         "np.transpose(x, (0, 3, 1, 2)) (NumPy).")


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_atomically(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name → bytes) into ``folder`` so that they appear whole or not at all.

    They are written and fsynced in a temporary folder beside ``folder``; a new ``folder`` is that folder
    renamed, an existing one receives the files by ``os.replace`` in the order given (the last one is the
    commit point). On any failure the temporary folder is removed and ``folder`` is as it was.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_folder(tmp)
        if folder.exists():
            for name in files:
                os.replace(tmp / name, folder / name)
            tmp.rmdir()
        else:
            os.rename(tmp, folder)
        _fsync_folder(folder)
        _fsync_folder(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON holds them (a torch.device as its string, a tuple as a list)."""
    return json.loads(json.dumps(params, default=str))


class Estimator:
    """The base of every GradTrust estimator (see the module docstring). A subclass declares ``format_name``
    (``"gradtrust.<kind>"``), ``format_version``, ``fitted_attribute`` (set by ``fit``), ``fit_call`` (for the
    not-fitted message), ``saved_by`` (what writes its folder), and implements ``_get_state`` / ``_set_state``."""

    format_name: ClassVar[str]
    format_version: ClassVar[int] = 1
    fitted_attribute: ClassVar[str]
    fit_call: ClassVar[str] = "fit(...)"
    saved_by: ClassVar[str] = ""
    #: parameters that change no result and are not saved (e.g. progress bars)
    unsaved_params: ClassVar[tuple[str, ...]] = ()
    metadata_: dict[str, Any]  # what the caller saved with it (set by load)

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters, as stored (scikit-learn's ``get_params(deep=False)``)."""
        params = inspect.signature(type(self).__init__).parameters.values()
        return {p.name: getattr(self, p.name) for p in params
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params}){'' if self.is_fitted() else ' (not fitted)'}"

    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``load``) has run."""
        return getattr(self, self.fitted_attribute, None) is not None

    def check_fitted(self) -> Any:
        """The fitted attribute; :class:`NotFittedError` before ``fit``/``load``."""
        value = getattr(self, self.fitted_attribute, None)
        if value is None:
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted yet: call {self.fit_call} or {name}.load(folder) first.")
        return value

    # ------------------------------------------------------------------------------------------- storage
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What ``fit`` learnt: JSON-able facts and named arrays."""
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_get_state` returned (the parameters are already set)."""
        raise NotImplementedError

    def _saved_params(self) -> dict[str, Any]:
        return _jsonable({k: v for k, v in self.get_params().items() if k not in self.unsaved_params})

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
        """Write the fitted estimator into ``folder`` (created) atomically; ``metadata`` (JSON-able, default the
        loaded ``metadata_``) travels with it. Refuses a folder holding another estimator (another kind, other
        parameters or metadata) unless ``overwrite``. Returns the folder."""
        from safetensors.numpy import save as safetensors_bytes

        self.check_fitted()
        state, arrays = self._get_state()
        out = Path(folder)
        meta = _jsonable(getattr(self, "metadata_", {}) if metadata is None else metadata)
        weights = safetensors_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        config = {"format": self.format_name, "format_version": self.format_version, "params": self._saved_params(),
                  "state": _jsonable(state), "metadata": meta, "weights_sha256": hashlib.sha256(weights).hexdigest()}
        if not overwrite and (out / CONFIG_FILE).exists():
            self._refuse_other(out, config)
        try:
            write_files_atomically(out, {WEIGHTS_FILE: weights,
                                         CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode("utf-8")})
        except OSError as exc:
            raise GradTrustError(f"cannot save the {type(self).__name__} into {out}: {exc.strerror or exc} "
                                 f"({exc.filename or out}); choose a writable folder with free space.") from exc
        return out

    def _refuse_other(self, out: Path, config: dict[str, Any]) -> None:
        try:
            old = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        keys = ("format", "params", "metadata")
        diff = [f"{k}: {old.get(k)!r} there, {config[k]!r} here" for k in keys if old.get(k) != config[k]]
        if diff:
            raise InputError(f"{out} already holds a different estimator ({'; '.join(diff)}): save elsewhere, or "
                             "pass overwrite=True (--force on the command line) to replace it.")

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
            if config.get("format") != cls.format_name:
                raise ModelError(f"{cfg_path} holds a {config.get('format')!r} estimator, not {cls.format_name!r}.")
            if config.get("format_version") != cls.format_version:
                raise ModelError(f"{cfg_path} is format version {config.get('format_version')!r}; this gradtrust "
                                 f"reads version {cls.format_version}: fit and save it again with this version.")
            if hashlib.sha256(weights).hexdigest() != config.get("weights_sha256"):
                raise ModelError(f"{weights_path} does not match {cfg_path} (an interrupted save?): save it again.")
            saved = {k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()}
            estimator = cls(**{**saved, **{k: v for k, v in params.items() if v is not None}})
            estimator._set_state(config["state"], safetensors_arrays(weights))
            estimator.metadata_ = dict(config.get("metadata") or {})
        except GradTrustError:
            raise
        except (OSError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise ModelError(f"{path} holds a damaged {cls.__name__} ({type(exc).__name__}: {exc}): save it "
                             "again.") from exc
        return estimator
