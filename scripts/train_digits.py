#!/usr/bin/env python
"""Train the bundled digits networks and write their shipped weights.

    python scripts/train_digits.py            # train all, write src/gradtrust/models/weights/digits_*.safetensors
    python scripts/train_digits.py --check    # train all, compare with the shipped weights, write nothing

Training is deterministic (CPU, one thread, seed 0, fixed epochs and optimizer — see
``gradtrust.models.digits.train_digits_model``) on the fixed train split of ``gradtrust.data.digits``.
It prints the train accuracy, the clean test accuracy and the test accuracy under every corruption and
severity, and records them in ``weights/digits_accuracy.json``. The whole run takes a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

from gradtrust.data.digits import CORRUPTIONS, SEVERITIES, SPLIT_VERSION, DigitsDataset  # noqa: E402
from gradtrust.models.digits import (  # noqa: E402
    ACCURACY_FILE,
    available_digits_models,
    build_digits_model,
    train_digits_model,
)

DEFAULT_OUT = REPO / "src" / "gradtrust" / "models" / "weights"
DEFAULT_SEVERITY = 1


def _state_bytes(model: torch.nn.Module, name: str) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # ONE metadata key: safetensors writes a metadata dict in hash order, which would make the bytes vary.
    info = json.dumps({"model": name, "dataset": "sklearn load_digits", "split_version": SPLIT_VERSION}, sort_keys=True)
    return save(state, metadata={"gradtrust": info})


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@torch.no_grad()
def _accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    inputs, labels = data
    return round(float((model(inputs).argmax(1) == labels).double().mean()), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights folder (default: the package's)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped weights; write nothing")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    test_sets = {"clean": DigitsDataset("test").tensors()}
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            test_sets[f"{corruption}/{severity}"] = DigitsDataset("test", corruption, severity).tensors()
    train_set = DigitsDataset("train").tensors()

    table: dict = {
        "note": "written by scripts/train_digits.py; accuracies on the digits test split (corruption seed 0)",
        "split_version": SPLIT_VERSION,
        "train_samples": len(train_set[1]),
        "test_samples": len(test_sets["clean"][1]),
        "default_severity": DEFAULT_SEVERITY,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "models": {},
    }
    mismatched = []
    header = f"{'model':14s} {'params':>7s} {'secs':>5s} {'train':>6s} {'clean':>6s}" + "".join(
        f" {c[:8] + '/' + str(DEFAULT_SEVERITY):>10s}" for c in CORRUPTIONS
    )
    print(header)
    for name in available_digits_models():
        t0 = time.perf_counter()
        model = train_digits_model(name)
        seconds = time.perf_counter() - t0
        blob = _state_bytes(model, name)
        accuracies = {key: _accuracy(model, data) for key, data in test_sets.items()}
        entry = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "train_accuracy": _accuracy(model, train_set),
            "test_accuracy": accuracies,
        }
        table["models"][name] = entry
        print(
            f"{name:14s} {entry['parameters']:7d} {seconds:5.1f} {entry['train_accuracy']:6.3f} "
            f"{accuracies['clean']:6.3f}"
            + "".join(f" {accuracies[f'{c}/{DEFAULT_SEVERITY}']:10.3f}" for c in CORRUPTIONS),
            flush=True,
        )
        path = args.out / f"{name}.safetensors"
        if args.check:
            shipped = build_digits_model(name).state_dict()
            same = all(torch.equal(shipped[k], v) for k, v in model.state_dict().items())
            print(f"  {'identical to' if same else 'DIFFERS from'} the shipped weights")
            if not same:
                mismatched.append(name)
        else:
            _atomic_write(path, blob)

    print("\ntest accuracy by severity:")
    for key in test_sets:
        if key != "clean":
            print(f"  {key:18s}" + "".join(f" {n}={e['test_accuracy'][key]:.3f}" for n, e in table["models"].items()))
    if not args.check:
        _atomic_write(args.out / ACCURACY_FILE, (json.dumps(table, indent=2) + "\n").encode())
        print(f"\nwrote {len(table['models'])} weight files and {ACCURACY_FILE} to {args.out}")
    print(f"total {time.perf_counter() - started:.1f} s on {platform.machine()} / torch {torch.__version__}")
    if mismatched:
        print(f"weights differ from the shipped ones: {', '.join(mismatched)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
