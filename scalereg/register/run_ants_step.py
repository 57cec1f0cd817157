"""Run one step of a schedule with antsRegistration, started from the transforms so far."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from scalereg.register.ants_image import ants
from scalereg.register.schedule import RegistrationStep

_TRANSFORM = {"rigid": "Rigid[{step}]", "affine": "Affine[{step}]", "syn": "SyN[{step},{flow},{total}]"}


@dataclass(frozen=True)
class StepTransforms:
    """What one antsRegistration step estimated.

    ``affine`` is the whole linear part so far (outputs are collapsed, and linear
    initial transforms fold into it); ``warp``/``inverse_warp`` are the displacement
    field this step added (None for linear steps).  Earlier warps are not repeated:
    the caller keeps the chain.
    """

    affine: str
    warp: str | None
    inverse_warp: str | None
    warped: str  # moving resampled onto the step's fixed grid by the whole chain


def _metric(step: RegistrationStep, fixed: str, moving: str) -> str:
    if step.metric == "cc":
        return f"CC[{fixed},{moving},1,{step.metric_radius}]"
    if step.metric == "meansquares":
        return f"MeanSquares[{fixed},{moving},1,0]"
    name = "MI" if step.metric == "mi" else "Mattes"
    sampling = f",Regular,{step.sampling}" if step.transform != "syn" else ""
    return f"{name}[{fixed},{moving},1,{step.bins}{sampling}]"


def ants_registration_args(
    step: RegistrationStep,
    fixed: str,
    moving: str,
    prefix: str,
    initial: list[str] | None,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    seed: int = 20251124,
) -> list[str]:
    """The antsRegistration command line for ``step`` (files in, files out).

    ``initial`` are transform files in apply_transforms order (the first is applied
    first to fixed-space points); without them the images' intensity centres of mass
    are aligned.  Outputs are collapsed, so the step writes the whole transform from
    fixed to moving: one affine and, for SyN, one warp composed with the earlier ones.
    """
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--collapse-output-transforms", "1",
        "--output", f"[{prefix},{prefix}warped.nii.gz]",
        "--interpolation", "Linear",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--use-histogram-matching", "0",
        "--random-seed", str(seed),
        "--verbose", "0",
    ]  # fmt: skip
    if initial:
        # same order as antsApplyTransforms / ants.apply_transforms lists
        for transform in initial:
            args += ["--initial-moving-transform", transform]
    else:
        args += ["--initial-moving-transform", f"[{fixed},{moving},1]"]
    template = _TRANSFORM[step.transform]
    args += [
        "--transform", template.format(step=step.gradient_step, flow=step.flow_sigma, total=step.total_sigma),
        "--metric", _metric(step, fixed, moving),
        "--convergence", f"[{'x'.join(map(str, step.iterations))},{step.convergence_threshold},{step.convergence_window}]",
        "--shrink-factors", "x".join(map(str, step.shrink_factors)),
        "--smoothing-sigmas", "x".join(f"{s:g}" for s in step.smoothing_sigmas) + "vox",
    ]  # fmt: skip
    if fixed_mask or moving_mask:
        args += ["--masks", f"[{fixed_mask or 'NULL'},{moving_mask or 'NULL'}]"]
    return args


def run_ants_step(
    step: RegistrationStep,
    fixed: "ants.ANTsImage",
    moving: "ants.ANTsImage",
    workdir: str | Path,
    initial: list[str] | None = None,
    fixed_mask: "ants.ANTsImage | None" = None,
    moving_mask: "ants.ANTsImage | None" = None,
) -> StepTransforms:
    """Register ``moving`` to ``fixed`` for one step; returns the files it wrote in ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"fixed": workdir / "fixed.nii", "moving": workdir / "moving.nii"}
    ants.image_write(fixed, str(paths["fixed"]))
    ants.image_write(moving, str(paths["moving"]))
    masks = {}
    for name, mask in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if mask is not None:
            masks[name] = str(workdir / f"{name}.nii.gz")
            ants.image_write(mask, masks[name])
    prefix = str(workdir / "step_")
    for stale in glob.glob(prefix + "*"):
        os.remove(stale)
    args = ants_registration_args(step, str(paths["fixed"]), str(paths["moving"]), prefix, initial, **masks)
    ants.registration(fixed=args, moving=None)  # raw antsRegistration; raises on failure
    for path in paths.values():
        path.unlink()
    # Written files are numbered in composite order: 0 the affine, then initial warps
    # copied through, then the new warp, the only one with an inverse.
    affines = sorted(glob.glob(prefix + "[0-9]GenericAffine.mat"))
    inverse = sorted(glob.glob(prefix + "[0-9]InverseWarp.nii.gz"))
    if len(affines) != 1 or len(inverse) > 1:
        raise RuntimeError(f"unexpected antsRegistration outputs in {workdir}: {sorted(os.listdir(workdir))}")
    new_warp = inverse[0].replace("InverseWarp", "Warp") if inverse else None
    for copied in glob.glob(prefix + "[0-9]Warp.nii.gz"):
        if copied != new_warp:
            os.remove(copied)  # an initial warp written back: the chain already has it
    return StepTransforms(affine=affines[0], warp=new_warp, inverse_warp=inverse[0] if inverse else None, warped=prefix + "warped.nii.gz")
