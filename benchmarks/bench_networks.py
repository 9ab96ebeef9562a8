"""Cost of trust scoring on the paper's networks, in plain forward passes of the same batch (random weights).

    python benchmarks/bench_networks.py                          # all 21 networks, CPU
    python benchmarks/bench_networks.py --only resnet20 vit_b_16 --repeats 3
    python benchmarks/bench_networks.py --out bench_networks.json  # resumable: finished networks are kept
    python benchmarks/bench_networks.py --device cuda --only resnet50 vit_b_16 --batch-size 32 128

The 14 ImageNet networks of the paper (224², ``--batch-size``), 5 video networks (torchvision video models,
clips of ``--frames`` × ``--video-size``²; s3d needs 16 × 224²) and two CIFAR-style ResNets with option-A
shortcuts (He et al., CVPR 2016; 32², ``--cifar-batch-sizes``), built here. For each, against a plain batched
forward (``torch.no_grad``) timed in the same process, interleaved, minimum over ``--repeats`` after a warm-up:

* forward group: throughput ratio of the 12 one-forward-pass scores (limit 1);
* all but MC dropout: cost of every method except mc_dropout, in forward passes;
* Purview: cost of purview_initial + purview_final, in forward passes (and which submodules, if any, went
  through per-sample autograd rather than closed forms).

It ends with an estimate of the paper's whole ImageNet table on this machine: 50,000 images × 14 networks ×
every method, i.e. Σ_networks 50,000 × (all-but-MC time per image + MC dropout, estimated as ``mc_samples``
plain forwards per image where the network has dropout).

On a GPU (``--device cuda``) every timing waits for the device, and the table adds the peak GPU memory of
Purview above the model and its input, against those of a training step (forward + backward) and of the
plain forward, and with ``--micro-batch N`` Purview's peak and cost when the batch is scored in slices of N.
``--profile`` prints where the time of the forward group and of Purview goes (torch.profiler, first network
only). ``--keep-freed-memory`` first calls ``gradtrust.keep_freed_memory()`` (glibc keeps freed memory for
reuse, as the ``gradtrust`` command does on a CPU); without it the library's default allocator behaviour is
measured. Its runs are stored under their own keys (``…@kept``) and marked in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gradtrust
from gradtrust.scores.dropout import dropout_modules

IMAGENET = ["alexnet", "mobilenet_v3_small", "resnet18", "vgg11_bn", "resnet50", "resnext50_32x4d",
            "wide_resnet50_2", "efficientnet_v2_s", "convnext_tiny", "resnext101_64x4d", "swin_v2_t", "vit_b_16",
            "swin_b", "maxvit_t"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t"]
CIFAR = ["resnet20", "resnet56"]
FORWARD_GROUP = ["softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
                 "maxlogit_pnorm", "gradtrust", "gradtrust_topk", "gradnorm"]
IMAGES = 50_000


class _OptionA(nn.Module):
    """Option-A shortcut: subsample by 2 and pad the new channels with zeros (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _OptionA((cout - cin) // 2) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-``depth`` (6n+2 layers, widths 16/32/64, option-A shortcuts; He et al., CVPR 2016)."""
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            layers.append(_Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def build(name: str, args) -> tuple[nn.Module, Callable[[int], torch.Tensor], list[int]]:
    """(model, make_input(batch), batch sizes) for one network."""
    if name in CIFAR:
        return (cifar_resnet(int(name[6:])), lambda b: torch.randn(b, 3, 32, 32), args.cifar_batch_sizes)
    if name in VIDEO:
        frames, size = (16, 224) if name == "s3d" else (args.frames, args.video_size)
        model = getattr(torchvision.models.video, name)(weights=None)
        return model, lambda b: torch.randn(b, 3, frames, size, size), [args.video_batch_size]
    return getattr(torchvision.models, name)(weights=None), lambda b: torch.randn(b, 3, 224, 224), args.batch_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _peak_bytes(fn, device: torch.device) -> int | None:
    """Peak GPU memory ``fn`` allocates above what is allocated before it (None on a CPU)."""
    if device.type != "cuda":
        return None
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def gradient_layer(model: nn.Module) -> str | None:
    """``layer=`` for the gradient scores: None (the final nn.Linear), or without one (s3d ends in a Conv3d)
    the last convolution."""
    if any(isinstance(m, nn.Linear) for m in model.modules()):
        return None
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))][-1]


def profile(model: nn.Module, x: torch.Tensor, layer: str | None) -> None:
    """Print the operators that take the time of the forward group and of Purview (after a warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    for label, methods in (("forward group", FORWARD_GROUP), ("purview", ["purview_initial", "purview_final"])):
        gradtrust.score(model, x, methods, layer=layer)
        with torch_profile(activities=activities) as prof:
            gradtrust.score(model, x, methods, layer=layer)
            _sync(x.device)
        print(f"--- profile: {label}")
        print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


def measure(model: nn.Module, x: torch.Tensor, repeats: int, micro_batch: int | None = None) -> dict:
    """Interleaved minimum times of a plain forward and of the three workloads, in seconds."""
    all_but_mc = [m for m in gradtrust.available_methods() if m != "mc_dropout"]
    layer = gradient_layer(model)

    def forward():
        with torch.no_grad():
            model(x)

    info: dict = {}

    def purview():
        info.update(gradtrust.score(model, x, ["purview_initial", "purview_final"]).info)

    work = {"forward": forward, "group": lambda: gradtrust.score(model, x, FORWARD_GROUP, layer=layer),
            "all_but_mc": lambda: gradtrust.score(model, x, all_but_mc, layer=layer), "purview": purview}
    first: dict[str, float] = {}
    for k, fn in work.items():  # warm-up (allocator, hook discovery, CUDA-graph capture); its cost is reported
        first[k] = _timed(fn, x.device)
    times: dict[str, list[float]] = {k: [] for k in work}
    for _ in range(repeats):
        for k, fn in work.items():
            times[k].append(_timed(fn, x.device))
    best = {k: min(v) for k, v in times.items()}
    def training_step():  # the reference for the gradient passes' memory: forward + backward of the batch
        with torch.enable_grad():
            model(x).logsumexp(1).sum().backward()
        model.zero_grad(set_to_none=True)

    memory = {"forward_peak_bytes": _peak_bytes(forward, x.device), "purview_peak_bytes": _peak_bytes(purview, x.device),
              "training_step_peak_bytes": _peak_bytes(training_step, x.device)}
    if micro_batch:
        sliced = lambda: gradtrust.score(model, x, ["purview_initial", "purview_final"], micro_batch=micro_batch)  # noqa: E731
        sliced()
        memory["purview_micro_peak_bytes"] = _peak_bytes(sliced, x.device)
        memory["purview_micro_fwd"] = min(_timed(sliced, x.device) for _ in range(repeats)) / best["forward"]
    return {**memory, "device": str(x.device), "group_first_call_s": first["group"],
            "forward_s": best["forward"], "group_ratio": best["forward"] / best["group"],
            "all_but_mc_fwd": best["all_but_mc"] / best["forward"], "purview_fwd": best["purview"] / best["forward"],
            "all_but_mc_s": best["all_but_mc"],
            "purview_backend": info.get("purview_backend"), "purview_fallback": info.get("purview_fallback", {}),
            "has_dropout": bool(dropout_modules(model))}


def _best(old: dict, new: dict) -> dict:
    """The run with the faster plain forward: a forward slowed by other jobs deflates every ratio of its run,
    so whole runs are kept, never figures mixed from two runs."""
    return new if new["forward_s"] <= old["forward_s"] else old


def _write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)  # atomic: an interrupted run keeps the networks finished so far


def table(results: dict, mc_samples: int) -> str:
    gpu = any(r.get("purview_peak_bytes") is not None for r in results.values())
    lines = ["| network | input | batch | forward (s) | forward-group ratio | all but MC dropout (fwd) | "
             "Purview (fwd) | per-sample autograd |" + (" Purview peak memory | training step's | plain forward's | "
                                                        "Purview with micro_batch |" if gpu else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- | --- | --- |" if gpu else "")]
    for r in results.values():
        units = r["purview_fallback"]
        if units:
            fallback = f"{len(units)} submodules ({', '.join(sorted(set(units.values())))})"
        else:
            fallback = "none" if r["purview_backend"] == "hooks" else f"whole model ({r['purview_backend']})"
        memory = ""
        if gpu:
            mib = 2**20
            memory = (f" {r['purview_peak_bytes'] / mib:,.0f} MiB | {r['training_step_peak_bytes'] / mib:,.0f} MiB | "
                      f"{r['forward_peak_bytes'] / mib:,.0f} MiB |")
            if "purview_micro_peak_bytes" in r:
                memory += f" {r['purview_micro_peak_bytes'] / mib:,.0f} MiB, {r['purview_micro_fwd']:.2f} fwd |"
            else:
                memory += " |"
        kept = " (kept)" if r.get("keep_freed_memory") else ""
        lines.append(f"| {r['name']}{kept} | {r['input']} | {r['batch']} | {r['forward_s']:.4f} | {r['group_ratio']:.2f} | "
                     f"{r['all_but_mc_fwd']:.2f} | {r['purview_fwd']:.2f} | "
                     f"{fallback} |{memory}")
    seconds = 0.0
    counted = [r for r in results.values() if r["name"] in IMAGENET]
    for r in counted:
        per_image = (r["all_but_mc_s"] + (mc_samples * r["forward_s"] if r["has_dropout"] else 0.0)) / r["batch"]
        seconds += IMAGES * per_image
    lines.append("")
    if any(r.get("keep_freed_memory") for r in results.values()):
        lines.append("(kept): measured with gradtrust.keep_freed_memory() (--keep-freed-memory).")
    lines.append(f"Estimated paper ImageNet table on this machine ({len(counted)} of {len(IMAGENET)} networks "
                 f"measured, {IMAGES:,} images each, every method, MC dropout as {mc_samples} forwards): "
                 f"{seconds / 3600:.1f} hours.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="network names (default: all 21)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[4], help="ImageNet networks, 224² (one or more)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="also measure Purview with micro_batch=N (peak memory and cost; GPU table)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler breakdown (first network)")
    parser.add_argument("--video-batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--video-size", type=int, default=112)
    parser.add_argument("--cifar-batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_networks.json"))
    parser.add_argument("--table-only", action="store_true", help="print the table of the networks in --out")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="call gradtrust.keep_freed_memory() first (glibc: no mmap, no heap trimming)")
    parser.add_argument("--again", action="store_true",
                        help="measure networks already in --out once more; keep the run with the faster forward")
    args = parser.parse_args()
    names = args.only or IMAGENET + VIDEO + CIFAR
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    kept = gradtrust.keep_freed_memory() if args.keep_freed_memory else False
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} (random weights, {where}) "
          f"keep_freed_memory={'on' if kept else 'off'}"
          + (" (requested, but not applicable here)" if args.keep_freed_memory and not kept else ""), flush=True)
    profiled = not args.profile
    for name in [] if args.table_only else names:
        torch.manual_seed(0)
        model, make_input, batches = build(name, args)
        model.eval().to(device)
        for batch in batches:
            key = f"{name}@{batch}" + ("" if device.type == "cpu" else f"@{device.type}") + ("@kept" if kept else "")
            if key in results and not args.again:
                continue
            x = make_input(batch).to(device)
            if not profiled:
                profile(model, x, gradient_layer(model))
                profiled = True
            r = measure(model, x, args.repeats, args.micro_batch)
            r.update(name=name, batch=batch, input="×".join(map(str, x.shape[1:])), keep_freed_memory=kept)
            results[key] = _best(results[key], r) if key in results else r
            _write(args.out, results)
            print(f"{key}: group {r['group_ratio']:.2f}, all but MC {r['all_but_mc_fwd']:.2f}, "
                  f"Purview {r['purview_fwd']:.2f} fwd ({r['purview_backend']}, fallback {r['purview_fallback']})",
                  flush=True)
    mc_samples = gradtrust.scores.options.ScoreOptions().mc_samples
    print(table(results, mc_samples))


if __name__ == "__main__":
    main()
