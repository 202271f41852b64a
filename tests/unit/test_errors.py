"""first_line: the "why" of a one-line error made from a library's exception, whatever its text."""

import pytest

from edgekit.errors import InputError, first_line


@pytest.mark.parametrize("exc, plain, typed", [
    (ValueError("bad header\n  at line 3"), "bad header", "ValueError: bad header"),
    (RuntimeError("\n\n  [ONNXRuntimeError] : 1 : FAIL : Load failed  \nmore"),
     "[ONNXRuntimeError] : 1 : FAIL : Load failed", "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : Load failed"),
    (KeyError(), "KeyError", "KeyError"),              # no text: str(exc) is '' (was an IndexError in ~10 places)
    (Exception("   \n  "), "Exception", "Exception"),  # blank text
])
def test_first_non_blank_line_or_the_type(exc, plain, typed):
    assert first_line(exc) == plain
    assert first_line(exc, typed=True) == typed


def test_cut_to_the_limit_and_one_line_in_the_error():
    line = first_line(OSError("x" * 500 + "\nsecond"), limit=40)
    assert line == "x" * 40
    error = InputError("Recipe 'r.yaml' cannot be read", first_line(Exception("")), "Fix the YAML")
    assert error.message == "Recipe 'r.yaml' cannot be read: Exception. Fix the YAML."
