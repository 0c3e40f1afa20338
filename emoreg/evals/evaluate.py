"""Evaluate a model reference: load the model, its bundle, judge and base model, and run the suites.

:func:`evaluate_model` takes any reference :func:`emoreg.models.checkpoint.load_for_eval` takes
(``"default"``, a hub id, a directory, a ``.gguf`` file, a PEFT adapter or a Trainer checkpoint) and calls
:func:`emoreg.evals.running.run_suites`. :func:`load_vectors` and :func:`resolve_judge` turn a bundle or judge
reference into the object (the eval callback uses them too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from emoreg.evals.judges.base import Judge
from emoreg.evals.preparation import Limit, SuiteSpec, resolve_suites, split_data_overrides, suite_limits
from emoreg.evals.running import run_suites
from emoreg.evals.suites.base import EvalContext
from emoreg.models.fingerprint import model_identity
from emoreg.models.generation import ReplyGenerationConfig
from emoreg.regularization.config import regularized_emotions
from emoreg.vectors.bundle import EmotionVectors

logger = logging.getLogger(__name__)


def evaluate_model(
    model: str,
    *,
    suites: str | Sequence[SuiteSpec],
    out_dir: str | Path | None,
    vectors: str | EmotionVectors | None = "default",
    base: str | None = None,
    data: Mapping[str, str | Path] | None = None,
    limit: Limit = None,
    seed: int = 0,
    judge: str | Judge = "rule",
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Load ``model`` (any reference :func:`emoreg.models.checkpoint.load_for_eval` takes) and run the suites.

    ``base``: the base model reference for comparisons (KL, concealment); ``None`` means the base the
    checkpoint records (adapter base or ``emoreg_train.json``), ``"none"`` means no base. ``limit``: items
    per data part, one number or ``{suite: n}`` (see :func:`~emoreg.evals.running.run_suites`). The bundle
    and judge are only loaded when a chosen suite needs them. For a checkpoint trained with emoreg, the
    regularised emotions (its ``emoreg_config.json``) become the concealment suite's target emotions.
    Writes ``out_dir/results.json`` and ``out_dir/records.jsonl`` and returns the results dict.
    """
    from emoreg.models.checkpoint import load_for_eval

    suite_list = resolve_suites(suites)
    split_data_overrides(data, suite_list)  # bad names or files fail before any model loads
    suite_limits(limit, suite_list, option="--limit")
    needs_vectors = any(s.requires_vectors for s in suite_list)
    needs_judge = any(s.uses_judge for s in suite_list)
    bundle = load_vectors(vectors) if needs_vectors else None
    judge_obj = resolve_judge(judge) if needs_judge else None
    loaded, tokenizer, info = load_for_eval(model, dtype, device)
    identity = model_identity(loaded)
    if bundle is not None:
        bundle.check_model(loaded, fingerprint=identity.fingerprint)
    base_ref = info.base if base is None else (None if str(base).lower() in ("", "none") else base)
    base_model: nn.Module | Callable[[], nn.Module] | None
    same = base_ref is not None and _ref_identity(base_ref) == _ref_identity(model)
    if base_ref is None:
        base_model = None
    elif same:
        base_model = loaded
    else:
        base_model = _lazy_loader(base_ref, dtype, device)
    ctx = EvalContext(
        model=loaded, tokenizer=tokenizer, vectors=bundle, judge=judge_obj, seed=seed, batch_size=batch_size,
        generation=ReplyGenerationConfig(max_new_tokens=max_new_tokens) if max_new_tokens else ReplyGenerationConfig(),
        base_model=base_model, target_emotions=_target_emotions(info.emoreg_config, bundle),
    )
    model_key = identity.content_hash
    base_key = None if base_ref is None else (model_key if same else _ref_identity(base_ref))
    model_info = {"ref": model, "kind": info.kind, "base": base_ref, "emoreg_config": info.emoreg_config,
                  "train_info": info.train_info, "adapter": info.adapter}
    vectors_ref = vectors if isinstance(vectors, str) else None
    return run_suites(ctx, suite_list, data=data, limit=limit, out_dir=out_dir, cache_dir=cache_dir,
                      model_key=model_key, use_cache=use_cache, progress=progress, base_key=base_key,
                      model_info=model_info, vectors_ref=vectors_ref, identity=identity)


def load_vectors(vectors: str | EmotionVectors | None) -> EmotionVectors | None:
    """A bundle from a reference (``"default"``, a path or hub id), a bundle as it is, or ``None``."""
    if vectors is None:
        return None
    return vectors if isinstance(vectors, EmotionVectors) else EmotionVectors.from_pretrained(vectors)


def resolve_judge(judge: str | Judge) -> Judge:
    """A judge from its spec (``"rule"``, ``"hf:MODEL"``, ``"openai:MODEL"``), or a :class:`Judge` as it is."""
    if isinstance(judge, Judge):
        return judge
    from emoreg.evals.judges import make_judge

    return make_judge(judge)


def _target_emotions(emoreg_config: Mapping[str, Any] | None, vectors: EmotionVectors | None) -> list[str] | None:
    """The emotions a checkpoint's regulariser acted on (its ``emoreg_config.json``), if the bundle has them all."""
    if vectors is None:
        return None
    names = regularized_emotions({"emoreg_config": emoreg_config})
    if not names:
        return None
    missing = [e for e in names if e not in vectors.emotions]
    if missing:
        logger.warning("emoreg eval: the checkpoint regularised %s, which the bundle lacks; concealment reads "
                       "the default emotions", missing)
        return None
    return names


def _lazy_loader(ref: str, dtype: str, device: str) -> Callable[[], nn.Module]:
    def load() -> nn.Module:
        from emoreg.models.checkpoint import load_for_eval

        logger.info("emoreg eval: loading the base model %s", ref)
        return load_for_eval(ref, dtype, device)[0]

    return load


def _ref_identity(ref: str) -> str:
    """A model reference as a stable identity: the absolute path for local paths, else the reference."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref
