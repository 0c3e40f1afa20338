"""Model plumbing: locating decoder layers, hidden size, final norm and LM head in causal LMs."""

from emoreg.models.layout import (
    final_norm_and_unembedding,
    find_decoder_layers,
    hidden_from_output,
    hidden_size,
    model_id_string,
    num_layers,
    replace_hidden_in_output,
    unwrap_model,
    wrapper_chain,
)

__all__ = [
    "final_norm_and_unembedding",
    "find_decoder_layers",
    "hidden_from_output",
    "hidden_size",
    "model_id_string",
    "num_layers",
    "replace_hidden_in_output",
    "unwrap_model",
    "wrapper_chain",
]
