"""Warnings that need more than one layer: they read a finished Plan.

(Warnings about a single layer, such as a stride that leaves rows unused, come from the
layer's own shape rule.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .layers.base import LayerSpec

if TYPE_CHECKING:
    from .plan import LayerPlan, Plan

Warning = tuple[tuple, str, str, "str | None"]  # (path, code, message, hint)


def lint(plan: Plan, has_train: bool) -> list[Warning]:
    found: list[Warning] = []
    _conv_bias_before_batchnorm(plan.layers, found)
    if plan.valid and plan.layers:
        last = plan.layers[-1]
        gives = last.spec.outputs
        loss = plan.loss or plan.default_loss
        if has_train and loss == "cross_entropy" and gives is not None:
            found.append((
                last.path, "SC302",
                f"the last layer is {last.type}, but cross_entropy already applies log-softmax",
                f"remove {last.name}: train on the raw scores (logits)"
                + (", or use loss: nll_loss" if gives == "log_probabilities" else ""),
            ))
    return found


# Per layer kind, read once: whether it may add a per-channel bias (its bias_before_norm is
# its own), and whether it cancels one (cancels_channel_bias).
_KINDS: dict[type, tuple[bool, bool]] = {}


def _kind(kind: type) -> tuple[bool, bool]:
    facts = _KINDS[kind] = (kind.bias_before_norm is not LayerSpec.bias_before_norm,
                            kind.cancels_channel_bias)
    return facts


def _conv_bias_before_batchnorm(layers: list[LayerPlan], found: list[Warning]) -> None:
    """SC303 for each layer whose bias the next one cancels: those of this list, then those
    inside its blocks, in order."""
    biased = None  # the layer before, where it adds a bias that a norm would cancel
    blocks = []
    for layer in layers:
        spec = layer.spec
        adds, cancels = _KINDS.get(type(spec)) or _kind(type(spec))
        if cancels and biased is not None:
            found.append((
                biased.path, "SC303",
                f"the bias of {biased.name} is cancelled by {layer.name}, which subtracts the mean",
                "set bias: false on the conv",
            ))
        biased = layer if adds and spec.bias_before_norm() else None
        if layer.branches:
            blocks.append(layer)
    for layer in blocks:
        for branch in layer.branches:
            _conv_bias_before_batchnorm(branch, found)
