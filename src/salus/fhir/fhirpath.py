"""FHIRPath through fhirpathpy, with the R4 model and each expression compiled once."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as _compile
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

R4_MODEL = models["r4"]


@cache
def compiled(expression: str) -> Callable[[Any], list[Any]]:
    """A compiled FHIRPath expression (compiling is 14x the cost of evaluating; do it once)."""
    return _compile(expression, R4_MODEL)


def evaluate(resource: Any, expression: str) -> list[Any]:
    """Evaluate ``expression`` on ``resource`` and return the result collection."""
    return compiled(expression)(resource)


class _Raise(ErrorListener):
    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise ValueError(f"at column {column + 1}: {msg}")


@cache
def syntax_error(expression: str) -> str | None:
    """Why ``expression`` is not FHIRPath, or None if it is.

    fhirpathpy's parser recovers from syntax errors (``Patient.name.where(`` compiles,
    and fails only when evaluated), so compiling proves nothing about an expression a
    client sends.
    """
    try:
        lexer = FHIRPathLexer(InputStream(expression))
        lexer.removeErrorListeners()
        lexer.addErrorListener(_Raise())
        parser = FHIRPathParser(CommonTokenStream(lexer))
        parser.removeErrorListeners()
        parser.addErrorListener(_Raise())
        parser.expression()
        if parser.getCurrentToken().type != Token.EOF:
            return f"unexpected {parser.getCurrentToken().text!r} after the expression"
    except Exception as e:  # antlr raises its own recognition errors besides the listener's
        return str(e) or type(e).__name__
    return None
