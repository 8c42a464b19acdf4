"""Warnings that need more than one layer: they read a finished Plan.

(Warnings about a single layer, such as a stride that leaves rows unused, come from the
layer's own shape rule.)"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

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


def _conv_bias_before_batchnorm(layers: list[LayerPlan], found: list[Warning]) -> None:
    for layer, after in pairwise(layers):
        if layer.spec.bias_before_norm() and after.spec.cancels_channel_bias:
            found.append((
                layer.path, "SC303",
                f"the bias of {layer.name} is cancelled by {after.name}, which subtracts the mean",
                "set bias: false on the conv",
            ))
    for layer in layers:
        for branch in layer.branches or []:
            _conv_bias_before_batchnorm(branch, found)
