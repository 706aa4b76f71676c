"""Optimizer state for resumable training, without pickle: tensors for safetensors plus JSON parameter groups."""

from __future__ import annotations

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten ``optimizer.state_dict()``: per-parameter state as ``"{param_id}.{name}"`` tensors (scalars become
    0-d tensors) and the parameter groups as JSON-ready dicts (tuples as lists)."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            tensors[f"{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of :func:`optimizer_tensors` (an ``"_empty"`` placeholder tensor is ignored)."""
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key == "_empty":
            continue
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = value
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    optimizer.load_state_dict({"state": per_param, "param_groups": fixed})
