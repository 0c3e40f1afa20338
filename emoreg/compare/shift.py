"""The fine-tuning shift of a checkpoint along each emotion vector (persona-vectors style).

The probes suite records, per scenario, the raw projection of the hidden state on every bundle direction at
the last prompt token (``start``: where the assistant turn begins) and the mean projection over the generated
tokens (``response``). For a checkpoint against its base model the shift of emotion ``e`` is

    shift_e = mean over scenarios i present in both runs of (reading_e(checkpoint, i) - reading_e(base, i))

with scenarios paired by ``id`` and a 95% interval on the paired differences (t interval, see
:func:`emoreg.evals.statistics.mean`). Dividing by the bundle's base-model standard deviation of that
emotion's projection on neutral text at the probe layer gives the shift in z units, comparable across
emotions, layers and models. Scenarios found in only one run are listed, never dropped silently; for
``response``, scenarios whose reply has no token in either run are listed as ``no_response`` and left out
of that reading.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emoreg.errors import ConfigError, DataFormatError
from emoreg.evals.statistics import mean

READINGS = ("start", "response")
PROBES_SUITE = "probes"


@dataclass
class ReadingShift:
    """The shift of one reading (``start`` or ``response``) for every emotion.

    Attributes:
        raw: ``{emotion: metric}`` in raw projection units (metric = ``{"value", "ci", "n"}``).
        z: ``{emotion: metric}`` divided by the bundle's neutral std, or ``None`` without statistics.
        n_paired: number of scenarios that entered the means.
        no_response: ids left out because a reply had no token (``response`` only).
    """

    raw: dict[str, dict[str, Any]]
    z: dict[str, dict[str, Any]] | None
    n_paired: int
    no_response: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "z": self.z, "n_paired": self.n_paired, "no_response": self.no_response}


@dataclass
class ShiftReport:
    """A checkpoint's shift against its base on the probe scenarios.

    Attributes:
        layer: the bundle layer the probes read.
        emotions: the emotions read in both runs, in the base run's order.
        readings: ``{"start": ReadingShift, "response": ReadingShift}``.
        only_in_base, only_in_checkpoint: scenario ids found in one run only (not paired).
        std: the neutral std used for z units (``{emotion: std}``), or ``None``.
    """

    layer: int
    emotions: list[str]
    readings: dict[str, ReadingShift]
    only_in_base: list[str]
    only_in_checkpoint: list[str]
    std: dict[str, float] | None

    def metric(self, emotion: str, reading: str = "start", units: str = "z") -> dict[str, Any] | None:
        """One emotion's shift metric; ``None`` when z units were asked for but no std is known."""
        table = self.readings[reading].z if units == "z" else self.readings[reading].raw
        return None if table is None else table.get(emotion)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "emotions": list(self.emotions),
            "readings": {name: reading.to_dict() for name, reading in self.readings.items()},
            "only_in_base": list(self.only_in_base),
            "only_in_checkpoint": list(self.only_in_checkpoint),
            "std": self.std,
        }


def probe_records(records: Iterable[Mapping[str, Any]], *, source: str = "records") -> dict[str, Mapping[str, Any]]:
    """The probes suite's records by ``id`` (records carrying ``suite`` of another suite are skipped).

    Raises :class:`DataFormatError` on a duplicate id or a probes record without ``id``, ``layer`` or ``start``.
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for index, record in enumerate(records):
        if record.get("suite", PROBES_SUITE) != PROBES_SUITE:
            continue
        where = f"{source}: probes record {index + 1}"
        for name in ("id", "layer", "start"):
            if name not in record:
                raise DataFormatError(f"{where}: missing field {name!r} (expected the probes record format)")
        item_id = str(record["id"])
        if item_id in by_id:
            raise DataFormatError(f"{where}: field 'id': duplicate probes id {item_id!r}")
        by_id[item_id] = record
    return by_id


def neutral_std(vectors: Any, layer: int) -> dict[str, float]:
    """``{emotion: std}`` of the base model's projections on neutral text at ``layer`` (from the bundle)."""
    if not vectors.has_stats:
        raise ConfigError("the vector bundle has no base-model statistics, so shifts cannot be given in z units")
    if layer not in vectors.layers:
        raise ConfigError(f"the probes read layer {layer}, which the vector bundle does not have "
                          f"(bundle layers {vectors.layers[0]}-{vectors.layers[-1]})")
    std = vectors.stats(layer).std
    return {emotion: float(std[i]) for i, emotion in enumerate(vectors.emotions)}


def compute_shift(base_records: Iterable[Mapping[str, Any]], checkpoint_records: Iterable[Mapping[str, Any]], *,
                  std: Mapping[str, float] | None = None, base_source: str = "base",
                  checkpoint_source: str = "checkpoint") -> ShiftReport:
    """The checkpoint's shift against the base for every emotion, on ``start`` and ``response``.

    Args:
        base_records, checkpoint_records: records of both runs (all suites, or probes only).
        std: ``{emotion: neutral std}`` for z units (see :func:`neutral_std`); ``None`` gives raw units only.
        base_source, checkpoint_source: names used in error messages (e.g. the records file).

    Raises:
        DataFormatError: no probes records on a side, the runs read different layers, or a record lacks an
            emotion the other run has.
    """
    base = probe_records(base_records, source=base_source)
    checkpoint = probe_records(checkpoint_records, source=checkpoint_source)
    for side, found in ((base_source, base), (checkpoint_source, checkpoint)):
        if not found:
            raise DataFormatError(f"{side}: no probes records (run the probes suite to compute shifts)")
    layer = _common_layer(base, checkpoint, base_source, checkpoint_source)
    paired = [item_id for item_id in base if item_id in checkpoint]
    only_in_base = [item_id for item_id in base if item_id not in checkpoint]
    only_in_checkpoint = [item_id for item_id in checkpoint if item_id not in base]
    emotions = _emotions(base, checkpoint, base_source, checkpoint_source)
    if std is not None:
        missing = [e for e in emotions if e not in std]
        if missing:
            raise ConfigError(f"no neutral std for emotions {missing} (the bundle does not match the probes records)")
        bad = [e for e in emotions if not (std[e] > 0 and math.isfinite(std[e]))]
        if bad:
            raise ConfigError(f"neutral std is not a positive number for emotions {bad}")
    readings = {}
    for reading in READINGS:
        ids, no_response = _usable_ids(reading, paired, base, checkpoint)
        differences = {
            e: [_reading(checkpoint[i], reading, e, checkpoint_source) - _reading(base[i], reading, e, base_source)
                for i in ids]
            for e in emotions
        }
        raw = {e: mean(values) for e, values in differences.items()}
        z = None if std is None else {e: _scaled(raw[e], std[e]) for e in emotions}
        readings[reading] = ReadingShift(raw=raw, z=z, n_paired=len(ids), no_response=no_response)
    return ShiftReport(layer=layer, emotions=emotions, readings=readings, only_in_base=only_in_base,
                       only_in_checkpoint=only_in_checkpoint,
                       std=None if std is None else {e: std[e] for e in emotions})


def _common_layer(base: Mapping[str, Mapping[str, Any]], checkpoint: Mapping[str, Mapping[str, Any]],
                  base_source: str, checkpoint_source: str) -> int:
    layers = {(base_source, int(r["layer"])) for r in base.values()}
    layers |= {(checkpoint_source, int(r["layer"])) for r in checkpoint.values()}
    distinct = sorted({layer for _, layer in layers})
    if len(distinct) != 1:
        where = ", ".join(f"{side} layer {layer}" for side, layer in sorted(layers))
        raise DataFormatError(f"the probes records read different layers ({where}); shifts need one layer")
    return distinct[0]


def _emotions(base: Mapping[str, Mapping[str, Any]], checkpoint: Mapping[str, Mapping[str, Any]],
              base_source: str, checkpoint_source: str) -> list[str]:
    """The emotions of the first base record; every record of both runs must have the same ones."""
    first = next(iter(base.values()))
    emotions = list(_mapping(first, "start", base_source))
    expected = set(emotions)
    for side, found in ((base_source, base), (checkpoint_source, checkpoint)):
        for item_id, record in found.items():
            names = set(_mapping(record, "start", side))
            if names != expected:
                raise DataFormatError(
                    f"{side}: probes record {item_id!r}: field 'start' has emotions {sorted(names)}, expected "
                    f"{sorted(expected)} (both runs must use the same vector bundle)"
                )
    return emotions


def _usable_ids(reading: str, paired: Sequence[str], base: Mapping[str, Mapping[str, Any]],
                checkpoint: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    if reading == "start":
        return list(paired), []
    usable, empty = [], []
    for item_id in paired:
        if _has_response(base[item_id]) and _has_response(checkpoint[item_id]):
            usable.append(item_id)
        else:
            empty.append(item_id)
    return usable, empty


def _has_response(record: Mapping[str, Any]) -> bool:
    """A reply with at least one token and a ``response`` reading (an empty reply has no mean)."""
    response = record.get("response")
    return bool(response) and int(record.get("response_tokens", 1)) > 0


def _mapping(record: Mapping[str, Any], reading: str, source: str) -> Mapping[str, Any]:
    value = record.get(reading)
    if not isinstance(value, Mapping):
        raise DataFormatError(f"{source}: probes record {record.get('id')!r}: field {reading!r} must be a mapping "
                              f"{{emotion: projection}}, got {type(value).__name__}")
    return value


def _reading(record: Mapping[str, Any], reading: str, emotion: str, source: str) -> float:
    values = _mapping(record, reading, source)
    if emotion not in values:
        raise DataFormatError(f"{source}: probes record {record.get('id')!r}: field '{reading}' has no "
                              f"emotion {emotion!r}")
    value = values[emotion]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(f"{source}: probes record {record.get('id')!r}: field '{reading}.{emotion}' must be "
                              f"a finite number, got {value!r}")
    return float(value)


def _scaled(metric: Mapping[str, Any], scale: float) -> dict[str, Any]:
    return {"value": metric["value"] / scale, "ci": [bound / scale for bound in metric["ci"]], "n": metric["n"]}
