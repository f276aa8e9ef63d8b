"""Our runtime over optimum's seq2seq folder (`export.to_optimum` of an encoder-decoder model).

`export.decoding.generate(folder, sources, max_length, start_id, end_id, ...)` runs the same
three graphs that optimum's `ORTModelForSeq2SeqLM` runs (`encoder_model.onnx`,
`decoder_model.onnx` for the first step, `decoder_with_past_model.onnx` after it), with the
search loop of the Keras models (`keras_transformer.search`): greedy, sampling and beam search.
numpy + onnxruntime only.
"""

import numpy as np

# optimum's file names (export.native.seq2seq writes them; this module must not import Keras)
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
SEQ2SEQ_FILES = (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE)


class OptimumSeq2SeqStepper:
    """Stepper (see `keras_transformer.search`) over the three graphs, for one batch of sources.

    Args:
        sessions: `{file name: onnxruntime.InferenceSession}` of the three graphs.
        sources: int `(batch, S)` source ids, right-padded with `pad_id`.
        pad_id: the padding id (the source attention mask is `sources != pad_id`).
    """

    def __init__(self, sessions, sources, pad_id):
        self.first, self.later = sessions[DECODER_FILE], sessions[DECODER_WITH_PAST_FILE]
        self.mask = (np.asarray(sources) != pad_id).astype(np.int64)
        encoder = sessions[ENCODER_FILE]
        self.hidden = encoder.run(["last_hidden_state"], {"input_ids": np.asarray(sources, np.int64),
                                                         "attention_mask": self.mask})[0]
        self.first_names = [o.name for o in self.first.get_outputs()]
        self.later_names = [o.name for o in self.later.get_outputs()]
        self.past = None

    def reset(self, batch, total_length):
        del batch, total_length  # the caches grow by concatenation
        self.past = None

    def step(self, new_tokens, index):
        del index
        ids = np.asarray(new_tokens, np.int64)
        if self.past is None:
            outputs = self.first.run(self.first_names, {"input_ids": ids, "encoder_attention_mask": self.mask,
                                                        "encoder_hidden_states": self.hidden})
            names = self.first_names
            self.past = {}
        else:
            outputs = self.later.run(self.later_names, {"input_ids": ids, "encoder_attention_mask": self.mask,
                                                        **self.past})
            names = self.later_names
        results = dict(zip(names, outputs))
        self.past.update({name.replace("present", "past_key_values"): value
                          for name, value in results.items() if name.startswith("present.")})
        return np.asarray(results["logits"][:, -1, :], dtype=np.float32)

    def reorder(self, rows):
        self.mask, self.hidden = self.mask[rows], self.hidden[rows]
        self.past = {name: value[rows] for name, value in (self.past or {}).items()} or None
