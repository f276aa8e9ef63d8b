"""ONNX emitters for EncoderBlock and DecoderBlock, composed from the layer emitters.

The residual path is a `ResidualStream`: a sub-layer's output and its last bias are kept
pending until the next LayerNorm reads the sum `x + (y + b)` (two Adds and a standard
LayerNormalization). onnxruntime's fused `com.microsoft.SkipLayerNormalization` computes the
same in one node but its CPU kernel (onnxruntime 1.31) was 3.5x slower than Add + Add +
LayerNormalization (16 x 128 x 256: 4.0 ms against 1.2 ms per call, one thread, interleaved),
about 6% of a whole forward pass, so neither form emits it. RMS norms are standard ops too:
`SimplifiedLayerNormalization` / `SkipSimplifiedLayerNormalization` (onnxruntime 1.32,
`export.native.layers.RMS_NORM_OPERATOR`) measured no faster on a Llama-shaped model
(`bench/llama_attention.py`).
"""

import keras

from export.native import layers
from export.native.attention import emit_key_value_cache
from export.native.layers import emit_attention, emit_feed_forward, emit_norm, emit_skip_rms_norm
from export.native.registry import register
from keras_transformer.layers import DecoderBlock, EncoderBlock


class ResidualStream:
    """The running hidden state `x` of a stack of blocks, with a pending `x + y + b`.

    `fused` selects the fused feed-forward activation (`BiasGelu`) of the blocks on this stream.
    """

    def __init__(self, g, x, fused):
        self.g, self.x, self.fused = g, x, fused
        self.pending = None

    def add(self, y, bias):
        """Queue `x + y (+ bias)`; emitted by the next `norm` or `value`."""
        if self.pending is not None:
            self.value()
        self.pending = (y, bias)

    def value(self):
        """The current hidden state (materializing a pending sum with Add nodes)."""
        if self.pending is not None:
            y, bias = self.pending
            self.pending = None
            if bias is not None:
                y = self.g.op("Add", y, bias, name="bias")
            self.x = self.g.op("Add", self.x, y, name="residual")
        return self.x

    def _skip_norm(self, layer):
        return self.fused and layers.RMS_NORM_OPERATOR == "skip" and isinstance(layer, keras.layers.RMSNormalization)

    def norm(self, layer, replace):
        """LayerNorm of the current state with Keras `layer`'s weights.

        Args:
            replace: post-norm: the normalized value becomes the state (`x = LN(x + y)`);
                pre-norm: the state stays the un-normalized sum and the normalized value is
                only returned (the input of the next sub-layer).
        """
        with self.g.scoped(layer.name):
            if self.pending is not None and self._skip_norm(layer):
                (y, bias), self.pending = self.pending, None
                normed, self.x = emit_skip_rms_norm(self.g, layer, self.x, y, bias)
            else:
                normed = emit_norm(self.g, layer, self.value(), fused=self.fused)
        if replace:
            self.x = normed
        return normed


def _sublayer(stream, block, norm, run):
    """One residual sub-layer: `run(h) -> (y, bias, *extras)`; returns the extras."""
    if block.norm_first:
        y, bias, *extras = run(stream.norm(norm, replace=False))
        stream.add(y, bias)
    else:
        y, bias, *extras = run(stream.value())
        stream.add(y, bias)
        stream.norm(norm, replace=True)
    return extras


def _feed_forward(g, stream, block, fused):
    def run(h):
        with g.scoped("feed_forward"):
            return emit_feed_forward(g, block.feed_forward, h, fused=fused)

    _sublayer(stream, block, block.feed_forward_norm, run)


@register(EncoderBlock, computes=("call", "residual"))
def emit_encoder_block(g, block, stream, kind, masks, positions=None):
    """EncoderBlock at inference on `stream`; `masks` are the `emit_attention` mask arguments,
    `positions` the int64 positions of a rotary self-attention."""
    with g.scoped(block.name):

        def attend(h):
            with g.scoped("self_attention"):
                return emit_attention(g, block.self_attention, h, kind=kind, positions=positions, **masks)

        _sublayer(stream, block, block.self_attention_norm, attend)
        _feed_forward(g, stream, block, stream.fused)


@register(DecoderBlock, computes=("call", "residual"))
def emit_decoder_block(g, block, stream, kind, self_masks, memory=None, cross_masks=None, past=None,
                       memory_is_projected=False, positions=None):
    """DecoderBlock at inference on `stream`.

    Args:
        self_masks, cross_masks: `emit_attention` mask arguments of the two attentions.
        memory: encoder output `(B, S, d)`, or with `memory_is_projected` the cross-attention
            `(keys, values)` computed once per input.
        past: `(past_key, past_value)` of the self-attention; the block then returns
            `(present_key, present_value)`.
        positions: int64 `(T,)` or `(B, T)` positions of a rotary self-attention.
    """
    with g.scoped(block.name):

        def self_attend(h):
            with g.scoped("self_attention"):
                return emit_attention(g, block.self_attention, h, kind=kind, past=past,
                                      positions=positions, **self_masks)

        present = _sublayer(stream, block, block.self_attention_norm, self_attend)
        if block.cross_attention:

            def cross_attend(h):
                with g.scoped("cross_attention"):
                    return emit_attention(
                        g, block.cross_attention_layer, h, kind=kind, memory=memory,
                        memory_is_projected=memory_is_projected, **(cross_masks or {}),
                    )

            _sublayer(stream, block, block.cross_attention_norm, cross_attend)
        _feed_forward(g, stream, block, stream.fused)
    return tuple(present) if past is not None else None


def emit_cross_attention_cache(g, block, memory):
    """The block's cross-attention keys and values, `(B, kv_heads, S, d_k)` each, bias included."""
    with g.scoped(block.name), g.scoped("cross_attention"):
        return emit_key_value_cache(g, block.cross_attention_layer, memory)
