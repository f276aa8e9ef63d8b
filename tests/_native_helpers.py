"""Helpers shared by the native-export tests: run an ONNX model in onnxruntime on CPU."""

import numpy as np
import onnxruntime as ort


def run_onnx(model, feeds):
    """Run a `ModelProto` with every onnxruntime optimization on; returns a list of outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: np.asarray(v) for k, v in feeds.items()})
