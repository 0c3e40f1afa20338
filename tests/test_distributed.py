"""emoreg under real multi-process training: DDP (torchrun) and DeepSpeed ZeRO-2/3 (accelerate launch).

Each test launches 2 CPU ranks on gloo running a script from tests/distributed/, which writes what it saw
(micro-batches of every rank, rank 0's log history and full trained parameters) to a tmp dir, then checks
it here on one process:

* DDP: SFTTrainer + emoreg.attach on 2 ranks logs the same ``emoreg/`` metrics and trains the same
  parameters as one rank with twice the per-device batch on the same samples.
* ZeRO-2 / ZeRO-3 (the repo's accelerate_configs/ turned into CPU configs): the penalty's share of an SGD
  step (run without emoreg minus run with it) equals ``coef * grad R / GA`` averaged over the ranks,
  computed by hand from each rank's micro-batches, and the metrics are reduced over both ranks.

The launched scripts use one thread per rank and skip DeepSpeed's shared-memory op build; the whole
module takes about 45-50 s on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.common import COEF, LAYERS, RULES, hand_metrics, strip_padding
from tests.regularizer_helpers import content_mask, make_bundle
from tests.tiny_models import make_tiny_llama
from tests.trainer_harness import assert_penalty_gradient, hand_penalty_gradient

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
SCRIPTS = REPO / "tests" / "distributed"
TIMEOUT_S = 420  # generous: a launch takes 10-15 s on 2 idle cores
GA = 2

_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                       "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_VARIABLES and not k.startswith(("ACCELERATE_", "PET_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def _launch(make_command, env: dict[str, str], timeout: float = TIMEOUT_S) -> str:
    """Run ``make_command(port)`` in its own process group; on failure show its output. Retries once on a taken port."""
    for attempt in range(2):
        command = make_command(_free_port())
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it started
            output, _ = proc.communicate()
            pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\n{output[-15000:]}")
        if proc.returncode == 0:
            return output
        if attempt == 0 and "address already in use" in output.lower():
            continue
        pytest.fail(f"exit code {proc.returncode}: {' '.join(command)}\n{output[-15000:]}")
    raise AssertionError("unreachable")


def _cpu_variant(name: str, directory: Path) -> Path:
    """The repo's accelerate config with 2 CPU processes in fp32 (what a GPU-less machine can run)."""
    import yaml

    config = yaml.safe_load((CONFIGS / name).read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    path = directory / f"cpu_{name}"
    path.write_text(yaml.safe_dump(config))
    return path


def _load(path: Path):
    return torch.load(path, weights_only=False) if path.suffix == ".pt" else json.loads(path.read_text())


def _training_logs(log_history: list[dict]) -> list[dict]:
    return [entry for entry in log_history if "loss" in entry]


def _emoreg(entry: dict) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k.startswith("emoreg/")}


def _selected_tokens(batches, completion_only: bool) -> int:
    total = 0
    for batch in batches:
        mask = content_mask(batch["attention_mask"])
        if completion_only:
            mask = mask & (batch["labels"] != -100)
        total += int(mask.sum())
    return total


# --------------------------------------------------------------------------------------------- configs


def test_accelerate_configs_parse_with_the_expected_settings():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "cpu.yaml": ("NO", "no", 1, None),
        "single_gpu.yaml": ("NO", "bf16", 1, None),
        "multi_gpu.yaml": ("MULTI_GPU", "bf16", 2, None),
        "deepspeed_zero2.yaml": ("DEEPSPEED", "bf16", 2, 2),
        "deepspeed_zero3.yaml": ("DEEPSPEED", "bf16", 2, 3),
        "deepspeed_zero3_offload.yaml": ("DEEPSPEED", "bf16", 2, 3),
        "multi_node_zero3.yaml": ("DEEPSPEED", "bf16", 16, 3),
    }
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    readme = (CONFIGS / "README.md").read_text()
    for name, (distributed, precision, processes, stage) in expected.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert str(config.distributed_type).split(".")[-1] == distributed, name
        assert str(config.mixed_precision).split(".")[-1].lower() == precision, name
        assert config.num_processes == processes and config.use_cpu == (name == "cpu.yaml"), name
        assert name in readme, f"README.md has no launch command for {name}"
        if stage is not None:
            ds = config.deepspeed_config
            assert ds["zero_stage"] == stage and ds["deepspeed_multinode_launcher"] == "standard", name
            offload = "cpu" if "offload" in name else "none"
            assert ds["offload_param_device"] == offload and ds["offload_optimizer_device"] == offload, name
            assert ds["zero3_init_flag"] == (stage == 3), name
    multi_node = load_config_from_file(str(CONFIGS / "multi_node_zero3.yaml"))
    assert multi_node.num_machines == 2 and multi_node.main_process_ip and multi_node.main_process_port


# --------------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_sft_metrics_and_parameters_equal_one_rank(tmp_path):
    """2 DDP ranks x per-device batch 2 == 1 rank x batch 4, GA 2, 2 optimizer steps (one epoch of 16 rows).

    Which rows: the Trainer's seeded random sampler gives one permutation of the dataset whatever the world
    size; Accelerate shards it by *batches*: rank r takes batches r, r + 2, ... of per-device size, so a
    rank-0 micro-batch followed by the rank-1 micro-batch of the same index is exactly the single-rank
    micro-batch of that index (checked below from what the models really received).

    Why the parameters can match: the SFT loss is normalised by the token count of the whole step across
    ranks, but emoreg's penalty is a token mean *per micro-batch* that DDP then averages over ranks, which
    equals the single-rank mean only when every rank selects as many tokens. The data makes that so
    (completions of one length, ``selection="completion"``, prompts of different lengths for padding).
    """
    from tests.distributed.ddp_sft import run

    multi, single = tmp_path / "ddp", tmp_path / "single"
    _launch(lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port),
                          str(SCRIPTS / "ddp_sft.py"), "--out", str(multi), "--per-device", "2",
                          "--ga", str(GA), "--steps", "2"],
            _env(ACCELERATE_USE_CPU="1"))
    run(single, per_device=4, ga=GA, steps=2)  # the same data on one rank, in this process

    assert _load(multi / "world.json") == {"world_size": 2, "distributed_type": "DistributedType.MULTI_CPU"}
    assert _load(single / "world.json")["world_size"] == 1

    # The same rows reach the model, split as described.
    ranks = [_load(multi / f"batches_rank{r}.pt") for r in range(2)]
    alone = _load(single / "batches_rank0.pt")
    assert len(ranks[0]) == len(ranks[1]) == len(alone) == 2 * GA
    for b0, b1, b in zip(*ranks, alone, strict=True):
        assert strip_padding(b0) + strip_padding(b1) == strip_padding(b)
        assert _selected_tokens([b0], True) == _selected_tokens([b1], True)  # the precondition above
    rows = [row for batches in ranks for batch in batches for row in strip_padding(batch)]
    assert len(rows) == len(set(rows)) == 16  # every row once per epoch, no rank overlap

    # The logged metrics are those of one rank, reduced over both ranks' tokens.
    logs_multi = _training_logs(_load(multi / "log_history.json"))
    logs_single = _training_logs(_load(single / "log_history.json"))
    assert len(logs_multi) == len(logs_single) == 2
    for step, (got, want) in enumerate(zip(logs_multi, logs_single, strict=True)):
        got, want = _emoreg(got), _emoreg(want)
        assert got.keys() == want.keys() and any(k.endswith("/penalty") for k in got)
        window = slice(step * GA, (step + 1) * GA)
        tokens = sum(_selected_tokens(batches[window], True) for batches in ranks)
        for layer in LAYERS:
            assert got[f"emoreg/L{layer}/tokens"] == want[f"emoreg/L{layer}/tokens"] == tokens
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (step, key)

    # And the trained parameters agree to float32 precision.
    trained_multi, trained_single = _load(multi / "params.pt"), _load(single / "params.pt")
    initial = dict(make_tiny_llama().named_parameters())
    assert trained_multi.keys() == trained_single.keys() == initial.keys()
    assert any(not torch.equal(trained_single[n], initial[n]) for n in initial)
    for name in trained_single:
        torch.testing.assert_close(trained_multi[name], trained_single[name], rtol=1e-5, atol=1e-6, msg=name)


# --------------------------------------------------------------------------------------------- DeepSpeed


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_penalty_gradient_is_exact_and_metrics_are_reduced(tmp_path, stage):
    pytest.importorskip("deepspeed")
    config = _cpu_variant(f"deepspeed_zero{stage}.yaml", tmp_path)
    out = tmp_path / "run"
    _launch(lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                          "--main_process_port", str(port), str(SCRIPTS / "deepspeed_sft.py"),
                          "--out", str(out), "--ga", str(GA)],
            _env())

    # What really ran: DeepSpeed's ZeRO optimizer around the Trainer's torch SGD, no clipping, GA 2, 2 ranks.
    engine = _load(out / "engine.json")
    assert engine["engine"] == "DeepSpeedEngine" and engine["zero_stage"] == stage
    assert engine["inner_optimizer"] == "SGD" and engine["optimizer"].startswith("DeepSpeedZeroOptimizer")
    assert engine["world_size"] == 2 and engine["gradient_accumulation_steps"] == GA
    assert engine["gradient_clipping"] == 0.0

    base = make_tiny_llama()
    initial = _load(out / "initial.pt")
    assert all(torch.equal(initial[n], p) for n, p in base.named_parameters())
    vectors = make_bundle(base)

    ranks = [_load(out / f"batches_with_rank{r}.pt") for r in range(2)]
    for r, batches in enumerate(ranks):
        assert len(batches) == GA
        without = _load(out / f"batches_without_rank{r}.pt")
        assert [strip_padding(b) for b in batches] == [strip_padding(b) for b in without]
    assert set(strip_padding(ranks[0][0])).isdisjoint(strip_padding(ranks[1][0]))

    # DeepSpeed averages gradients over ranks: the expected extra descent is the mean over ranks of
    # coef * sum_i grad R_i / GA on each rank's own micro-batches.
    per_rank = [hand_penalty_gradient(base, batches, vectors, RULES, LAYERS, COEF, GA) for batches in ranks]
    expected = {n: (per_rank[0][n] + per_rank[1][n]) / 2 for n in per_rank[0]}
    with_emoreg, without_emoreg = _load(out / "params_with.pt"), _load(out / "params_without.pt")
    assert with_emoreg.keys() == initial.keys() and all(with_emoreg[n].shape == initial[n].shape for n in initial)
    # float32 training: the difference of two trained states is exact to a few ulps of the parameters (~1),
    # while a wrong rank average or GA scaling would be off by >= 1e-4 of the largest entry (checked below).
    assert_penalty_gradient(initial, with_emoreg, without_emoreg, expected, rtol=1e-4, atol_fraction=2e-5)
    scale = max(float(g.abs().max()) for g in expected.values())
    assert max(float((per_rank[0][n] - expected[n]).abs().max()) for n in expected) > 1e-3 * scale

    # Metrics are reduced over both ranks: one rank's log holds the sums of both ranks' tokens.
    logs = _training_logs(_load(out / "log_with.json"))
    assert len(logs) == 1
    logged = _emoreg(logs[0])
    want = hand_metrics(make_tiny_llama(), ranks[0] + ranks[1], vectors)
    for layer in LAYERS:
        assert logged[f"emoreg/L{layer}/tokens"] == sum(_selected_tokens(b, False) for b in ranks)
        assert _selected_tokens(ranks[0], False) < logged[f"emoreg/L{layer}/tokens"]
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert logged["emoreg/coef"] == COEF
    assert not _emoreg(_training_logs(_load(out / "log_without.json"))[0])
