"""Coarse-to-fine registration of OME-Zarr pyramids with ANTs."""

from scalereg.register.plan_registration import RegistrationPlan, plan_registration
from scalereg.register.register_pyramids import register_pyramids
from scalereg.register.schedule import RegistrationSchedule, RegistrationStep, default_schedule, load_schedule

__all__ = [
    "RegistrationPlan",
    "RegistrationSchedule",
    "RegistrationStep",
    "default_schedule",
    "load_schedule",
    "plan_registration",
    "register_pyramids",
]
