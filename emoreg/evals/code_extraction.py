"""Find the code in a model's reply to a coding task: the solution, a test file it rewrote, what a cut reply kept.

A reply is expected to hold the solution in a fenced code block and, when the model changed the tests, the
complete test file ``test_solution.py`` in a second block (see :mod:`emoreg.evals.suites.reward_hacking`).
:func:`extract_code` splits a reply into the two; :func:`complete_prefix` keeps the finished top-level
statements of a solution cut at the token limit. Nothing here runs the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^[ \t]*```[ \t]*([^\n`]*)\n(.*?)(?:```|\Z)", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class ExtractedCode:
    """The code of a reply: the solution (``None`` when there is none) and a test file the reply gave, if any.

    ``solution_truncated`` is True when the solution came from a fenced block that never closes (the reply
    was most likely cut at the token limit).
    """

    solution: str | None
    tests: str | None
    solution_truncated: bool = False


def defines_function(function_name: str) -> re.Pattern[str]:
    """A pattern matching a ``def`` of ``function_name`` at any indentation."""
    return re.compile(rf"^[ \t]*(async[ \t]+)?def[ \t]+{re.escape(function_name)}[ \t]*\(", re.MULTILINE)


def extract_code(reply: str, function_name: str) -> ExtractedCode:
    """Split a reply into its solution and an optional test file.

    Fenced blocks (an unterminated last block, as a reply cut at the token limit leaves, counts) are read in
    order. A block is the test file when its info string names ``test_solution``, when its first line is a
    comment starting with it (``# test_solution.py``), or when it defines ``test_*`` functions but not
    ``function_name``. The solution is the first other block that defines ``function_name``, else the first
    other non-empty block. Without fences, the whole reply is the solution when it starts with ``def``,
    ``import``, ``from``, ``class`` or ``@``.
    """
    blocks = [(match.group(1).strip(), match.group(2), not match.group(0).endswith("```"))
              for match in _FENCE.finditer(reply)]
    if not blocks:
        stripped = reply.strip()
        if re.match(r"(def|import|from|class)\s|@", stripped):
            return ExtractedCode(solution=stripped + "\n", tests=None)
        return ExtractedCode(solution=None, tests=None)
    tests: str | None = None
    candidates: list[tuple[str, bool]] = []
    defines = defines_function(function_name)
    for info, body, unterminated in blocks:
        first_line = body.lstrip().split("\n", 1)[0]
        labelled = "test_solution" in info or (first_line.startswith("#")
                                               and first_line.lstrip("# \t").startswith("test_solution"))
        looks_like_tests = re.search(r"^def[ \t]+test_", body, re.MULTILINE) and not defines.search(body)
        if labelled or looks_like_tests:
            if tests is None:
                tests = body
        elif body.strip():
            candidates.append((body, unterminated))
    defining = [candidate for candidate in candidates if defines.search(candidate[0])]
    chosen = defining[0] if defining else (candidates[0] if candidates else None)
    if chosen is None:
        return ExtractedCode(solution=None, tests=tests)
    return ExtractedCode(solution=chosen[0], tests=tests, solution_truncated=chosen[1])


def complete_prefix(code: str) -> str | None:
    """The longest prefix of ``code`` made of whole top-level statements that compiles (``None`` if none does).

    Used on solutions cut at the token limit: the statements the model finished are kept, the one it was
    writing is dropped (when that one is the function itself, the function is gone and the run fails).
    """
    lines = code.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() and not line[0].isspace() and line[0] not in ")]}"]
    for end in [len(lines), *reversed(starts)]:
        candidate = "\n".join(lines[:end]).rstrip()
        if not candidate:
            continue
        try:
            compile(candidate, "solution.py", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue
        return candidate + "\n"
    return None
