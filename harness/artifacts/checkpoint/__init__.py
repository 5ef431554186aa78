"""Quantized checkpoint format: a directory with ``manifest.json`` and ``weights.safetensors``.

The safetensors file holds the complete ``state_dict()`` of the quantized model: for a quantized
layer ``<name>.weight_codes`` (integers), ``<name>.weight_scale``, ``<name>.weight_zero_point``
(integers, affine weights only), ``<name>.weight_group_ids`` (integers, permuted layouts only),
``<name>.bias`` (if any), ``<name>.act_scale`` (static activation scales only),
``<name>.act_zero_point`` (integers in [0, 2^b - 1], static asymmetric activations only), and a
method's extras (see ``reference_methods.simulator.layer_extras``): ``<name>.input_scale`` (explicit
SmoothQuant input scales), ``<name>.lowrank_u`` and ``<name>.lowrank_v`` (SVD low-rank branch);
every other parameter/buffer under its state_dict name. An input rotation is a manifest flag only. A
weight is w_hat = scale[g] * (code + zero[g]) with the group g of each weight given by the
granularity (see ``reference_methods.simulator.weight_format``). The manifest declares each
quantized layer (see ``LayerSpec``):

    {"format": "medquant-quantized-checkpoint", "version": 2, "reference": {...},
     "layers": {name: {kind, weight_bits, weight_granularity, activation_bits,
                       activation_granularity, activation_scale,
                       [weight_group_size], [weight_groups], [weight_zero_point],
                       [input_scale], [input_rotation], [lowrank_rank],
                       [activation_zero_point]}}}

``activation_zero_point: true`` puts a layer's input on the asymmetric (unsigned, zero-point)
grid, x_hat = s (clamp(round(x / s) + z, 0, 2^b - 1) - z), instead of the symmetric one.

Version 2 (written) stores the integer buffers of the quantized layers packed at their bits --
codes at the layer's weight bits, zero-points at the fewest bits that span them, group ids at
ceil(log2 G) bits and, when every row shares them, one id per input column -- described in the
weights file's metadata (``packing``), so the bytes on disk are the bits reported. Version 1
(read) stores every tensor as the model holds it (int8 codes, int32 zero-points and group ids).

Modules: ``storage`` (the two files, read and written), ``packing`` (version 2's bit packing),
``checks`` (tensor checks shared by loader and verifier), ``save``, ``load`` (onto the reference
architecture, never unpickling) and ``describe`` (precision and stored size, read from the
tensors).
"""
