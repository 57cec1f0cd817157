"""Flow parameter models and output roots: what the UI form, the server and Python accept."""

from __future__ import annotations

import itertools
import os

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.parameters import BUDGET_PATTERN, ORIENTATION_PATTERN, ImageSource, RegistrationOptions, WarpOptions
from scalereg.errors import InputError
from scalereg.orientation import parse_orientation
from scalereg.output_roots import confine_output, output_roots
from scalereg.units import parse_bytes


def _accepts(parse, value) -> bool:
    try:
        parse(value)
    except InputError:
        return False
    return True


def test_the_schema_patterns_accept_exactly_what_scalereg_parses():
    # the server and the UI check the JSON Schema only: it must agree with the parsers
    import re

    for code in map("".join, itertools.product("apsilrx", repeat=3)):
        assert bool(re.match(ORIENTATION_PATTERN, code)) == _accepts(parse_orientation, code), code
    assert "[" not in ORIENTATION_PATTERN + BUDGET_PATTERN  # the prefect CLI would print them as markup
    for size in ["8GiB", "512 MB", "1.5e9", "100", "2k", "3 kib", "auto", "lots", "8 GB2", "-1GiB", "1e", "GiB", ""]:
        pattern = bool(re.match(BUDGET_PATTERN, size))
        assert pattern == (size == "auto" or _accepts(parse_bytes, size)), size


def test_the_register_brain_schema_refuses_bad_values_and_accepts_good_ones():
    from flows.register_brain import register_brain

    schema = parameter_schema(register_brain).model_dump_for_openapi()
    good = {"fixed": {"uri": "atlas.nii.gz"}, "moving": {"uri": "s.tif", "spacing": [4, 1.8, 1.8], "unit": "micrometer", "orientation": "asr"}, "out": "run1"}
    # the function the Prefect server checks a deployment's parameters with
    assert validate(good, schema) == []
    assert validate({**good, "registration": {"schedule": "/lab/rat.yaml", "memory_budget": "8 GiB"}}, schema) == []
    bad = [
        {**good, "moving": {**good["moving"], "spacing": [4, 0, 1]}},
        {**good, "moving": {**good["moving"], "spacing": [4, 1]}},
        {**good, "moving": {**good["moving"], "orientation": "aap"}},
        {**good, "moving": {**good["moving"], "unit": "furlong"}},
        {**good, "moving": {**good["moving"], "spacng": [1, 1, 1]}},
        {**good, "warp": {"interpolation": "cubic"}},
        {**good, "registration": {"memory_budget": "lots"}},
        {**good, "registration": {"schedule": "rat"}},  # neither built in nor a schedule file
        {**good, "chunks": 4},
        {**good, "out": ""},
        {"fixed": good["fixed"], "out": "run1"},
    ]
    for parameters in bad:
        assert validate(parameters, schema), parameters


def test_models_coerce_what_python_callers_give():
    assert ImageSource.model_validate("brain.nii.gz").uri == "brain.nii.gz"
    image = ImageSource(uri="s.tif", spacing=[4, 1.8, 1.8], unit="um", orientation="ASR")
    assert (image.unit, image.orientation, image.overrides_anything()) == ("micrometer", "asr", True)
    assert not ImageSource(uri="x").overrides_anything()
    assert RegistrationOptions(schedule="/lab/schedules/rat.yaml").schedule == "/lab/schedules/rat.yaml"
    with pytest.raises(ValueError, match="contradictory orientation"):
        ImageSource(uri="x", orientation="aap")
    with pytest.raises(ValueError, match="must be positive"):
        WarpOptions(memory_budget="0MB")


def test_outputs_are_confined_to_the_roots(tmp_path):
    root = tmp_path / "outputs"
    (root / "lab").mkdir(parents=True)
    os.symlink(tmp_path, root / "lab" / "escape")
    roots = output_roots(f"{root},s3://bucket/registrations")
    assert confine_output(str(root / "lab" / "run1"), roots) == str(root / "lab" / "run1")
    assert confine_output("lab/run2", roots) == str(root / "lab" / "run2")  # relative: under the first local root
    assert confine_output("s3://bucket/registrations/b1/", roots) == "s3://bucket/registrations/b1"
    refused = [
        str(root / ".." / "elsewhere"),
        "lab/../../elsewhere",
        str(root / "lab" / "escape" / "x"),  # a symlink out of the root
        "/etc/scalereg",
        str(root),  # the root itself
        str(tmp_path / "outputs-sibling"),  # a prefix of the name is not a parent
        "s3://bucket/registrations/../other",
        "s3://bucket/registrations-other/x",
        "s3://other/registrations/x",
        "gs://bucket/registrations/x",
    ]
    for path in refused:
        with pytest.raises(InputError) as error:
            confine_output(path, roots)
        assert "\n" not in str(error.value)
    assert confine_output("/anywhere/at/all", []) == "/anywhere/at/all"  # no roots: unconfined


def test_output_roots_must_be_absolute():
    with pytest.raises(InputError, match="SCALEREG_OUTPUT_ROOTS"):
        output_roots("relative/dir")


def test_cli_run_refuses_a_bad_orientation_in_one_line(tmp_path, capsys):
    from scalereg.cli import main

    code = main(["run", "--fixed", str(tmp_path / "f.tif"), "--moving", str(tmp_path / "m.tif"), "--out", str(tmp_path / "o"), "--moving-orientation", "aap"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--moving: orientation: contradictory orientation code 'aap'" in err and "Value error" not in err
