"""The flows' parameters as pydantic models: what the Prefect UI renders as forms.

Every constraint that can be said in JSON Schema is said there (enums, bounds, regex
patterns), because that schema is all the Prefect server checks when a deployment
has ``enforce_parameter_schema: true``: a bad value from the UI or the API is
refused before a run exists.  The same models validate again, with scalereg's own
parsers, when a flow is called from Python (where plain dicts and, for an image, a
plain path string are coerced).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from flows.cluster import AUTO
from scalereg.errors import InputError
from scalereg.geometry import UNITS_IN_MICROMETERS, parse_unit
from scalereg.orientation import parse_orientation
from scalereg.redact import refuse_url_credentials
from scalereg.units import parse_bytes

SpaceUnit = Literal["nanometer", "micrometer", "millimeter", "centimeter", "meter"]
assert set(get_args(SpaceUnit)) == set(UNITS_IN_MICROMETERS), "SpaceUnit must list scalereg.geometry's units"
Interpolation = Literal["linear", "bspline", "nearest", "label"]

# Three letters, one from each of a/p, s/i, l/r in any order: the six orders spelled
# out, so that the server and the UI check it too (JSON Schema) without look-aheads.
# Lower case (Python callers' codes are lowered first); no [classes] in the patterns:
# the prefect CLI prints a refusal through rich, which would eat them as markup.
_AXIS_LETTERS = ("(a|p)", "(s|i)", "(l|r)")
ORIENTATION_PATTERN = "^(" + "|".join("".join(order) for order in itertools.permutations(_AXIS_LETTERS)) + ")$"
# What scalereg.units.parse_bytes reads: a number and an optional SI/IEC suffix.
# (an exponent of one or two digits: 1e400 bytes is no memory size)
SIZE_PATTERN = r"^\s*\d*\.?\d+((e|E)\d\d?)?\s*((k|K|m|M|g|G|t|T)((i|I)?(b|B))?|b|B)?\s*$"
BUDGET_PATTERN = rf"^auto$|{SIZE_PATTERN}"


def _pydantic_error(parse: Any) -> Any:
    """A scalereg parser as a pydantic validator: its InputError becomes a ValueError
    with the problem alone (pydantic's error already names the field)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        try:
            return parse(value)
        except InputError as error:
            raise ValueError(error.problem) from None

    return check


def _budget(value: str) -> str:
    if str(value).strip().lower() != AUTO:
        parse_bytes(value)
    return str(value).strip()


# The aliases carry constraints only; descriptions go on the fields (and, for a flow's
# own parameters, in its docstring's Args: section, which is where Prefect reads them).
# Constraints come before validators: after one, pydantic leaves them out of the schema.
Spacing = Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]
# Python callers get scalereg's message (the before-validator) rather than the pattern's.
Orientation = Annotated[str, Field(pattern=ORIENTATION_PATTERN), BeforeValidator(_pydantic_error(parse_orientation))]
Unit = Annotated[SpaceUnit, BeforeValidator(_pydantic_error(parse_unit))]
MemoryBudget = Annotated[str, Field(pattern=BUDGET_PATTERN), BeforeValidator(_pydantic_error(_budget))]
# A path or URI: never one with credentials in it (scalereg.redact); the server refuses
# it before a run (and its parameters) exists, Python callers get the masked URL.
# Without look-aheads (pydantic's regex engine has none): no scheme at all, or a colon
# that starts no "//", or a bucket URL whose bucket has no "@" or ":" (a secret may hold
# "/"), or a web URL whose authority has no "@".
NO_CREDENTIALS_PATTERN = (
    r"^(\w*|\w*[^\w:].*|\w*:([^/].*)?|\w*:/([^/].*)?|(s3|s3a|gs|gcs)://[^/@:]*(/.*)?|(https?|file)://[^/@]*(/.*)?)$"
)
Uri = Annotated[str, Field(min_length=1, pattern=NO_CREDENTIALS_PATTERN), BeforeValidator(_pydantic_error(lambda value: refuse_url_credentials(str(value), "uri")))]
Output = Uri
Cluster = Annotated[str, Field(min_length=1)]
Chunks = Annotated[int, Field(ge=8, le=1024)]
# A plain string, not Literal | str: the UI would offer two "str" tabs.
Schedule = Annotated[str, Field(pattern=r"^(mouse|human|.+\.(yaml|yml|json))$")]

SPACING = "Voxel size per array axis (z, y, x), in `unit`; overrides the file's"
UNIT = "Unit of `spacing` (an NGFF space unit); overrides the file's"
ORIENTATION = (
    "3-letter origin code per array axis (z, y, x), e.g. `asr`: index 0 of axis 0 is anterior, "
    "of axis 1 superior, of axis 2 right (brainglobe's convention); overrides the file's"
)
SCHEDULE = (
    "`mouse` (rigid 200 um, affine 100 um, SyN 100/50/25 um), `human` (rigid 4 mm, affine 2 mm, "
    "SyN 2/1/0.5 mm), or the path of a schedule file (.yaml, .yml or .json)"
)


class _Form(BaseModel):
    # An unknown key is a typo: refuse it instead of ignoring it.
    model_config = ConfigDict(extra="forbid")


class _Geometry(_Form):
    def overrides(self) -> dict[str, Any]:
        return {"spacing": self.spacing, "unit": self.unit, "orientation": self.orientation}

    def overrides_anything(self) -> bool:
        return any(value is not None for value in self.overrides().values())


class SourceGeometry(_Geometry):
    """What a source file may not say (a TIFF stores no spacing) or says wrongly."""

    spacing: Spacing | None = Field(None, description=SPACING)
    unit: Unit | None = Field(None, description=UNIT)
    orientation: Orientation | None = Field(None, description=ORIENTATION)


class ImageSource(_Geometry):
    """A volume to read, with optional geometry that overrides the file's."""

    # declared here, not inherited from SourceGeometry: the UI shows fields in this order
    uri: Uri = Field(
        title="URI",
        description="Local path or s3:// URI of a NIfTI, TIFF (file, directory or glob of slices), NRRD/MHA, Zarr or OME-Zarr volume",
    )
    spacing: Spacing | None = Field(None, description=SPACING)
    unit: Unit | None = Field(None, description=UNIT)
    orientation: Orientation | None = Field(None, description=ORIENTATION)

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        # From Python, a plain path is an image whose file says everything.
        return {"uri": str(value)} if isinstance(value, str) or hasattr(value, "__fspath__") else value


class RegistrationOptions(_Form):
    """How the moving volume is registered to the fixed one, coarse to fine."""

    schedule: Schedule = Field("mouse", description=SCHEDULE)
    memory_budget: MemoryBudget = Field(AUTO, description="Memory for one registration step: `auto` (3/4 of a worker's memory per thread) or a size such as `8GiB`")


class WarpOptions(_Form):
    """How the full-resolution moving volume is resampled onto the fixed grid."""

    interpolation: Interpolation = Field("linear", description="`linear`, `bspline` (cubic), `nearest`, or `label` (ANTs' genericLabel: label values preserved)")
    memory_budget: MemoryBudget = Field(AUTO, description="Memory per warp task (sets the tile size): `auto` (half a worker's memory per thread, at most 768MiB) or a size such as `512MiB`")


def parameters(model: type[BaseModel], subject: str, **values: Any) -> Any:
    """``model(**values)``, a validation error as an InputError naming ``subject``: how
    the CLI builds parameters, so that a bad value is one line and exit code 2."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())
        raise InputError(subject, problems) from None
