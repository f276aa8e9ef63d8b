"""A small helper around `onnx.helper` that names nodes and tensors and collects initializers."""

import contextlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MICROSOFT_DOMAIN = "com.microsoft"
# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 by default, so the model
# gets the lowest IR version its opsets need instead.

_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "bool": TensorProto.BOOL,
}


def onnx_dtype(name):
    """The `TensorProto` element type for a numpy dtype name (`"float32"`, `"int32"`, ...)."""
    key = np.dtype(name).name
    if key not in _DTYPES:
        raise ValueError(f"Unsupported tensor dtype {name!r}; expected one of {sorted(_DTYPES)}.")
    return _DTYPES[key]


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of one ONNX graph.

    Every node gets a unique name derived from `scope` (e.g. `decoder_block_0/self_attention`) so
    that the graph is readable in Netron, and every intermediate tensor a unique name.

    Args:
        name: the graph name.
        opset: the default-domain opset (17 or higher: LayerNormalization is an opset-17 op).

    Example:
    >>> g = GraphBuilder("tiny", opset=17)
    >>> x = g.input("x", "float32", ["batch", 4])
    >>> g.output(g.op("Relu", x), "y", "float32", ["batch", 4])
    >>> model = g.model()
    """

    def __init__(self, name, opset=17):
        if not isinstance(opset, int) or opset < 17:
            raise ValueError(f"`opset` must be an integer >= 17 (LayerNormalization); received opset={opset!r}.")
        self.name = name
        self.opset = opset
        self.nodes = []
        self.inputs = []
        self.outputs = []
        self.initializers = {}
        # Set by export.native.cache.build_decoder_with_past: its attention may share its cache
        # buffer (export.native.attention.shares_cache_buffer).
        self.shared_cache = False
        self._counts = {}
        self._constants = {}
        self._weights = {}
        self.scope = ""
        self.uses_microsoft_domain = False
        self.shared = {}  # tensors that several emitters reuse (masks, rotary tables), by key

    def _unique(self, base):
        base = f"{self.scope}/{base}" if self.scope else base
        count = self._counts.get(base, 0)
        candidate = base if count == 0 else f"{base}_{count}"
        while candidate in self.initializers:
            count += 1
            candidate = f"{base}_{count}"
        self._counts[base] = count + 1
        return candidate

    @contextlib.contextmanager
    def scoped(self, name):
        """Prefix node and weight names with `name` inside the block (scopes nest with "/")."""
        outer = self.scope
        self.scope = f"{outer}/{name}" if outer else name
        try:
            yield
        finally:
            self.scope = outer

    def input(self, name, dtype, shape):
        """Declare a graph input; `shape` entries are ints or dimension names."""
        self.inputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype), shape))
        return name

    def output(self, tensor, name, dtype, shape):
        """Declare `tensor` as the graph output `name` (an Identity renames it when needed)."""
        if tensor != name:
            self.nodes.append(helper.make_node("Identity", [tensor], [name], name=self._unique(name)))
        self.outputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype), shape))
        return name

    def weight(self, name, array, dtype="float32"):
        """Store `array` as an initializer (once per name) and return its name."""
        key = f"{self.scope}/{name}" if self.scope and "/" not in name else name
        if key not in self._weights:
            tensor_name = key if key not in self._counts else f"{key}_weight"
            self._weights[key] = tensor_name
            self.initializers[tensor_name] = numpy_helper.from_array(np.asarray(array, dtype=dtype), tensor_name)
        return self._weights[key]

    def constant(self, values, dtype="int64"):
        """A small shared constant initializer (shapes, axes, scalars)."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = f"const_{len(self._constants)}"
            self.initializers[self._constants[key]] = numpy_helper.from_array(array, self._constants[key])
        return self._constants[key]

    def op(self, op_type, *inputs, outputs=1, domain=None, name=None, **attributes):
        """Add one node; returns its output name, or a list of names when `outputs` > 1.

        `inputs` may contain "" for omitted optional inputs; `outputs` may be a count or a list
        of output names (None: an automatic name; "": an omitted optional output).
        """
        node_name = self._unique(name or op_type)
        if isinstance(outputs, int):
            output_names = [node_name if outputs == 1 else f"{node_name}:{i}" for i in range(outputs)]
        else:  # explicit names; None = an automatic name, "" = an omitted optional output
            output_names = [f"{node_name}:{i}" if o is None else o for i, o in enumerate(outputs)]
        if domain == MICROSOFT_DOMAIN:
            self.uses_microsoft_domain = True
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()  # trailing omitted optional inputs are simply left out
        self.nodes.append(
            helper.make_node(op_type, inputs, output_names, name=node_name, domain=domain, **attributes)
        )
        return output_names[0] if len(output_names) == 1 else output_names

    def model(self, metadata=None, doc_string=""):
        """The finished, checked `onnx.ModelProto` (nodes whose outputs nothing reads dropped)."""
        nodes = self._live_nodes()
        read = {name for node in nodes for name in node.input} | {output.name for output in self.outputs}
        graph = helper.make_graph(
            nodes, self.name, self.inputs, self.outputs, [t for t in self.initializers.values() if t.name in read]
        )
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_microsoft_domain:
            opsets.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="keras_transformer.export.native",
            doc_string=doc_string,
        )
        model.ir_version = helper.find_min_ir_version_for(opsets[:1])
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.checker.check_model(model)
        return model

    def _live_nodes(self):
        """The nodes an output depends on, in order: an emitter may leave one behind when a
        fused operator takes its input instead (e.g. a Split of a packed Q/K/V)."""
        needed = {output.name for output in self.outputs}
        live = []
        for node in reversed(self.nodes):
            if needed.intersection(node.output):
                live.append(node)
                needed.update(name for name in node.input if name)
        return live[::-1]

    def node_count(self):
        return len(self.nodes)
