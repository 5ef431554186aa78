"""Example quantizer container entrypoint: a reference PTQ method on ``/input`` → ``/output``.

Reads the FP32 model (``model.json`` + ``model.safetensors``), the preprocessed calibration
volumes and ``track.json``; cuts the volumes into the sliding-window patches the harness feeds the
network. On a ``simulated`` track it runs ``--method`` (default RTN) at the track's bits (or
fewer, if asked) and writes a quantized checkpoint (``manifest.json`` + ``weights.safetensors``);
on a real-backend track it writes the standard INT8 scheme (8-bit per-channel RTN weights, static
per-tensor 8-bit activations calibrated by max|x|) as Q/DQ ONNX (``model.onnx``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors.torch import load_file

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.models.calibration import volume_patches
from harness.models.reference import load_reference_model
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--method", default="rtn", help="reference method (rtn, gptq, comq, …)")
    parser.add_argument("--wbits", type=int, help="weight bits (default: the track's maximum)")
    parser.add_argument("--abits", type=int, help="activation bits (default: the track's)")
    parser.add_argument("--granularity", default="per-channel")
    args = parser.parse_args()

    track = json.loads((args.input / "track.json").read_text())
    spec, model = load_reference_model(args.input)
    wbits = args.wbits or track["max_weight_bits"] or 8
    abits = args.abits or track["max_activation_bits"]
    scheme = QuantConfig(weight_bits=wbits, activation_bits=abits, granularity=args.granularity)
    calibration = [
        patch
        for path in sorted((args.input / "calibration").glob("*.safetensors"))
        for patch in volume_patches(load_file(path)["image"], spec)
    ]
    start = time.perf_counter()
    if track["output"]["format"] == "onnx-qdq":
        export_qdq(int8_model(model, calibration), spec, calibration, args.output / "model.onnx")
        print(
            f"int8 Q/DQ ONNX on {len(calibration)} patches in {time.perf_counter() - start:.1f} s"
        )
        return
    quantized = quantize_with(args.method, model, scheme, calibration)
    reference = {
        "model": track["model"],
        "weights_sha256": track["weights_sha256"],
        "method": args.method,
        "scheme": scheme.name,
        "calibration_cases": track["calibration_cases"],
    }
    save_checkpoint(quantized, args.output, reference)
    seconds = time.perf_counter() - start
    print(f"{args.method} {scheme.name} on {len(calibration)} patches in {seconds:.1f} s")


if __name__ == "__main__":
    main()
