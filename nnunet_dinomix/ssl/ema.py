"""Exponential moving average (mean teacher) of a network's weights."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, max_decay: float) -> float:
    """Warm-up decay ``min(1 - 1/(step + 1), max_decay)``: early teachers follow the student closely
    instead of averaging in the random initialisation (Tarvainen & Valpola, 2017)."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode. It never receives gradients. Hooks attached to the student
    (feature taps) are not copied: the teacher is a plain network."""
    # the hook tables are replaced by empty ones in the copy, not copied and cleared: a tap may hold the autograd
    # output of the student's latest forward, which cannot be deep-copied
    memo = {}
    for module in student.modules():
        for name in _HOOK_TABLES:
            table = getattr(module, name, None)
            if table is not None:
                memo[id(table)] = type(table)()
    teacher = copy.deepcopy(student, memo)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for parameters; buffers are copied.

    Floating-point buffers (e.g. BatchNorm running statistics) are copied rather than averaged, as the
    student's statistics are the ones that match its current weights; integer buffers are copied too.
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, [s.detach() for s in s_params], 1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)
