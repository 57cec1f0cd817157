"""Registration schedules in physical terms: which spacing, which transform, which metric.

A schedule is a list of steps from coarse to fine.  Each step names the spacing it
wants (micrometers; the pyramid level closest to it is used), the transform it
estimates (rigid, affine, syn), the similarity metric and the multi-resolution
settings handed to antsRegistration for that step.  Every step starts from the
transform the steps before it found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scalereg.errors import InputError

Transform = Literal["rigid", "affine", "syn"]
Metric = Literal["mi", "cc", "mattes", "meansquares"]


class RegistrationStep(BaseModel):
    """One step of a coarse-to-fine registration (bounds: what any registration can use;
    a value past them is a typo or a hostile file, not a setting)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    spacing: float = Field(gt=0, le=1e6, description="target voxel spacing in micrometers; the closest pyramid level is used")
    transform: Transform = Field(description="transform estimated at this step")
    metric: Metric = Field("mi", description="similarity metric: mi (Mattes mutual information) or cc (neighbourhood correlation)")
    metric_radius: int = Field(4, ge=1, le=64, description="cc: neighbourhood radius in voxels; mi: unused")
    bins: int = Field(32, ge=8, le=1024, description="mi: histogram bins")
    sampling: float = Field(0.25, gt=0, le=1, description="fraction of voxels sampled by the metric (linear steps)")
    iterations: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(min_length=1, max_length=10, description="iterations per internal resolution, coarse to fine")
    shrink_factors: list[Annotated[int, Field(le=1024)]] = Field(min_length=1, max_length=10, description="internal shrink factor per resolution (of this step's level)")
    smoothing_sigmas: list[Annotated[float, Field(ge=0, le=1000)]] = Field(min_length=1, max_length=10, description="Gaussian sigma per resolution, in voxels of this step's level")
    gradient_step: float = Field(0.1, gt=0, description="optimizer step (rigid/affine: fraction; syn: gradient step)")
    flow_sigma: float = Field(3.0, ge=0, description="syn: update field smoothing (voxels)")
    total_sigma: float = Field(0.0, ge=0, description="syn: total field smoothing (voxels)")
    convergence_threshold: float = Field(1e-6, gt=0)
    convergence_window: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _lengths_agree(self) -> "RegistrationStep":
        lengths = {len(self.iterations), len(self.shrink_factors), len(self.smoothing_sigmas)}
        if len(lengths) != 1:
            raise ValueError("iterations, shrink_factors and smoothing_sigmas need the same length")
        if any(s < 1 for s in self.shrink_factors):
            raise ValueError("shrink_factors must be >= 1")
        return self

    @property
    def label(self) -> str:
        return f"{self.transform}-{self.spacing:g}um"


class RegistrationSchedule(BaseModel):
    """Steps from coarse to fine."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("custom", max_length=200)
    steps: list[RegistrationStep] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _coarse_to_fine(self) -> "RegistrationSchedule":
        spacings = [s.spacing for s in self.steps]
        if spacings != sorted(spacings, reverse=True):
            raise ValueError(f"steps must go from coarse to fine spacing, got {spacings}")
        order = {"rigid": 0, "affine": 1, "syn": 2}
        kinds = [order[s.transform] for s in self.steps]
        if kinds != sorted(kinds):
            raise ValueError("linear steps (rigid, affine) must come before syn steps")
        return self


def _linear(spacing: float, transform: Transform) -> RegistrationStep:
    return RegistrationStep(
        spacing=spacing,
        transform=transform,
        metric="mi",
        iterations=[1000, 500, 250],
        shrink_factors=[4, 2, 1],
        smoothing_sigmas=[2, 1, 0],
        gradient_step=0.1,
    )


def _syn(spacing: float, iterations: list[int], shrink: list[int], smooth: list[float], metric: Metric = "mattes") -> RegistrationStep:
    return RegistrationStep(
        spacing=spacing,
        transform="syn",
        metric=metric,
        metric_radius=2,
        iterations=iterations,
        shrink_factors=shrink,
        smoothing_sigmas=smooth,
        gradient_step=0.25,
        flow_sigma=3.0,
        total_sigma=0.0,
    )


def default_schedule(kind: str = "mouse") -> RegistrationSchedule:
    """The built-in schedules.

    mouse: a whole mouse brain (about 6 x 8 x 11 mm): rigid and affine at 200 and
    100 um, SyN at 100, 50 and 25 um.  SyN uses Mattes mutual information: on these
    machines neighbourhood correlation (cc) costs about three times as much per
    iteration; choose it in a schedule file where intensities are comparable.  human: a human brain (about 140 x 170 x 120 mm):
    rigid and affine at 4 and 2 mm, SyN at 2 mm, 1 mm and 500 um.
    """
    if kind == "mouse":
        steps = [
            _linear(200, "rigid"),
            _linear(100, "affine"),
            _syn(100, [100, 70], [2, 1], [1, 0]),
            _syn(50, [50], [1], [0]),
            _syn(25, [25], [1], [0]),
        ]
    elif kind == "human":
        steps = [
            _linear(4000, "rigid"),
            _linear(2000, "affine"),
            _syn(2000, [100, 70], [2, 1], [1, 0]),
            _syn(1000, [50], [1], [0]),
            _syn(500, [25], [1], [0]),
        ]
    else:
        raise InputError("schedule", f"unknown built-in schedule {kind!r}: use 'mouse', 'human' or a YAML/JSON file")
    return RegistrationSchedule(name=kind, steps=steps)


MAX_SCHEDULE_BYTES = 1 << 20
MAX_SCHEDULE_VALUES = 10_000


def _check_size(data: object, subject: str) -> None:
    """Refuse a document of more values than any schedule has: YAML aliases can make a
    small file stand for billions of them (a 'billion laughs'), which validating would
    walk one by one."""
    count, pending = 0, [data]
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_SCHEDULE_VALUES:
            raise InputError(subject, f"holds more than {MAX_SCHEDULE_VALUES} values: not a schedule")
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def load_schedule(source: str | Path | dict | RegistrationSchedule | None, default: str = "mouse") -> RegistrationSchedule:
    """A schedule from a built-in name, a YAML/JSON file, a dict, or an existing schedule."""
    if source is None:
        return default_schedule(default)
    if isinstance(source, RegistrationSchedule):
        return source
    subject = "schedule"
    if isinstance(source, (str, Path)) and str(source) in ("mouse", "human"):
        return default_schedule(str(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        subject = str(path)
        if not path.exists():
            raise InputError(subject, "no such schedule file (or use 'mouse' / 'human')")
        if path.is_dir():
            raise InputError(subject, "is a directory, not a schedule file")
        try:
            if path.stat().st_size > MAX_SCHEDULE_BYTES:
                raise InputError(subject, f"is {path.stat().st_size} bytes: not a schedule (at most {MAX_SCHEDULE_BYTES})")
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise InputError(subject, f"cannot read schedule: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        _check_size(data, subject)
    else:
        data = source
    try:
        return RegistrationSchedule.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(subject, f"invalid schedule at {where or 'top level'}: {first['msg']}") from None
