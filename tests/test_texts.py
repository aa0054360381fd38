"""The built-in texts are the same on every machine: the pydoc topics are a shipped copy, not the interpreter's."""

from __future__ import annotations

import hashlib
import sys

import pytest

from quantizer import texts


def test_the_eval_text_is_the_shipped_copy_whatever_the_python():
    text = texts.default_eval_text()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == texts.PYDOC_TOPICS_SHA256
    assert text.startswith(texts.pydoc_topics()[:1000]) and len(text) == 465126


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the copy was written from Python 3.11.7's topics")
def test_the_shipped_copy_is_python_3_11_7s_own():
    assert texts.stdlib_pydoc_topics() == texts.pydoc_topics()
