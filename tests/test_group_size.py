"""Group size against every Linear that will be quantized: choose and say so, or refuse with the layers."""

import json

import pytest

from quantizer.errors import GroupSizeError
from quantizer.layers import LinearLayer, planned_linear_layers
from quantizer.recipes import choose_group_size
from tests.support.models import TinyShape

WIDE = [LinearLayer("a", 576, 64), LinearLayer("b", 1536, 576)]


def test_default_that_fits_is_kept():
    assert choose_group_size([LinearLayer("a", 256, 8)], 128, explicit=False) == (128, None)


def test_default_that_does_not_fit_becomes_the_largest_that_does():
    size, note = choose_group_size(WIDE, 128, explicit=False)
    assert size == 64
    assert "128 does not divide" in note and "using 64" in note


def test_explicit_size_that_does_not_fit_is_refused_with_the_layers():
    with pytest.raises(GroupSizeError) as err:
        choose_group_size(WIDE, 256, explicit=True)
    message = str(err.value)
    assert "a (576)" in message and "b (1536)" not in message
    assert "use --group-size 64" in message


def test_no_standard_size_fits():
    with pytest.raises(GroupSizeError, match="no standard group size"):
        choose_group_size([LinearLayer("odd", 100, 8)], 128, explicit=False)


def test_planned_layers_exclude_the_lm_head(tiny_model):
    config = json.loads((tiny_model(TinyShape(hidden=96, intermediate=160, tied=False)) / "config.json").read_text())
    layers = planned_linear_layers(config)
    assert len(layers) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert all("lm_head" not in layer.name for layer in layers)
    assert {layer.in_features for layer in layers} == {96, 160}
