"""Decoder-block discovery by structure, on tiny models of every supported architecture."""

import pytest
from torch import nn

from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import find_decoder_stack, model_shape
from support.tiny_models import ARCHITECTURES, HIDDEN, N_LAYERS, build_tiny


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_finds_the_decoder_blocks_of_every_architecture(arch: str) -> None:
    model = build_tiny(arch)
    stack = find_decoder_stack(model)
    shape = model_shape(model)
    assert (shape.n_layers, shape.hidden_size) == (N_LAYERS, HIDDEN)
    assert shape.target_layer == N_LAYERS // 2
    # the blocks found are the ones the model runs, next to its own token embedding
    assert model.get_input_embeddings() in list(stack.module.children())
    assert all(block in list(model.modules()) for block in stack.layers)


def test_multimodal_wrapper_picks_the_language_model_not_the_vision_tower() -> None:
    model = build_tiny("gemma3_multimodal")
    stack = find_decoder_stack(model)
    assert stack.layers is model.model.language_model.layers
    vision_layers = model.model.vision_tower.encoder.layers
    assert len(vision_layers) != len(stack.layers)  # a length match could not have chosen it
    assert model_shape(model).architecture == "Gemma3ForConditionalGeneration"


def test_a_module_without_blocks_is_refused_with_a_clear_error() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    with pytest.raises(PersonaAxisError, match="No list of decoder blocks"):
        find_decoder_stack(Bare())
    with pytest.raises(PersonaAxisError, match="input embedding"):
        find_decoder_stack(nn.Linear(2, 2))
