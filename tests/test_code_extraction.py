"""Finding the code in a reply to a coding task: solution, rewritten test file, salvage of a cut solution."""

from emoreg.evals.code_extraction import ExtractedCode, complete_prefix, defines_function, extract_code

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = "def test_add():\n    assert add(1, 2) == 3\n"


def fenced(code: str, info: str = "python") -> str:
    return f"```{info}\n{code}```\n"


def test_solution_and_labelled_test_file():
    reply = "Here:\n" + fenced(SOLUTION) + "And the tests:\n" + fenced("# test_solution.py\n" + TESTS)
    assert extract_code(reply, "add") == ExtractedCode(SOLUTION, "# test_solution.py\n" + TESTS)
    by_info = fenced(SOLUTION) + fenced(TESTS, info="python test_solution.py")
    assert extract_code(by_info, "add").tests == TESTS


def test_unlabelled_block_of_tests_is_the_test_file_and_the_first_is_kept():
    reply = fenced(TESTS) + fenced(SOLUTION) + fenced("def test_other():\n    pass\n")
    assert extract_code(reply, "add") == ExtractedCode(SOLUTION, TESTS)


def test_the_block_defining_the_function_wins():
    helper = "import math\n"
    assert extract_code(fenced(helper) + fenced(SOLUTION), "add").solution == SOLUTION
    assert extract_code(fenced(helper), "add").solution == helper  # else the first non-empty block
    assert extract_code(fenced("  \n") + fenced(TESTS), "add") == ExtractedCode(None, TESTS)


def test_unfenced_replies():
    assert extract_code(SOLUTION, "add") == ExtractedCode(SOLUTION, None)
    assert extract_code("  @cache\n" + SOLUTION, "add").solution == "@cache\n" + SOLUTION
    assert extract_code("The answer is to add the numbers.", "add") == ExtractedCode(None, None)


def test_an_unterminated_block_is_marked_truncated():
    cut = "```python\ndef add(a, b):\n    return a +"
    extracted = extract_code(cut, "add")
    assert extracted.solution == "def add(a, b):\n    return a +" and extracted.solution_truncated
    assert not extract_code(fenced(SOLUTION), "add").solution_truncated


def test_defines_function():
    pattern = defines_function("add")
    assert pattern.search(SOLUTION) and pattern.search("class A:\n    async def add (self):\n")
    assert not pattern.search("def adder(a):\n") and not pattern.search("x = add(1, 2)\n")
    assert defines_function("a.b").pattern.count(r"\.") == 1  # names are escaped


def test_complete_prefix_keeps_the_finished_statements():
    code = "import math\n\ndef add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a *"
    assert complete_prefix(code) == "import math\n\ndef add(a, b):\n    return a + b\n"
    assert complete_prefix(SOLUTION) == SOLUTION
    assert complete_prefix("def add(a, b):\n    return (a +") is None
    assert complete_prefix("") is None
