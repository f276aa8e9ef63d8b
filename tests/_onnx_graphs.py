"""A small hand-written ONNX graph (onnx.helper) for tests that need no TensorFlow.

`embedding_classifier()` computes `logits = Gather(E, token_ids) @ W + bias`, with inputs
`token_ids` int32 (batch, sequence) and `bias` float32 (batch, 1, 3), and output `logits`
(batch, sequence, 3). `reference(...)` is the same computation in numpy.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, WIDTH, CLASSES = 20, 4, 3


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(VOCAB, WIDTH)).astype(np.float32), rng.normal(size=(WIDTH, CLASSES)).astype(np.float32)


def embedding_classifier(path, seed=0):
    embedding, kernel = weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "token_ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "kernel"], ["projected"]),
            helper.make_node("Add", ["projected", "bias"], ["logits"]),
        ],
        "embedding_classifier",
        [
            helper.make_tensor_value_info("token_ids", TensorProto.INT32, ["batch", "sequence"]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 1, CLASSES]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", CLASSES])],
        [numpy_helper.from_array(embedding, "embedding"), numpy_helper.from_array(kernel, "kernel")],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    return path


def reference(token_ids, bias, seed=0):
    embedding, kernel = weights(seed)
    return embedding[np.asarray(token_ids)] @ kernel + bias
