"""The eval runner and suite registry: data resolution, limits, cache reuse and resume, outputs, errors."""

from __future__ import annotations

import json

import pytest
import torch

from emoreg.errors import ConfigError
from emoreg.evals import suites as registry
from emoreg.evals.runner import evaluate_model, run_suites
from emoreg.evals.suites.base import EvalContext
from tests.eval_fakes import JudgedSuite, LengthJudge, NllSuite, VectorSuite, write_items
from tests.regularizer_helpers import make_bundle


@pytest.fixture
def data_files(tmp_path, monkeypatch):
    files = {"main": write_items(tmp_path / "data" / "main.jsonl", 6, "main"),
             "extra": write_items(tmp_path / "data" / "extra.jsonl", 3, "extra")}
    monkeypatch.setattr(NllSuite, "builtin_files", files)
    return files


def _ctx(model, tokenizer, **kwargs):
    return EvalContext(model=model, tokenizer=tokenizer, **kwargs)


def _run(model, tokenizer, tmp_path, suite=None, **kwargs):
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    kwargs.setdefault("progress", False)
    ctx_fields = {k: kwargs.pop(k) for k in ("seed", "batch_size") if k in kwargs}
    return run_suites(_ctx(model, tokenizer, **ctx_fields), [suite or NllSuite()], **kwargs)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert registry.SUITE_NAMES == ("probes", "sycophancy", "misalignment", "blackmail", "reward_hacking",
                                    "capability", "concealment", "expression", "reply_format")
    with pytest.raises(ConfigError, match="did you mean 'sycophancy'"):
        registry.get_suite("sycophancy_")
    assert registry.parse_suite_names("all") == list(registry.SUITE_NAMES)
    assert registry.parse_suite_names("capability, probes,capability") == ["capability", "probes"]
    with pytest.raises(ConfigError, match="did you mean 'probes'"):
        registry.parse_suite_names("probe")


def test_get_suite_imports_lazily(monkeypatch):
    monkeypatch.setitem(registry._CLASSES, "probes", ("tests.eval_fakes", "NllSuite"))
    assert isinstance(registry.get_suite("probes"), NllSuite)
    monkeypatch.setitem(registry._CLASSES, "probes", ("tests.no_such_module_xyz", "X"))
    with pytest.raises(ConfigError, match="not available"):
        registry.get_suite("probes")


# ---------------------------------------------------------------------------------------------- outputs
def test_results_records_and_limits(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    out = tmp_path / "out"
    results = _run(tiny_llama, tiny_tokenizer, tmp_path, limit=2, out_dir=out, seed=0)
    entry = results["suites"]["fake_nll"]
    assert entry["n_records"] == 4  # 2 per part
    assert entry["data"]["main"]["n_items"] == 2 and entry["data"]["main"]["n_total"] == 6
    assert entry["data"]["extra"]["sha256"] and entry["cache"] == "miss"
    assert set(entry["metrics"]) == {"mean_nll", "extra_share"}
    assert entry["metrics"]["extra_share"]["value"] == 0.5
    assert results["model"]["content_hash"] and results["model"]["fingerprint"]["hidden_size"] == 64
    assert results["vectors"] is None and results["judge"] is None and results["limit"] == 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["suites"]["fake_nll"]["cache_key"] == entry["cache_key"]
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(r["suite"] == "fake_nll" for r in lines)
    # each score is the model's real NLL of the item's text
    from emoreg.evals.scoring import mean_token_nll

    text = {f"main-{i}": f"main number {i} says hello {'!' * i}" for i in range(6)}
    first = next(r for r in lines if r["part"] == "main")
    assert first["score"] == pytest.approx(mean_token_nll(tiny_llama, tiny_tokenizer, [text[first["id"]]])[0])
    # the same seed picks the same subset; another seed (usually) another
    again = _run(tiny_llama, tiny_tokenizer, tmp_path, limit=2, use_cache=False)
    assert again["suites"]["fake_nll"]["metrics"] == entry["metrics"]


def test_complete_cache_entry_is_reused_without_running(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    first = _run(tiny_llama, tiny_tokenizer, tmp_path)
    suite = NllSuite()
    second = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=suite)
    assert suite.ran_ids == []
    assert second["suites"]["fake_nll"]["cache"] == "hit"
    assert second["suites"]["fake_nll"]["metrics"] == first["suites"]["fake_nll"]["metrics"]


def test_interrupted_run_resumes_where_it_stopped(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    with pytest.raises(RuntimeError, match="simulated failure"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=NllSuite(fail_after=4))
    resumed_suite = NllSuite()
    resumed = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=resumed_suite, out_dir=tmp_path / "a")
    assert resumed["suites"]["fake_nll"]["cache"] == "resumed"
    assert resumed_suite.ran_ids == ["main-4", "main-5", "extra-0", "extra-1", "extra-2"]
    fresh = _run(tiny_llama, tiny_tokenizer, tmp_path, use_cache=False, out_dir=tmp_path / "b")
    assert resumed["suites"]["fake_nll"]["metrics"] == fresh["suites"]["fake_nll"]["metrics"]
    assert (tmp_path / "a" / "records.jsonl").read_text() == (tmp_path / "b" / "records.jsonl").read_text()


def test_cache_key_follows_weights_data_limit_seed_and_settings(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    def key(model=tiny_llama, **kwargs):
        return _run(model, tiny_tokenizer, tmp_path, use_cache=False, **kwargs)["suites"]["fake_nll"]["cache_key"]

    base = key()
    assert key() == base
    assert key(limit=2) != base
    assert key(limit=2, seed=1) != key(limit=2)
    assert key(batch_size=2) != base  # the suite's settings
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert key() != base
    changed = key()
    write_items(data_files["extra"], 4, "extra")
    assert key() != changed


def test_model_modes_are_restored(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    tiny_llama.train()
    tiny_llama.model.layers[0].eval()  # a mixed state must come back exactly
    seen = []
    suite = NllSuite(on_run=lambda ctx: seen.append(ctx.model.training))
    _run(tiny_llama, tiny_tokenizer, tmp_path, suite=suite, use_cache=False)
    assert seen == [False]
    assert tiny_llama.training and not tiny_llama.model.layers[0].training and tiny_llama.model.layers[1].training


# ---------------------------------------------------------------------------------------------- bad input
def test_data_overrides(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    mine = write_items(tmp_path / "mine.jsonl", 2, "mine")
    results = _run(tiny_llama, tiny_tokenizer, tmp_path, data={"fake_nll": str(mine)}, use_cache=False)
    assert results["suites"]["fake_nll"]["data"]["main"]["path"] == str(mine)
    assert results["suites"]["fake_nll"]["n_records"] == 5
    results = _run(tiny_llama, tiny_tokenizer, tmp_path, data={"fake_nll.extra": str(mine)}, use_cache=False)
    assert results["suites"]["fake_nll"]["data"]["extra"]["path"] == str(mine)
    with pytest.raises(ConfigError, match="no data part 'other'; its parts are main, extra"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, data={"fake_nll.other": str(mine)})
    with pytest.raises(ConfigError, match="no such file"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, data={"fake_nll": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ConfigError, match="'capability' is not being run"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, data={"capability": str(mine)})
    with pytest.raises(ConfigError, match="did you mean 'capability'"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, data={"capabilty": str(mine)})


def test_duplicate_ids_across_parts_are_refused(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    clash = write_items(tmp_path / "clash.jsonl", 2, "main")
    with pytest.raises(ConfigError, match="'main-0' appears twice"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, data={"fake_nll.extra": str(clash)})


def test_missing_bundle_or_judge_is_a_config_error(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    with pytest.raises(ConfigError, match="needs an emotion-vector bundle"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=VectorSuite())
    with pytest.raises(ConfigError, match="needs a judge"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=JudgedSuite())
    bundle = make_bundle(tiny_llama)
    results = run_suites(_ctx(tiny_llama, tiny_tokenizer, vectors=bundle, judge=LengthJudge()),
                         [VectorSuite(), JudgedSuite()], cache_dir=tmp_path / "cache", progress=False)
    assert results["vectors"]["layer"] == bundle.default_layer and results["vectors"]["fingerprint"]
    assert set(results["vectors"]["stats"]["std"]) == set(bundle.emotions)
    assert results["judge"] == {"name": "length"} and results["suites"]["fake_judged"]["judge"] == "length"
    assert results["suites"]["fake_vectors"]["judge"] is None


class _BadSuite(NllSuite):
    name = "fake_bad"

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def run(self, ctx, items):
        if self.mode == "twice":
            yield {"id": items[0]["id"], "part": "main", "score": 0.0}
        for item in items[:-1]:
            yield {"id": item["id"], "part": item["part"], "score": 0.0}


@pytest.mark.parametrize("mode, message", [("twice", "two records for item 'main-0'"),
                                           ("short", "no record for 1 item")])
def test_suite_bugs_are_reported_and_leave_the_entry_incomplete(tiny_llama, tiny_tokenizer, tmp_path, data_files,
                                                                mode, message):
    with pytest.raises(RuntimeError, match=message):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=_BadSuite(mode))
    assert not list((tmp_path / "cache").glob("*/metrics.json"))


class _NoteSuite(NllSuite):
    """Yields a note record (an id that is no item's) besides the item records, like capability without a base."""

    name = "fake_note"

    def run(self, ctx, items):
        yield {"id": "fake_note/note", "note": f"{len(items)} items left"}
        yield from super().run(ctx, items)

    def summarize(self, records, ctx):
        return super().summarize([r for r in records if "score" in r], ctx)


def test_extra_records_are_kept_and_replaced_on_resume(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    failing = _NoteSuite(fail_after=2)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=failing)
    results = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=_NoteSuite(), out_dir=tmp_path / "out")
    assert results["suites"]["fake_note"]["n_records"] == 10
    lines = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert lines[-1] == {"id": "fake_note/note", "note": "7 items left", "suite": "fake_note"}
    assert [r["id"] for r in lines[:2]] == ["main-0", "main-1"]
    hit = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=_NoteSuite())
    assert hit["suites"]["fake_note"]["cache"] == "hit" and hit["suites"]["fake_note"]["n_records"] == 10


def test_bad_limit(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    with pytest.raises(ConfigError, match="limit must be a positive"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, limit=0)


def test_limit_per_suite_errors_name_the_suite(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    with pytest.raises(ConfigError, match=r"limit names suite\(s\) 'fake_pooled' that are not being run "
                                          r"\(running: fake_nll\)"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, limit={"fake_nll": 2, "fake_pooled": 2})
    with pytest.raises(ConfigError, match="limit must be a positive number of items per data part, got 0 for "
                                          "suite 'fake_nll'"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, limit={"fake_nll": 0})
    with pytest.raises(ConfigError, match=r"--limit names suite\(s\) 'nope'"):  # checked before the model loads
        evaluate_model(str(tmp_path / "no-model"), suites=[NllSuite()], out_dir=None, limit={"nope": 1})


# ---------------------------------------------------------------------------------------------- evaluate_model
def test_evaluate_model_from_a_directory(tiny_llama, tiny_tokenizer, tmp_path, data_files):
    model_dir = tmp_path / "model"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    results = evaluate_model(str(model_dir), suites=[NllSuite()], out_dir=tmp_path / "out", base=str(model_dir),
                             cache_dir=tmp_path / "cache", progress=False, limit=2)
    assert results["model"]["ref"] == str(model_dir) and results["model"]["kind"] == "directory"
    assert results["model"]["base_key"] == results["model"]["content_hash"]  # the base is the model itself
    direct = _run(tiny_llama, tiny_tokenizer, tmp_path, limit=2, use_cache=False)
    got, want = results["suites"]["fake_nll"]["metrics"], direct["suites"]["fake_nll"]["metrics"]
    assert got["mean_nll"]["value"] == pytest.approx(want["mean_nll"]["value"], rel=1e-6)
    assert (tmp_path / "out" / "results.json").is_file()
    with pytest.raises(ConfigError, match="no data part"):  # checked before the model loads
        evaluate_model(str(tmp_path / "no-model"), suites=[NllSuite()], out_dir=None,
                       data={"fake_nll.x": str(data_files["main"])})


class _PooledSuite(NllSuite):
    """Reads all items together and yields one summary record per data part (ids of its own)."""

    name = "fake_pooled"
    records_per_item = False

    def run(self, ctx, items):
        if self.on_run is not None:
            self.on_run(ctx)
        by_part: dict[str, list[float]] = {}
        for count, item in enumerate(items):
            if self.fail_after is not None and count >= self.fail_after:
                raise RuntimeError("simulated failure")
            self.ran_ids.append(item["id"])
            by_part.setdefault(item["part"], []).append(float(len(item["text"])))
        ctx.advance(len(items))
        for part, lengths in by_part.items():
            yield {"id": f"pooled/{part}", "score": sum(lengths) / len(lengths), "n": len(lengths)}

    def summarize(self, records, ctx):
        return {f"mean_length/{r['id']}": {"value": r["score"], "ci": [r["score"], r["score"]], "n": r["n"]}
                for r in records}


def test_pooled_suites_run_whole_reuse_complete_entries_and_rerun_unfinished(tiny_llama, tiny_tokenizer, tmp_path,
                                                                            data_files, monkeypatch):
    monkeypatch.setattr(_PooledSuite, "builtin_files", data_files)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _run(tiny_llama, tiny_tokenizer, tmp_path, suite=_PooledSuite(fail_after=4))
    suite = _PooledSuite()
    first = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=suite, out_dir=tmp_path / "a")
    assert len(suite.ran_ids) == 9  # nothing to resume item by item: every item read again
    assert first["suites"]["fake_pooled"]["cache"] == "miss"
    assert set(first["suites"]["fake_pooled"]["metrics"]) == {"mean_length/pooled/main", "mean_length/pooled/extra"}
    again = _PooledSuite()
    second = _run(tiny_llama, tiny_tokenizer, tmp_path, suite=again, out_dir=tmp_path / "b")
    assert again.ran_ids == [] and second["suites"]["fake_pooled"]["cache"] == "hit"
    assert (tmp_path / "a" / "records.jsonl").read_text() == (tmp_path / "b" / "records.jsonl").read_text()


def test_limit_per_suite_is_one_run_per_suite_in_one_call(tiny_llama, tiny_tokenizer, tmp_path, data_files,
                                                           monkeypatch):
    """``{suite: n}``: each suite gets its own limit, cache key, cached entry and records, as if run alone."""
    monkeypatch.setattr(_PooledSuite, "builtin_files", data_files)
    alone = {"fake_nll": _run(tiny_llama, tiny_tokenizer, tmp_path, limit=2, out_dir=tmp_path / "nll"),
             "fake_pooled": _run(tiny_llama, tiny_tokenizer, tmp_path, suite=_PooledSuite(),
                                 out_dir=tmp_path / "pooled")}
    suites = [NllSuite(), _PooledSuite()]
    results = run_suites(_ctx(tiny_llama, tiny_tokenizer), suites, limit={"fake_nll": 2}, out_dir=tmp_path / "both",
                         cache_dir=tmp_path / "cache", progress=False)
    assert results["limit"] == {"fake_nll": 2, "fake_pooled": None}
    assert suites[0].ran_ids == suites[1].ran_ids == []  # both cached entries are reused
    for name, single in alone.items():
        assert results["suites"][name]["cache"] == "hit"
        for field in ("cache_key", "metrics", "n_records", "data"):
            assert results["suites"][name][field] == single["suites"][name][field]
    assert results["suites"]["fake_nll"]["n_records"] == 4
    in_order = [(tmp_path / name / "records.jsonl").read_text() for name in ("nll", "pooled")]
    assert (tmp_path / "both" / "records.jsonl").read_text() == "".join(in_order)


def test_evaluate_model_fingerprints_the_model_once(tiny_llama, tiny_tokenizer, tmp_path, data_files, monkeypatch):
    from emoreg.models import fingerprint as fingerprint_module
    from emoreg.vectors import bundle as bundle_module

    model_dir = tmp_path / "model"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    vectors = make_bundle(tiny_llama)
    calls = []
    original = fingerprint_module.fingerprint_model

    def counting(model):
        calls.append(type(model).__name__)
        return original(model)

    monkeypatch.setattr(fingerprint_module, "fingerprint_model", counting)
    monkeypatch.setattr(bundle_module, "fingerprint_model", counting)
    results = evaluate_model(str(model_dir), suites=[VectorSuite()], out_dir=None, vectors=vectors, base="none",
                             cache_dir=tmp_path / "cache", progress=False, limit=1)
    assert calls == ["LlamaForCausalLM"]
    assert results["model"]["fingerprint"]["hidden_size"] == 64


def test_check_model_uses_a_given_fingerprint(tiny_llama):
    import dataclasses

    from emoreg.errors import BundleError
    from emoreg.models.fingerprint import fingerprint_model

    vectors = make_bundle(tiny_llama)
    fingerprint = fingerprint_model(tiny_llama)
    vectors.check_model(tiny_llama, fingerprint=fingerprint)
    with pytest.raises(BundleError, match="hidden size 64"):
        vectors.check_model(tiny_llama, fingerprint=dataclasses.replace(fingerprint, hidden_size=32))
