"""Serve scalereg's flows without a work pool or worker: this process polls the Prefect
API and runs the flows' runs in subprocesses (stop it with Ctrl-C).

    export PREFECT_API_URL=http://127.0.0.1:4200/api        # bash infra/prefect/start.sh
    export SCALEREG_OUTPUT_ROOTS=/data/registrations        # where UI runs may write
    python deployments/serve.py [--sweep-inputs DIR --sweep-fixed ATLAS --sweep-output DIR]

The same deployments as prefect.yaml (register-brain, convert-volume, register-volume,
warp-volume, sweep-inputs), with their parameter schemas enforced; the sweep gets its
15-minute schedule when its inputs, reference and output are given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prefect import serve

from flows.convert_volume import convert_volume
from flows.register_brain import register_brain
from flows.register_volume import register_volume
from flows.sweep_inputs import sweep_inputs
from flows.warp_volume import warp_volume
from scalereg.output_roots import ENVIRONMENT_VARIABLE

SWEEP_CRON = "*/15 * * * *"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-inputs", help="directory or s3:// prefix the sweep looks for new volumes in")
    parser.add_argument("--sweep-fixed", help="the reference volume every swept volume is registered to")
    parser.add_argument("--sweep-output", help="where the sweep's registrations go (under the output roots)")
    args = parser.parse_args()
    if not os.environ.get(ENVIRONMENT_VARIABLE):
        # runs from a deployment must write under configured roots; default to one here
        os.environ[ENVIRONMENT_VARIABLE] = str(Path("scalereg-outputs").resolve())
        print(f"{ENVIRONMENT_VARIABLE} not set: runs write under {os.environ[ENVIRONMENT_VARIABLE]}")
    deployments = [
        flow.to_deployment(name=flow.name, tags=["scalereg"], enforce_parameter_schema=True)
        for flow in (register_brain, convert_volume, register_volume, warp_volume)
    ]
    sweep = {"inputs": args.sweep_inputs, "fixed": {"uri": args.sweep_fixed}, "output": args.sweep_output}
    if all((args.sweep_inputs, args.sweep_fixed, args.sweep_output)):
        deployments.append(sweep_inputs.to_deployment(name="sweep-inputs", tags=["scalereg"], enforce_parameter_schema=True, parameters=sweep, cron=SWEEP_CRON))
    else:
        deployments.append(sweep_inputs.to_deployment(name="sweep-inputs", tags=["scalereg"], enforce_parameter_schema=True))
    serve(*deployments)


if __name__ == "__main__":
    main()
