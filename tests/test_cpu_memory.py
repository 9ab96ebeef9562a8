"""``gradtrust.keep_freed_memory`` (glibc mallopt) and the command line's ``--keep-freed-memory`` default.

The allocator is measured in a subprocess, so that this test process keeps glibc's default settings: a
64 MiB buffer (over glibc's largest mmap threshold, 32 MiB) is allocated, written and freed repeatedly, and
the minor page faults (``ru_minflt``: pages the kernel had to map and zero) are counted per round.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import gradtrust
from gradtrust import cpu_memory
from gradtrust.cli import main
from gradtrust.cli.memory import OPTION_NAME, keep_freed_memory_option

GLIBC = sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt exists on Linux with glibc only")

PROBE = textwrap.dedent("""
    import ctypes, json, resource, sys
    from gradtrust.cpu_memory import keep_freed_memory

    # Transparent huge pages off for this process, so that a fault maps one base page whatever the
    # machine's THP setting (PR_SET_THP_DISABLE = 41).
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
    SIZE = 64 << 20

    def faults_per_round(rounds=8):
        for _ in range(3):  # warm-up: the heap reaches its steady layout
            buffer = bytearray(SIZE)  # malloc + memset: every page is written
            del buffer
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            buffer = bytearray(SIZE)
            del buffer
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / rounds

    out = {"pages": SIZE // resource.getpagesize(), "default": faults_per_round()}
    out["first"] = keep_freed_memory()
    out["again"] = keep_freed_memory()
    out["kept"] = faults_per_round()
    out["restored"] = keep_freed_memory(False)
    out["after"] = faults_per_round()
    print(json.dumps(out))
""")


@needs_glibc
def test_keeping_freed_memory_stops_the_page_faults_and_false_restores_them():
    src = str(Path(gradtrust.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GLIBC_TUNABLES", None)  # measure glibc's defaults, whatever the caller's environment says
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    pages = got["pages"]
    assert got["first"] is True and got["again"] is True  # applied, and applying again is harmless
    assert got["restored"] is True
    assert got["default"] > 0.5 * pages, got  # glibc's defaults: mmap'd, unmapped, faulted in again
    assert got["kept"] < 0.1 * pages, got  # kept: the same pages are reused
    assert got["after"] > 0.5 * pages, got  # defaults back: mapped afresh again


@needs_glibc
def test_constants_match_glibcs_header():
    """The mallopt parameter numbers against glibc's installed malloc.h (an independent source)."""
    header = Path("/usr/include/malloc.h")
    if not header.is_file():
        pytest.skip("glibc's malloc.h is not installed (libc6-dev)")
    defines = dict(re.findall(r"#\s*define\s+(M_\w+)\s+(-?\d+)", header.read_text()))
    assert int(defines["M_MMAP_MAX"]) == cpu_memory.M_MMAP_MAX
    assert int(defines["M_TRIM_THRESHOLD"]) == cpu_memory.M_TRIM_THRESHOLD


class FakeMallopt:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_values_passed_to_mallopt_and_the_state_it_reports(monkeypatch):
    fake = FakeMallopt()
    monkeypatch.setattr(cpu_memory, "glibc_mallopt", lambda: fake)
    monkeypatch.setattr(cpu_memory, "_kept", False)
    assert gradtrust.keep_freed_memory() is True and cpu_memory.freed_memory_kept() is True
    assert sorted(fake.calls) == [(-4, 0), (-1, 2**31 - 1)]  # M_MMAP_MAX → 0, M_TRIM_THRESHOLD → INT_MAX
    fake.calls.clear()
    assert gradtrust.keep_freed_memory(False) is True and cpu_memory.freed_memory_kept() is False
    assert sorted(fake.calls) == [(-4, 65536), (-1, 128 * 1024)]  # glibc's documented defaults


def test_a_refused_mallopt_returns_false_and_changes_no_state(monkeypatch):
    monkeypatch.setattr(cpu_memory, "glibc_mallopt", lambda: FakeMallopt(result=0))
    monkeypatch.setattr(cpu_memory, "_kept", False)
    assert cpu_memory.keep_freed_memory() is False
    assert cpu_memory.freed_memory_kept() is False


@pytest.mark.parametrize("how", ["darwin", "musl", "confstr-error"])
def test_without_glibc_nothing_is_applied(monkeypatch, how):
    calls = []
    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda *a, **k: calls.append(a))  # must not be reached
    monkeypatch.setattr(cpu_memory, "_kept", False)
    if how == "darwin":
        monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    elif how == "musl":
        monkeypatch.setattr(cpu_memory.sys, "platform", "linux")
        monkeypatch.setattr(cpu_memory.os, "confstr", lambda name: None)  # what musl answers
    else:
        monkeypatch.setattr(cpu_memory.sys, "platform", "linux")

        def confstr(name):
            raise ValueError("unrecognized configuration name")

        monkeypatch.setattr(cpu_memory.os, "confstr", confstr)
    assert cpu_memory.glibc_mallopt() is None
    assert cpu_memory.keep_freed_memory() is False and cpu_memory.keep_freed_memory(False) is False
    assert cpu_memory.freed_memory_kept() is False and calls == []


def test_importing_the_module_needs_neither_torch_nor_click():
    code = ("import sys; import gradtrust.cpu_memory; "
            "print(sorted(m for m in ('torch', 'click', 'numpy') if m in sys.modules))")
    src = str(Path(gradtrust.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def recorded(monkeypatch):
    """Replace keep_freed_memory with a recorder that sets the state as the real one would (the test
    process's allocator is left alone)."""
    calls: list[bool] = []

    def fake(enable: bool = True) -> bool:
        calls.append(enable)
        cpu_memory._kept = enable
        return True

    monkeypatch.setattr(cpu_memory, "_kept", False)
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", fake)
    return calls


def toy_command() -> click.Command:
    @click.command()
    @keep_freed_memory_option
    @click.option("--device", default=None)
    def toy(device):
        click.echo(f"ran on {device}")

    return toy


@pytest.mark.parametrize(("args", "cuda", "applied"), [
    ([], False, True), (["--device", "cpu"], True, True), (["--device", "cpu"], False, True),
    ([], True, False), (["--device", "cuda"], False, False), (["--device", "cuda:1"], True, False),
    (["--device", "cpu", "--no-keep-freed-memory"], False, False), (["--keep-freed-memory"], False, True),
    (["--device", "not-a-device"], False, False),
])
def test_the_option_applies_on_cpu_unless_turned_off(recorded, monkeypatch, args, cuda, applied):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    result = CliRunner().invoke(toy_command(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ran on")  # the command itself ran, without the flag
    assert recorded == ([True] if applied else [])


COMMANDS = [["score"], ["benchmark"], ["explain"], ["detect"], ["introspect", "fit"], ["introspect", "score"],
            ["introspect", "benchmark"], ["gradcon", "fit"], ["gradcon", "score"], ["gradcon", "benchmark"]]


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_that_runs_a_model_has_the_flag(path):
    command: click.Command = main
    ctx = click.Context(main)
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None, name
        command = found
    option = next(p for p in command.params if p.name == OPTION_NAME)
    assert option.default is True and "--no-keep-freed-memory" in option.secondary_opts
    threads = next(p for p in command.params if p.name == "threads")
    assert threads.envvar == "GRADTRUST_THREADS" and getattr(threads, "definition", None) == "threads"


@pytest.mark.parametrize("flag", [[], ["--no-keep-freed-memory"]])
def test_benchmark_command_applies_it_before_its_own_checks(recorded, flag):
    result = CliRunner().invoke(main, ["benchmark", "--device", "cpu", "--methods", "bogus", *flag])
    assert result.exit_code == 2 and "bogus" in result.output  # stopped by its own check, after the option
    assert recorded == ([] if flag else [True])


@pytest.mark.parametrize("flag", [[], ["--no-keep-freed-memory"]])
def test_score_records_the_setting_in_the_manifest(recorded, tmp_path, flag):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["score", "--model", "digits:digits_mlp", "--device", "cpu", "--out",
                                       str(out), "--methods", "softmax", "--batch-size", "512", "--no-progress",
                                       *flag], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["keep_freed_memory"] is (not flag)
    assert recorded == ([] if flag else [True])


@pytest.mark.parametrize(("args", "env"), [(["--threads", "1"], {}), ([], {"GRADTRUST_THREADS": "1"})])
def test_threads_option_and_variable_set_torch_threads_and_the_manifest_records_them(recorded, tmp_path, args, env):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "run"
    try:
        result = CliRunner().invoke(main, ["score", "--model", "digits:digits_mlp", "--device", "cpu", "--out",
                                           str(out), "--methods", "softmax", "--batch-size", "512",
                                           "--no-progress", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert json.loads((out / "manifest.json").read_text())["execution"]["threads"] == 1
    bad = CliRunner().invoke(main, ["score", "--model", "digits:digits_mlp", "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_the_lazy_export():
    module = importlib.import_module("gradtrust.cpu_memory")
    assert "keep_freed_memory" in gradtrust.__all__
    assert gradtrust.keep_freed_memory is module.keep_freed_memory
