"""Frozen teachers behind one interface, one module per kind of file or library.

Kinds: `cdkd` (cdkd checkpoints), `timm`, `torchvision`, `python` (a user's class by `factory`), `export`
(a torch.export `.pt2`) and `torchscript`. Each registers a loader in `KINDS`; `load_teacher` picks it by the
spec's `kind`, and `validate_teachers` checks that an ensemble agrees on input shape and class count.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TeacherError, first_line
from ..tasks import task_of
from . import exported, native, python_class, timm_models, torchscript, torchvision_models  # noqa: F401 (kinds)
from .base import KINDS, InputNorm, Loaded, Teacher, TeacherOutput, state_hash, teacher_name
from .native import CHECKPOINT_FORMAT, load_cdkd, save_classifier


def load_teacher(spec: Any, warn: bool = True) -> Teacher:
    """Build a frozen Teacher from a `TeacherSpec`; any failure is one TeacherError line naming the teacher."""
    name = teacher_name(spec)
    if spec.kind not in KINDS:
        raise TeacherError(f"teacher {name!r}: unknown kind {spec.kind!r} (choose {', '.join(KINDS.names())})")
    try:
        loaded: Loaded = KINDS.get(spec.kind)(spec)
    except TeacherError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a library raises while building or loading
        raise TeacherError(f"teacher {name!r} ({spec.kind}, {spec.path}): {first_line(e)}") from None
    if spec.input_shape:
        loaded.input_shape, loaded.strict_shape = tuple(spec.input_shape), True
    if not getattr(loaded.model, "has_pooled", True) and "feature loss" not in loaded.dropped:
        loaded.dropped = ("feature loss",)
    teacher = Teacher(loaded, name, spec.path)
    if warn and teacher.dropped:
        print(f"[cdkd] warning: teacher {name!r} ({spec.kind}) gives logits only here: "
              f"{', '.join(teacher.dropped)} {'is' if len(teacher.dropped) == 1 else 'are'} off for it")
    return teacher


def input_space(teachers: list[Teacher], space: InputNorm | None = None) -> InputNorm | None:
    """The generator's input space: `space` if given, else the first declared teacher normalisation (so a
    homogeneous ensemble needs no input maps); every teacher then maps from it to its own normalisation."""
    if space is None:
        space = next((t.norm for t in teachers if t.norm is not None), None)
    for t in teachers:
        t.set_input_space(space)
    return space


def resolve_shape(teachers: list[Teacher], input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The run's input shape: the given one, else the first file-declared one, else a library default;
    a teacher whose file declares another shape is an error naming both."""
    strict = [t for t in teachers if t.input_shape is not None and t.strict_shape]
    weak = [t for t in teachers if t.input_shape is not None and not t.strict_shape]
    if input_shape is not None:
        shape, ref = tuple(input_shape), "the run's input_shape"
    elif strict:
        shape, ref = tuple(strict[0].input_shape), f"teacher {strict[0].name!r}"
    elif weak:
        shape, ref = tuple(weak[0].input_shape), f"teacher {weak[0].name!r} (library default)"
    else:
        raise TeacherError(f"teacher {teachers[0].name!r} does not declare its input shape; set input_shape: "
                           "[C, H, W] in the config (or teachers[].input_shape)")
    for t in strict:
        if tuple(t.input_shape) != shape:
            raise TeacherError(f"teacher {t.name!r} expects input {tuple(t.input_shape)} but {ref} is {shape}")
    return shape


def validate_teachers(teachers: list[Teacher], input_shape: tuple[int, ...] | None = None,
                      space: InputNorm | None = None) -> tuple[int, tuple[int, ...]]:
    """Check that all teachers take one input shape, do one task and predict one class count; set their input
    space and `task` (from the shape of their logits: `cdkd.tasks.task_of`).

    Returns (num_classes, input_shape). Raises TeacherError naming the teachers that disagree.
    """
    if not teachers:
        raise TeacherError("no teachers given")
    shape = resolve_shape(teachers, input_shape)
    input_space(teachers, space)
    seen: dict[str, str] = {}
    for t in teachers:
        if t.state_hash in seen:
            print(f"[cdkd] warning: teachers {seen[t.state_hash]!r} and {t.name!r} have identical weights "
                  "(the same teacher listed twice?)")
        seen.setdefault(t.state_hash, t.name)
    classes: list[tuple[int, str]] = []
    with torch.no_grad():
        for t in teachers:
            try:
                out = t(torch.zeros(2, *shape))
            except Exception as e:  # noqa: BLE001
                raise TeacherError(f"teacher {t.name!r} fails on input {tuple(shape)}: {first_line(e)}") from None
            task = task_of(out.logits)
            if task is None:
                got = type(out.logits).__name__ if not isinstance(out.logits, torch.Tensor) \
                    else f"a tensor of shape {tuple(out.logits.shape)}"
                raise TeacherError(f"teacher {t.name!r} returns {got}; a teacher must return logits (B, C) "
                                   "(classification) or (B, C, H, W) (segmentation)")
            t.task = task.name
            if t.task != teachers[0].task:
                raise TeacherError(f"teacher {t.name!r} is a {t.task} model but {teachers[0].name!r} is a "
                                   f"{teachers[0].task} model")
            classes.append((out.logits.shape[1], t.name))
            if classes[-1][0] != classes[0][0]:
                raise TeacherError(f"teacher {t.name!r} predicts {classes[-1][0]} classes but {classes[0][1]!r} "
                                   f"predicts {classes[0][0]}")
    return classes[0][0], shape


__all__ = ["CHECKPOINT_FORMAT", "KINDS", "InputNorm", "Teacher", "TeacherOutput", "input_space", "load_cdkd",
           "load_teacher", "resolve_shape", "save_classifier", "state_hash", "validate_teachers"]
