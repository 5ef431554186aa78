"""Reach per channel on a closed track: one outlier scale no longer widens the other channels'
reach. The attack of issue 24 -- channel 0 zeroed with a scale of 1e4, every other channel holding
−W -- passes the layer-wide RMS bound (its RMS step is the outlier's), and is refused on a
checkpoint and on an ONNX file (every weight DequantizeLinear) naming the layer, the channel and
the figures; −W without the outlier is refused naming the channel too; a legitimate per-channel
W4 GPTQ checkpoint is accepted. Every artifact is made here, from the tiny track's network."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.post_training import REACH_STEPS, max_grid_span, reach_in_steps
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import SubmissionError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import quantize_with
from reference_methods.simulator.scheme import QuantConfig, quantized_layers
from reference_methods.simulator.weight_format import to_rows

OUTLIER_SCALE = 1e4
"""The attack's scale on channel 0 (the issue's checkpoint #111)."""
FIRST_LAYER = "model.0.conv.unit0.conv"


@pytest.fixture(scope="module")
def tiny(tiny_track) -> LoadedTrack:
    dataset, model = tiny_track
    return LoadedTrack.open(TrackSpec(model_dir=model, dataset_dir=dataset, weight_bits=8))


def _on(track: LoadedTrack, **changes) -> LoadedTrack:
    return LoadedTrack(replace(track.spec, **changes), track.dataset, track.model_spec, track.model)


def _flip(codes: np.ndarray | torch.Tensor, scale, outlier: bool) -> None:
    """In place, channels along axis 0: channels 1.. hold −W; with ``outlier``, channel 0 is
    zeroed and its scale set to ``OUTLIER_SCALE``."""
    codes[1:] = -codes[1:]
    if outlier:
        codes[0] = 0
        scale[0] = OUTLIER_SCALE


def _attacked_checkpoint(track: LoadedTrack, path: Path, *, outlier: bool) -> Path:
    model = quantize_with(
        "rtn", track.model, QuantConfig.from_scheme("w8a8-per-channel"), track.calibration
    )
    layers = quantized_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            axis = layer.weight_channel_axis
            _flip(layer.weight_codes.movedim(axis, 0), layer.weight_scale.movedim(axis, 0), outlier)
    if outlier:  # the layer-wide bound (RMS deviation over RMS step) is fooled by the outlier
        fp32 = track.model.state_dict()
        for name, layer in layers.items():
            weight = layer.quantized_weight()
            target = to_rows(fp32[f"{name}.weight"], layer.weight_channel_axis)
            deviation = (weight.dequantize() - target).pow(2).mean().sqrt()
            step = weight.per_weight(weight.scale).pow(2).mean().sqrt()
            assert deviation / step < REACH_STEPS, name
    return save_checkpoint(model, path)


def test_an_outlier_scale_on_a_checkpoint_is_refused_naming_layer_channel_and_figures(
    tiny, tmp_path
):
    ckpt = _attacked_checkpoint(tiny, tmp_path / "ckpt", outlier=True)
    with pytest.raises(SubmissionError) as refused:
        evaluate_submission(tiny, Submission("checkpoint", checkpoint=ckpt))
    message = str(refused.value)
    assert f"layer '{FIRST_LAYER}', output channel 0: a scale of 1e+04 spans" in message
    assert "range of the channel's FP32 weights at 8 bits (max |w| = " in message
    assert "no post-training quantizer chooses a grid" in message


def test_weights_negated_channel_by_channel_on_a_checkpoint_are_refused_naming_the_channel(
    tiny, tmp_path
):
    ckpt = _attacked_checkpoint(tiny, tmp_path / "ckpt", outlier=False)
    with pytest.raises(
        SubmissionError,
        match=rf"layer '{FIRST_LAYER}', output channel [1-9]\d*: its weights are \d+\.\d "
        r"quantization steps \(RMS\) from the FP32 reference, in the channel's own step",
    ):
        evaluate_submission(tiny, Submission("checkpoint", checkpoint=ckpt))


def test_a_per_channel_w4_gptq_checkpoint_is_accepted_on_a_closed_track(tiny, tmp_path):
    config = QuantConfig.from_scheme("w4a16-per-channel")
    model = quantize_with("gptq", tiny.model, config, tiny.calibration)
    ckpt = save_checkpoint(model, tmp_path / "gptq")
    track = _on(tiny, weight_bits=4, division="closed")
    result = evaluate_submission(track, Submission("checkpoint", checkpoint=ckpt)).result
    assert result["submission"]["precision"]["division"] == "closed"
    loaded = track.backend.open(ckpt, track.checks()).network
    assert max(reach_in_steps(loaded, track.model).values()) < REACH_STEPS / 2


def _attacked_onnx(track: LoadedTrack, path: Path, *, outlier: bool) -> tuple[Path, int]:
    """The track's INT8 Q/DQ export with every weight DequantizeLinear attacked; the file and
    how many were."""
    export_qdq(
        int8_model(track.model, track.calibration), track.model_spec, track.calibration, path
    )
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    attacked = 0
    for node in model.graph.node:
        codes_init = initializers.get(node.input[0])
        if node.op_type != "DequantizeLinear" or codes_init is None or len(codes_init.dims) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        codes = numpy_helper.to_array(codes_init).copy()
        scale = numpy_helper.to_array(initializers[node.input[1]]).copy()
        _flip(np.moveaxis(codes, axis, 0), scale, outlier)
        codes_init.CopyFrom(numpy_helper.from_array(codes, codes_init.name))
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
        attacked += 1
    onnx.save(model, str(path))
    return path, attacked


def test_an_outlier_scale_on_every_weight_of_an_onnx_is_refused_naming_node_and_channel(
    tiny, tmp_path
):
    track = _on(tiny, backend="onnxruntime-cpu", activation_bits=8)
    path, attacked = _attacked_onnx(track, tmp_path / "attack.onnx", outlier=True)
    assert attacked == len(quantized_layers(int8_model(track.model, track.calibration)))
    with pytest.raises(
        SubmissionError,
        match=r"(Conv|ConvTranspose) node '[^']+', output channel 0: a scale of 1e\+04 spans "
        r"[\d.e+]+ times the range of the channel's FP32 weights at 8 bits \(max \|w\| = ",
    ):
        evaluate_submission(track, Submission("onnx", onnx=path))


def test_weights_negated_channel_by_channel_on_an_onnx_are_refused_naming_the_channel(
    tiny, tmp_path
):
    track = _on(tiny, backend="onnxruntime-cpu", activation_bits=8)
    path, _ = _attacked_onnx(track, tmp_path / "negated.onnx", outlier=False)
    # (the first two convs are parallel branches of one signature, paired by nearest weights: a
    # negated one may be compared with its twin's reference, so any channel may be named)
    with pytest.raises(
        SubmissionError,
        match=r"node '[^']+', output channel \d+: its weights are \d+\.\d quantization "
        r"steps \(RMS\) from the FP32 reference",
    ):
        evaluate_submission(track, Submission("onnx", onnx=path))


def test_the_grid_bound_admits_round_to_nearest_at_every_bit_width():
    """RTN's grid spans (2^b − 1)/(2^b − 2) of 2·max|w|: within the bound from 2 to 8 bits."""
    assert all((2**b - 1) / (2**b - 2) <= max_grid_span(b) for b in range(2, 9))


def test_a_low_rank_branch_larger_than_its_weight_is_refused_naming_the_layer(tiny, tmp_path):
    """A branch inflated 10× (the residual's grid widens with it) is no truncated SVD."""
    config = QuantConfig.from_scheme("w8a16-per-channel")
    model = quantize_with("svd", tiny.model, config, tiny.calibration, {"rank": 1})
    with torch.no_grad():
        quantized_layers(model)[FIRST_LAYER].lowrank_u.mul_(10)
    ckpt = save_checkpoint(model, tmp_path / "svd")
    with pytest.raises(
        SubmissionError,
        match=rf"layer '{FIRST_LAYER}': its low-rank branch \(Frobenius norm [\d.]+\) is larger "
        r"than the FP32 weight it approximates",
    ):
        evaluate_submission(tiny, Submission("checkpoint", checkpoint=ckpt))
