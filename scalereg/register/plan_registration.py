"""Before registering: which level each step uses, what it costs, where to stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scalereg.errors import InputError, MemoryBudgetError
from scalereg.omezarr.pyramid_layout import PyramidLayout
from scalereg.register.choose_level import choose_level, level_spacing_um
from scalereg.register.schedule import RegistrationSchedule, RegistrationStep
from scalereg.units import format_bytes

# Peak bytes per voxel of the fixed grid for antsRegistration on this kind of
# machine (shared/PITFALLS.md: SyN with iterations at full resolution about 400 B/vox
# on a real mouse brain; an affine step measured 38 B/vox here, rounded up).  SyN
# holds forward and inverse fields, their updates and the metric's images;
# neighbourhood correlation keeps more per voxel than mutual information.
# benchmarks/register.py measures them again.
BYTES_PER_VOXEL = {"rigid": 60, "affine": 60, "syn": 400, "syn-cc": 450}
# Reading the level and handing it to ANTs: float32 copies of fixed and moving.
IMAGE_BYTES_PER_VOXEL = 16


def step_bytes(step: RegistrationStep, fixed_voxels: int, moving_voxels: int) -> int:
    key = "syn-cc" if step.transform == "syn" and step.metric == "cc" else step.transform
    return int(fixed_voxels * (BYTES_PER_VOXEL[key] + IMAGE_BYTES_PER_VOXEL) + moving_voxels * IMAGE_BYTES_PER_VOXEL)


@dataclass(frozen=True)
class PlannedStep:
    index: int
    step: RegistrationStep
    fixed_level: int
    moving_level: int
    fixed_spacing_um: float
    moving_spacing_um: float
    fixed_shape: tuple[int, int, int]
    estimated_bytes: int

    @property
    def name(self) -> str:
        return f"{self.index + 1:02d}-{self.step.transform}-{self.fixed_spacing_um:g}um"


@dataclass(frozen=True)
class RegistrationPlan:
    schedule: RegistrationSchedule
    steps: tuple[PlannedStep, ...]
    memory_budget: int
    notes: tuple[str, ...] = ()
    stopped: str | None = None  # why the plan ends before the schedule does
    skipped: tuple[dict[str, Any], ...] = field(default=())

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "step": s.name,
                "transform": s.step.transform,
                "metric": s.step.metric,
                "fixed level": f"{s.fixed_level} ({s.fixed_spacing_um:g} um, {'x'.join(map(str, s.fixed_shape))})",
                "moving level": f"{s.moving_level} ({s.moving_spacing_um:g} um)",
                "memory": format_bytes(s.estimated_bytes),
            }
            for s in self.steps
        ]


def plan_registration(
    fixed: PyramidLayout,
    moving: PyramidLayout,
    schedule: RegistrationSchedule,
    memory_budget: int,
    fixed_name: str = "fixed",
    moving_name: str = "moving",
) -> RegistrationPlan:
    """Map every step of ``schedule`` onto pyramid levels and cut it at the memory budget.

    Steps whose closest level is one a previous step of the same kind already used at
    a finer target are dropped (nothing finer to gain); the first step that does not
    fit the budget ends the plan, and the plan says why.
    """
    for layout, name in ((fixed, fixed_name), (moving, moving_name)):
        if layout.geometry.orientation is None:
            raise InputError(name, "pyramid has no anatomical orientation; convert it with --orientation (e.g. asr)")
    notes: list[str] = []
    planned: list[PlannedStep] = []
    skipped: list[dict[str, Any]] = []
    stopped = None
    for index, step in enumerate(schedule.steps):
        fixed_level, fixed_note = choose_level(fixed, step.spacing, fixed_name)
        moving_level, moving_note = choose_level(moving, step.spacing, moving_name)
        previous = next((p for p in reversed(planned) if p.step.transform == step.transform), None)
        if previous is not None and previous.fixed_level == fixed_level and previous.moving_level == moving_level:
            reason = (
                f"step {index + 1} ({step.label}): no finer level than the one step {previous.index + 1} used "
                f"({level_spacing_um(fixed, fixed_level):g} um); skipped"
            )
            skipped.append({"step": index + 1, "label": step.label, "reason": reason})
            notes.append(reason)
            continue
        notes += [n for n in (fixed_note, moving_note) if n]
        estimate = step_bytes(step, fixed.levels[fixed_level].voxels, moving.levels[moving_level].voxels)
        if estimate > memory_budget:
            stopped = (
                f"stopped before step {index + 1} ({step.label}): it needs about {format_bytes(estimate)} "
                f"on a {'x'.join(map(str, fixed.levels[fixed_level].shape))} grid, over the budget of {format_bytes(memory_budget)}"
            )
            if not planned:
                raise MemoryBudgetError(
                    "memory-budget",
                    f"{format_bytes(memory_budget)} is too small even for the coarsest step ({step.label}: "
                    f"about {format_bytes(estimate)}); raise --memory-budget",
                )
            break
        planned.append(
            PlannedStep(
                index=index,
                step=step,
                fixed_level=fixed_level,
                moving_level=moving_level,
                fixed_spacing_um=level_spacing_um(fixed, fixed_level),
                moving_spacing_um=level_spacing_um(moving, moving_level),
                fixed_shape=fixed.levels[fixed_level].shape,
                estimated_bytes=estimate,
            )
        )
    if stopped:
        notes.append(stopped)
    return RegistrationPlan(
        schedule=schedule,
        steps=tuple(planned),
        memory_budget=memory_budget,
        notes=tuple(notes),
        stopped=stopped,
        skipped=tuple(skipped),
    )

