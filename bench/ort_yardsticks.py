"""Yardsticks measured in the same run as the graphs they judge: onnxruntime session options
shared by every graph, a float32 MatMul peak, the int8 MatMul ceiling and the MatMul-only floor
of a decoding step (see `bench/onnx_inference.py`)."""

import os

from bench.common import interleaved


def ort_session(path_or_bytes, threads):
    """The session options every graph here runs with, ours and the peers alike: all graph
    optimizations, `threads` intra-op threads, onnxruntime's defaults otherwise, except that
    worker threads stop spinning when a run returns (`session.force_spinning_stop`). Several
    sessions take turns here; with onnxruntime's default, one session's workers keep spinning
    after its run and slow down the next session's run (measured: 1 x 128 took 35-50 ms per
    graph instead of 11-14 ms, in an order-dependent way)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def _model(graph):
    """An ONNX model of `graph` at opset 17 / IR 8, which every onnxruntime in use here loads."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _matmul_model(rows, depth, columns, chained=1):
    """A float32 graph of `chained` MatMuls by one constant (depth, columns) weight."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array((np.random.rand(depth, columns) / depth).astype("float32"), "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", "w"], [f"y{i}"]) for i in range(chained)]
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, depth])],
                              [helper.make_tensor_value_info(f"y{chained - 1}", TensorProto.FLOAT, [rows, columns])],
                              [weight])
    return _model(graph)


def ort_matmul_peak_call(threads, size=1024):
    """`(call, flops)`: four chained float32 (size x size) MatMuls in onnxruntime, the yardstick
    for "fraction of peak" (timed in the same rounds as the graphs, so under the same load)."""
    import numpy as np

    session = ort_session(_matmul_model(size, size, size, chained=4).SerializeToString(), threads)
    x = (np.random.rand(size, size) / size).astype("float32")
    return (lambda: session.run(None, {"x": x})), 4 * 2 * size**3


def int8_matmul_ceiling(threads, repeats, rows, depth, columns):
    """fp32 / int8 time of one `(rows, depth) x (depth, columns)` MatMul alone (the model's
    largest: its tokens by the vocabulary projection), quantized exactly as `export.precision`
    quantizes the model: the int8 speed-up a whole model cannot exceed on this CPU."""
    import numpy as np

    from export.precision import to_int8

    fp32 = _matmul_model(rows, depth, columns)
    sessions = {"fp32": ort_session(fp32.SerializeToString(), threads),
                "int8": ort_session(to_int8(fp32).SerializeToString(), threads)}
    x = np.random.default_rng(0).normal(size=(rows, depth)).astype("float32")
    times = interleaved({name: (lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}, repeats)
    return times["fp32"] / times["int8"]


def decode_matmul_floor(folder, layers, d_model, d_ff, vocab, steps, threads=0, precision=None):
    """`call`: `steps` single-token passes through a graph of nothing but the MatMuls of one
    decoding step (the model's weight shapes: per layer Q/K/V, output and the two feed-forward
    maps; then the vocabulary projection), in a session made like the generator's with
    `threads` intra-op threads (0: all cores, the fp32 generator's default). What fp32
    greedy decoding would cost if the graph, the attention over the cache and the host added
    nothing: every step reads all ~21 MB of float32 weights. `precision="int4"`: the same
    MatMuls quantized as `export.precision` quantizes the model (`MatMulNBits`), the floor of
    int4 decoding."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.decoding import _new_session

    rng = np.random.default_rng(0)
    weights, nodes, outputs, x = [], [], [], "x"
    for i in range(layers):
        for name, shape in (("qkv", (d_model, 3 * d_model)), ("out", (d_model, d_model)),
                            ("inner", (d_model, d_ff)), ("outer", (d_ff, d_model))):
            weights.append(numpy_helper.from_array((rng.random(shape, dtype=np.float32) / shape[0]), f"{name}{i}"))
        nodes += [helper.make_node("MatMul", [x, f"qkv{i}"], [f"qkv_out{i}"]),
                  helper.make_node("MatMul", [x, f"out{i}"], [f"attended{i}"]),
                  helper.make_node("MatMul", [f"attended{i}", f"inner{i}"], [f"hidden{i}"]),
                  helper.make_node("MatMul", [f"hidden{i}", f"outer{i}"], [f"x{i}"])]
        outputs.append(helper.make_tensor_value_info(f"qkv_out{i}", TensorProto.FLOAT, [1, 3 * d_model]))
        x = f"x{i}"
    weights.append(numpy_helper.from_array(rng.random((d_model, vocab), dtype=np.float32) / d_model, "vocab"))
    nodes.append(helper.make_node("MatMul", [x, "vocab"], ["logits"]))
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, vocab]))
    step_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d_model])
    graph = helper.make_graph(nodes, "decode_matmuls", [step_input], outputs, weights)
    model = _model(graph)
    if precision is not None:
        from export.precision import convert

        model = convert(model, precision)
    path = os.path.join(folder, f"decode_matmul_floor_{precision or 'fp32'}.onnx")
    onnx.save(model, path)
    session = _new_session(path, ["CPUExecutionProvider"], threads)
    feeds = {"x": rng.random((1, d_model), dtype=np.float32)}

    def call():
        for _ in range(steps):
            session.run(None, feeds)
    return call
