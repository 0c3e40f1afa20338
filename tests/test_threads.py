"""emoreg.utils.threads: --threads / EMOREG_THREADS / the contention-aware default, and the CLI wiring."""

from __future__ import annotations

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.utils import threads as threads_mod
from emoreg.utils.threads import busy_cores, choose_threads, configure_threads, parse_threads, usable_cores


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_idle_cores(monkeypatch):
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads_mod, "busy_cores", lambda: 0)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
def test_parse_threads_rejects_what_is_not_a_positive_count(value):
    with pytest.raises(ConfigError, match=r"EMOREG_THREADS: expected a whole number of threads \(1 or more\)"):
        parse_threads(value, "EMOREG_THREADS")


def test_precedence_argument_then_emoreg_threads_then_omp(two_idle_cores):
    env = {"EMOREG_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert (choose_threads(1, environ=env).threads, choose_threads(1, environ=env).source) == (1, "argument")
    from_env = choose_threads(None, environ=env)
    assert (from_env.threads, from_env.source) == (3, "EMOREG_THREADS")
    only_omp = choose_threads(None, environ={"OMP_NUM_THREADS": "5"})
    assert (only_omp.threads, only_omp.source) == (5, "OMP_NUM_THREADS")
    auto = choose_threads(None, environ={})
    assert (auto.threads, auto.source) == (2, "auto")


def test_default_leaves_out_the_cores_other_processes_keep_busy(monkeypatch):
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads_mod, "busy_cores", lambda: 1)
    assert choose_threads(None, environ={}).threads == 1
    monkeypatch.setattr(threads_mod, "busy_cores", lambda: 7)
    assert choose_threads(None, environ={}).threads == 1  # never below one


def test_busy_cores_reads_the_median_runnable_count_less_this_process(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.50 0.40 0.30 3/412 12345\n")
    assert busy_cores(samples=3, interval_s=0.0, loadavg=loadavg) == 2
    loadavg.write_text("0.00 0.00 0.00 1/90 1\n")
    assert busy_cores(samples=1, loadavg=loadavg) == 0
    assert busy_cores(samples=1, loadavg=tmp_path / "missing") == 0


def test_usable_cores_respects_a_cgroup_quota_and_local_ranks(monkeypatch, tmp_path):
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(threads_mod, "_CGROUP_V2_MAX", cpu_max)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpu_max.write_text("max 100000\n")
    assert usable_cores() == 8
    cpu_max.write_text("250000 100000\n")  # a container limited to 2.5 cores
    assert usable_cores() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert usable_cores() == 1
    cpu_max.write_text("max 100000\n")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert usable_cores() == 2


def test_configure_threads_sets_torch(two_idle_cores):
    choice = configure_threads(1)
    assert torch.get_num_threads() == 1 and choice.threads == 1
    assert "1 torch thread(s), from argument" in choice.describe()


def test_cli_runs_the_command_with_the_chosen_threads_and_restores_them(tmp_path, monkeypatch):
    from emoreg.cli import main as main_mod
    from emoreg.cli import scan

    seen = []
    monkeypatch.setattr(scan, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    torch.set_num_threads(2)
    assert main_mod.main(["scan", "--threads", "1", "--data", "a.jsonl", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert seen == [1]
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", [["eval", "default"], ["demo"], ["train", "recipes/sft.yaml"],
                                     ["extract", "--out", "x"], ["compare", "--out", "x"]])
def test_every_model_command_rejects_a_bad_thread_count(command, capsys, tmp_path, monkeypatch):
    from emoreg.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main([*command, "--threads", "0"]) == 2
    assert "--threads: expected a whole number of threads (1 or more), got '0'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_environment_variable_error_names_it(capsys, monkeypatch, tmp_path):
    from emoreg.cli.main import main

    monkeypatch.setenv("EMOREG_THREADS", "many")
    assert main(["scan", "--data", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "EMOREG_THREADS: expected a whole number of threads (1 or more), got 'many'" in capsys.readouterr().err
