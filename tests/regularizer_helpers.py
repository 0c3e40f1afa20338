"""Shared builders for the regulariser tests: bundles with statistics and a by-hand penalty."""

from __future__ import annotations

import torch

from emoreg import EmotionVectors
from emoreg.models.fingerprint import fingerprint_model
from emoreg.vectors.tokens import real_token_rank


def make_bundle(model, emotions=("desperate", "calm", "hostile"), layers=(1, 2, 3), seed=0, d=64):
    """A random bundle that fits ``model``, with plausible statistics (percentiles sorted)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(layers), len(emotions), d, generator=generator)
    mean = torch.randn(len(layers), len(emotions), generator=generator)
    std = torch.rand(len(layers), len(emotions), generator=generator) + 0.5
    levels = torch.tensor([1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0])
    z = torch.tensor([-2.33, -1.64, -0.67, 0.0, 0.67, 1.64, 2.33])
    percentiles = mean[..., None] + std[..., None] * z
    return EmotionVectors.from_tensors(
        directions, list(emotions), list(layers), default_layer=layers[-1], stats_mean=mean, stats_std=std,
        stats_percentiles=percentiles, percentile_levels=levels.tolist(), model_fingerprint=fingerprint_model(model),
    )


def content_mask(attention_mask, sink_tokens=1):
    return real_token_rank(attention_mask) > sink_tokens


class LayerOutputs:
    """Record decoder layers' outputs (with their graph) during a forward: ``outputs[layer]``.

    Independent of emoreg's hooks; note that ``output_hidden_states`` would not do, because
    transformers applies the final norm to the last entry.
    """

    def __init__(self, model):
        from emoreg.models.layout import find_decoder_layers

        self.outputs = {}
        self._handles = [layer.register_forward_hook(self._hook(i))
                         for i, layer in enumerate(find_decoder_layers(model))]

    def _hook(self, index):
        def hook(module, args, output):
            self.outputs[index] = output[0] if isinstance(output, tuple) else output
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


def hand_penalty(layer_outputs, attention_mask, vectors, rules, layers, labels=None, selection="all"):
    """R computed by hand from recorded layer outputs: sum over layers and emotions of w * mean_t f(projection)."""
    total = 0.0
    mask = content_mask(attention_mask)
    if selection == "completion":
        mask = mask & (labels != -100)
    for layer in layers:
        h = layer_outputs[layer]
        selected = h[mask]
        stats = vectors.stats(layer)
        for emotion, spec in rules.items():
            i = vectors.emotion_index(emotion)
            dtype = torch.promote_types(selected.dtype, torch.float32)
            p = selected.to(dtype) @ vectors.direction(emotion, layer).to(selected.device, dtype)
            z = (p - stats.mean[i].to(dtype)) / stats.std[i].to(dtype)
            kind = spec.get("kind", "square")
            if kind == "square":
                u = z if spec.get("units", "raw") == "z" else p
                f = u**2
            elif kind == "hinge":
                threshold = spec.get("threshold")
                if threshold is None:
                    threshold = ((stats.percentile(95)[i] - stats.mean[i]) / stats.std[i]).to(dtype)
                f = torch.relu(z - threshold) ** 2
            else:
                f = torch.relu(z.abs() - spec.get("band_k", 2.0)) ** 2
            total = total + spec.get("weight", 1.0) * f.mean()
    return total
