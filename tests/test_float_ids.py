"""Float token ids holding whole numbers are cast (they fit); other floats are refused by name."""

import numpy as np
import pytest

import export
from export.decoding import OnnxGenerator
from export.native import save_generation_graphs
from export.runtime import OnnxModel
from keras_transformer.models import DecoderOnlyTransformer

PROMPTS = np.array([[5, 6, 7], [8, 9, 0]])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(5)
    model = DecoderOnlyTransformer(30, 1, 16, 2, 32, dropout=0.0)
    root = tmp_path_factory.mktemp("float_ids")
    export.to_onnx(model, root / "model.onnx", max_length=4)
    save_generation_graphs(model, root / "graphs")
    return model, OnnxModel(root / "model.onnx"), OnnxGenerator(root / "graphs")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_whole_number_floats_are_ids(exported, dtype):
    model, session, generator = exported
    for run in (model.generate, generator.generate):
        np.testing.assert_array_equal(run(PROMPTS.astype(dtype), max_new_tokens=3, temperature=0.0),
                                      run(PROMPTS, max_new_tokens=3, temperature=0.0))
    np.testing.assert_array_equal(session({"token_ids": PROMPTS.astype(dtype)})["logits"],
                                  session({"token_ids": PROMPTS.astype("int32")})["logits"])
    np.testing.assert_array_equal(model.generate([[5.0, 6.0], [7.0]], max_new_tokens=2, temperature=0.0),
                                  model.generate([[5, 6], [7]], max_new_tokens=2, temperature=0.0))


def test_other_floats_are_refused_with_the_value_and_position(exported):
    model, session, generator = exported
    bad = PROMPTS.astype("float32")
    bad[1, 1] = 8.5
    for run in (model.generate, generator.generate):
        with pytest.raises(ValueError, match=r"`prompt_token_ids` must hold token ids .*received 8\.5 at position \[1, 1\]"):
            run(bad, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"inputs\['token_ids'\].*received 8\.5 at position \[1, 1\]"):
        session({"token_ids": bad})
    nan = PROMPTS.astype("float32")
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="received nan"):
        model.generate(nan, max_new_tokens=2)
