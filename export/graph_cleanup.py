"""Post-conversion clean-up of a tf2onnx graph: Erfc rewrite, LayerNormalization and tensordot fusion.

tf2onnx's own layer-norm rewriter matches the TF1 contrib pattern, not Keras 3's
`ops.layer_normalization`, which it emits as 12 nodes:

    mean = ReduceMean(x, axes=[-1]);  var = ReduceMean(Mul(Sub(x, mean), Sub(x, mean)), [-1])
    inv  = Mul(Reciprocal(Sqrt(Add(var, eps))), gamma)
    out  = Add(Mul(x, inv), Add(Mul(Neg(mean), inv), beta))

`fuse_layer_norms` replaces each match by one `LayerNormalization(x, gamma, beta, axis=-1)`
(opset >= 17). Keras's `Dense` on a 3-D input becomes TF's tensordot, 8 nodes around one MatMul
(`Reshape(MatMul(Reshape(x, [-1, K]), W), Concat(Gather(Shape(x), [0, 1]), [N]))`);
`fuse_tensordot_matmuls` replaces it by `MatMul(x, W)`, which ONNX broadcasts over leading axes.
TensorFlow lowers exact (erf) GELU to `0.5 * x * Erfc(-x / sqrt(2))`, and tf2onnx copies the
`Erfc` node through although no ONNX opset defines it (the checker and onnxruntime refuse the
model); `rewrite_erfc` writes each as `1 - Erf(x)`, which every opset >= 9 has.
The export's validation then checks the cleaned graph against Keras as usual.
"""

import numpy as np
from onnx import helper, numpy_helper


class _Graph:
    def __init__(self, graph):
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def node(self, name, op_type):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def constant(self, name):
        tensor = self.initializers.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def split(self, node, op_type):
        """`(input produced by op_type, the other input)` of a binary node, either order."""
        if node is None or len(node.input) != 2:
            return None, None
        for first, second in (node.input, node.input[::-1]):
            found = self.node(first, op_type)
            if found is not None:
                return found, second
        return None, None

    def last_axis_mean_of(self, node):
        """The input of a ReduceMean over the last axis with keepdims, else None."""
        if node is None:
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1:
            axes = self.constant(node.input[1])
        if axes is None or list(np.ravel(axes)) != [-1] or attributes.get("keepdims", 1) != 1:
            return None
        return node.input[0]


def _match(g, out):
    """`(x, gamma, beta, epsilon)` when `out` (an Add) ends a Keras layer norm, else None."""
    scaled_x, shift = g.split(out, "Mul")
    shift = g.node(shift, "Add")
    if scaled_x is None or shift is None:
        return None
    shifted_mean, beta = g.split(shift, "Mul")
    if shifted_mean is None or g.constant(beta) is None:
        return None
    inv_node, x = g.split(scaled_x, "Mul")
    if inv_node is None or inv_node.output[0] not in shifted_mean.input:
        return None
    reciprocal, gamma = g.split(inv_node, "Reciprocal")
    neg = next((g.node(i, "Neg") for i in shifted_mean.input if g.node(i, "Neg")), None)
    if reciprocal is None or g.constant(gamma) is None or neg is None:
        return None
    mean = g.node(neg.input[0], "ReduceMean")
    sqrt = g.node(reciprocal.input[0], "Sqrt")
    add_eps = g.node(sqrt.input[0], "Add") if sqrt is not None else None
    variance, epsilon = g.split(add_eps, "ReduceMean")
    square = g.node(variance.input[0], "Mul") if variance is not None else None
    centered = g.node(square.input[0], "Sub") if square is not None and square.input[0] == square.input[1] else None
    if (centered is None or g.last_axis_mean_of(mean) != x or g.last_axis_mean_of(variance) != square.output[0]
            or list(centered.input) != [x, mean.output[0]] or g.constant(epsilon) is None
            or g.constant(epsilon).size != 1):
        return None
    return x, gamma, beta, float(g.constant(epsilon).ravel()[0])


def _as_vector(g, name, width):
    values = g.constant(name)
    if values.size != width:
        return None
    vector_name = f"{name}/layer_norm_1d"
    if vector_name not in g.initializers:
        tensor = numpy_helper.from_array(values.reshape(width), vector_name)
        g.graph.initializer.append(tensor)
        g.initializers[vector_name] = tensor
    return vector_name


def fuse_layer_norms(model_proto):
    """Replaces Keras layer-norm subgraphs by `LayerNormalization`; returns the number fused."""
    if _opset(model_proto) < 17:
        return 0
    g = _Graph(model_proto.graph)
    fused = 0
    for index, node in enumerate(list(model_proto.graph.node)):
        match = _match(g, node) if node.op_type == "Add" else None
        if match is None:
            continue
        x, gamma, beta, epsilon = match
        width = g.constant(gamma).size
        gamma, beta = _as_vector(g, gamma, width), _as_vector(g, beta, width)
        if gamma is None or beta is None:
            continue
        layer_norm = helper.make_node("LayerNormalization", [x, gamma, beta], list(node.output),
                                      name=f"{node.name}/LayerNormalization", axis=-1, epsilon=epsilon)
        model_proto.graph.node[index].CopyFrom(layer_norm)
        fused += 1
    if fused:
        remove_dead_nodes(model_proto)
    return fused


def _tensordot_input(g, outer):
    """`(x, W)` when `outer` (a Reshape) ends a tensordot of x with a 2-D constant W, else None."""
    matmul = g.node(outer.input[0], "MatMul")
    inner = g.node(matmul.input[0], "Reshape") if matmul is not None else None
    kernel = g.constant(matmul.input[1]) if matmul is not None else None
    if inner is None or kernel is None or kernel.ndim != 2:
        return None
    x = inner.input[0]
    if g.constant(inner.input[1]) is None or list(g.constant(inner.input[1])) != [-1, kernel.shape[0]]:
        return None
    shape = g.producer.get(outer.input[1])
    while shape is not None and shape.op_type == "Cast":
        shape = g.producer.get(shape.input[0])
    if shape is None or shape.op_type != "Concat" or len(shape.input) != 2:
        return None
    leading, last = g.node(shape.input[0], "Gather"), g.constant(shape.input[1])
    if leading is None or last is None or list(last) != [kernel.shape[1]]:
        return None
    source = g.producer.get(leading.input[0])
    while source is not None and source.op_type == "Cast":
        source = g.producer.get(source.input[0])
    indices = g.constant(leading.input[1])
    if source is None or source.op_type != "Shape" or source.input[0] != x or indices is None:
        return None
    if list(np.ravel(indices)) != list(range(indices.size)) or source.attribute:
        return None
    return x, matmul.input[1]


def fuse_tensordot_matmuls(model_proto):
    """Replaces TF tensordot subgraphs (Dense on 3-D inputs) by one MatMul; returns the count."""
    g = _Graph(model_proto.graph)
    fused = 0
    for index, node in enumerate(list(model_proto.graph.node)):
        match = _tensordot_input(g, node) if node.op_type == "Reshape" else None
        if match is not None:
            matmul = helper.make_node("MatMul", list(match), list(node.output), name=f"{node.name}/MatMul")
            model_proto.graph.node[index].CopyFrom(matmul)
            fused += 1
    if fused:
        remove_dead_nodes(model_proto)
    return fused


def _opset(model_proto):
    return next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def rewrite_erfc(model_proto):
    """Replaces each (non-ONNX) `Erfc(x)` node by `1 - Erf(x)`; returns the number rewritten.

    The constant 1 takes x's element type through `CastLike` (opset >= 15), so one rewrite serves
    float32 and mixed-precision (float16) graphs; older opsets get a float32 constant.
    """
    graph = model_proto.graph
    nodes, rewritten = [], 0
    for index, node in enumerate(graph.node):
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, name = node.input[0], node.name or f"erfc_{index}"
        one = f"{name}/one"
        graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
        nodes.append(helper.make_node("Erf", [x], [f"{name}/erf"], name=f"{name}/Erf"))
        if _opset(model_proto) >= 15:
            nodes.append(helper.make_node("CastLike", [one, x], [f"{name}/one_like"], name=f"{name}/CastLike"))
            one = f"{name}/one_like"
        nodes.append(helper.make_node("Sub", [one, f"{name}/erf"], list(node.output), name=f"{name}/Sub"))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def clean_up(model_proto):
    """The Erfc rewrite and all fusions; returns `{rewrite: count}`."""
    return {"Erfc": rewrite_erfc(model_proto),
            "LayerNormalization": fuse_layer_norms(model_proto),
            "MatMul (tensordot)": fuse_tensordot_matmuls(model_proto)}


def remove_dead_nodes(model_proto):
    """Drops nodes and initializers that no graph output depends on."""
    graph = model_proto.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
            for attribute in node.attribute:  # subgraphs (If/Loop) read outer names too
                for subgraph in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs)):
                    needed.update(i for n in subgraph.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
