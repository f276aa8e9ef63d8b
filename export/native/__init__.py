"""Native ONNX export: graphs written directly from keras_transformer layers and their weights.

Instead of tracing TensorFlow ops through tf2onnx, each known layer emits its ONNX nodes from its
weights: self-attention as one `com.microsoft.Attention` (fused Q/K/V projection + attention),
cached/cross attention as one Q/K/V MatMul + `com.microsoft.MultiHeadAttention`, bias + GELU as
`BiasGelu`, and the tied vocabulary projection
sharing the embedding initializer; `attention="portable"` writes standard ops only (MatMul,
Softmax, LayerNormalization). `export.to_onnx` uses it whenever `supports(model)` is True and
falls back to tracing otherwise (a user's custom layer, a subclass, mixed precision).

Generation graphs (`build_decoder_with_past`, `build_encoder_decoder_for_generation`,
`save_generation_graphs`) carry the key/value cache as inputs/outputs so that
`export.decoding.generate` runs greedy, sampled and beam-search decoding in onnxruntime alone.

Attributes load lazily, so importing `export.native` alone does not load Keras (generation
itself runs the numpy-only loops of `keras_transformer.search`).
"""

import importlib

_LAZY = {
    "build": "export.native.models",
    "supports": "export.native.models",
    "unsupported_reason": "export.native.models",
    "build_decoder_with_past": "export.native.cache",
    "build_encoder_decoder_for_generation": "export.native.cache",
    "build_generation_graphs": "export.native.cache",
    "save_generation_graphs": "export.native.cache",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export.native' has no attribute {name!r}")
