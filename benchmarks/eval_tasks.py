"""The offline eval's tasks: small repositories it creates, a task each, and a checker.

Each task writes its repository into an empty folder (`setup`), says what the agent is
asked (`prompt`), and judges the result (`check`) from the agent's printed answer and the
workspace afterwards. `solve` is a reference solution: the test suite checks that every
checker rejects the untouched repository and accepts the solved one, so no checker passes
by accident.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TASKS", "Task", "task_named"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip("\n"))


def _numbers(text: str) -> list[str]:
    """Numbers in an answer, with the words small models sometimes use instead."""
    words = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
    # Whole numbers only: "1.63s" is 1.63 (a duration), never 1.
    found = re.findall(
        r"(?<![\w.])-?(?>\d+(?:\.\d+)?)(?![\d.]\d)|\b(?:zero|one|two|three|four|five)\b",
        text.lower(),
    )
    return [words.get(n) or n for n in found]


def _python(workspace: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _pytest_passes(workspace: Path) -> bool:
    done = _python(workspace, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    return done.returncode == 0


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # what it exercises, for the table
    prompt: str
    files: dict[str, str]
    check: Callable[[str, Path], bool]  # (printed answer, workspace) -> correct
    solve: Callable[[Path], str]  # reference solution: changes the workspace, returns an answer
    max_turns: int = 8
    time_limit_s: float = 240.0

    def setup(self, workspace: Path) -> None:
        _write(workspace, self.files)


# --- reading -----------------------------------------------------------------------------

_CONFIG = {
    "config.py": '''
        """Settings of the billing service."""

        HOST = "0.0.0.0"
        PORT = 8042
        MAX_RETRIES = 3
        TIMEOUT_S = 30
        ''',
    "app.py": """
        from config import HOST, PORT


        def address() -> str:
            return f"{HOST}:{PORT}"
        """,
}

_SETTINGS_JSON = {
    "settings.json": """
        {
          "service": "orders",
          "database": {"host": "db.internal", "name": "orders_prod", "pool": 12},
          "debug": false
        }
        """,
    "main.py": """
        import json

        SETTINGS = json.load(open("settings.json"))
        """,
}

_PACKAGE = {
    "shop/__init__.py": "",
    "shop/cart.py": """
        from shop.pricing import total


        class Cart:
            def __init__(self):
                self.items = []

            def add(self, price: float) -> None:
                self.items.append(price)

            def checkout(self) -> float:
                return total(self.items)
        """,
    "shop/pricing.py": """
        def discount(price: float) -> float:
            \"\"\"Ten percent off orders of 50 or more.\"\"\"
            if price >= 50:
                return price * 0.9
            return price


        def total(prices: list[float]) -> float:
            return discount(sum(prices))
        """,
    "shop/net/__init__.py": "",
    "shop/net/headers.py": """
        def parse_header(line: str) -> tuple[str, str]:
            name, _, value = line.partition(":")
            return name.strip().lower(), value.strip()
        """,
    "shop/net/client.py": """
        from shop.net.headers import parse_header


        def headers(raw: str) -> dict[str, str]:
            return dict(parse_header(line) for line in raw.splitlines() if line)
        """,
    "README.md": "# shop\n\nA tiny shop.\n",
}

_NOTIFY = {
    "app.py": """
        from mail import send_email


        def register(user: str) -> None:
            print("registered", user)


        def reset_password(user: str) -> None:
            send_email(user, "Your reset link")


        def delete_account(user: str) -> None:
            print("deleted", user)
        """,
    "mail.py": """
        def send_email(to: str, body: str) -> None:
            print("mail to", to, ":", body)
        """,
}


# --- running tests and fixing ---------------------------------------------------------------

_TESTS_TWO_FAIL = {
    "mathx.py": """
        def double(x):
            return x * 2


        def square(x):
            return x * x


        def half(x):
            return x // 2
        """,
    "test_mathx.py": """
        from mathx import double, half, square


        def test_double():
            assert double(4) == 8


        def test_square():
            assert square(3) == 9


        def test_half_even():
            assert half(4) == 2


        def test_half_odd():
            assert half(5) == 2.5


        def test_half_negative():
            assert half(-3) == -1.5
        """,
}

_BUGGY_ADD = {
    "calc.py": '''
        """A small calculator."""


        def add(a, b):
            return a - b


        def mul(a, b):
            return a * b
        ''',
    "test_calc.py": """
        from calc import add, mul


        def test_add():
            assert add(2, 3) == 5


        def test_mul():
            assert mul(2, 3) == 6
        """,
}

_RENAME = {
    "words.py": """
        def count_long(words, size):
            cnt = 0
            for word in words:
                if len(word) > size:
                    cnt += 1
            return cnt
        """,
}

_MISSING_IMPORT = {
    "geometry.py": """
        def hypotenuse(a: float, b: float) -> float:
            return math.sqrt(a * a + b * b)


        if __name__ == "__main__":
            print(hypotenuse(3, 4))
        """,
}

_COUNT = {
    "src/a.py": "A = 1\n",
    "src/b.py": "B = 2\n",
    "src/util/c.py": "C = 3\n",
    "tests/test_a.py": "def test_a():\n    pass\n",
    "docs/index.md": "# docs\n",
    "docs/guide.md": "# guide\n",
    "data.csv": "a,b\n1,2\n",
    "README.md": "# project\n",
}

_TODO = {
    "server.py": """
        def serve():
            return "ok"
        """,
    "jobs.py": """
        def nightly():
            # TODO: retry failed uploads
            return []
        """,
    "models.py": """
        class User:
            name: str
        """,
}

_GREETING = {
    "greet.py": """
        def greet(name: str) -> str:
            return f"Helo, {name}!"
        """,
}

_LINES = {
    "data.csv": "id,name\n" + "".join(f"{i},item{i}\n" for i in range(1, 7)),
    "notes.txt": "nothing here\n",
}


# --- checkers and reference solutions --------------------------------------------------------


def _says(*needles: str) -> Callable[[str, Path], bool]:
    def check(answer: str, _workspace: Path) -> bool:
        low = answer.lower()
        return all(n.lower() in low for n in needles)

    return check


def _says_number(*values: str, wrong: tuple[str, ...] = ()) -> Callable[[str, Path], bool]:
    """The answer states one of `values` and none of the `wrong` numbers."""

    def check(answer: str, _workspace: Path) -> bool:
        numbers = _numbers(answer)
        return any(v in numbers for v in values) and not any(w in numbers for w in wrong)

    return check


def _answer(text: str) -> Callable[[Path], str]:
    return lambda _workspace: text


def _replace(file: str, old: str, new: str, answer: str) -> Callable[[Path], str]:
    def solve(workspace: Path) -> str:
        path = workspace / file
        path.write_text(path.read_text().replace(old, new))
        return answer

    return solve


def _tests_pass_and_tests_untouched(answer: str, workspace: Path) -> bool:
    expected = textwrap.dedent(_BUGGY_ADD["test_calc.py"]).lstrip("\n")
    if (workspace / "test_calc.py").read_text() != expected:
        return False
    return _pytest_passes(workspace)


def _renamed(answer: str, workspace: Path) -> bool:
    source = (workspace / "words.py").read_text()
    if re.search(r"\bcnt\b", source) or not re.search(r"\bcount\b", source):
        return False
    done = _python(
        workspace, "-c", "from words import count_long; print(count_long(['a', 'abcd', 'xyz'], 2))"
    )
    return done.returncode == 0 and done.stdout.strip() == "2"


def _imports_math(answer: str, workspace: Path) -> bool:
    done = _python(workspace, "geometry.py")
    return done.returncode == 0 and done.stdout.strip() == "5.0"


def _greets(answer: str, workspace: Path) -> bool:
    done = _python(workspace, "-c", "from greet import greet; print(greet('Ada'))")
    return done.returncode == 0 and done.stdout.strip() == "Hello, Ada!"


def _hello_file(answer: str, workspace: Path) -> bool:
    path = workspace / "hello.txt"
    return path.is_file() and path.read_text().strip() == "hello world"


def _write_hello(workspace: Path) -> str:
    (workspace / "hello.txt").write_text("hello world\n")
    return "Created hello.txt."


TASKS: tuple[Task, ...] = (
    Task(
        "read-value",
        "read",
        "Read config.py and tell me the value of PORT.",
        _CONFIG,
        _says_number("8042"),
        _answer("PORT is 8042."),
    ),
    Task(
        "read-json",
        "read",
        "What is the database name in settings.json?",
        _SETTINGS_JSON,
        _says("orders_prod"),
        _answer("The database name is orders_prod."),
    ),
    Task(
        "where-defined",
        "search",
        "In which file is the function parse_header defined?",
        _PACKAGE,
        _says("headers.py"),
        _answer("It is defined in shop/net/headers.py."),
    ),
    Task(
        "function-returns",
        "read",
        "What does discount(100) in shop/pricing.py return?",
        _PACKAGE,
        _says_number("90", "90.0"),
        _answer("discount(100) returns 90.0."),
    ),
    Task(
        "who-calls",
        "search",
        "Which function in app.py calls send_email?",
        _NOTIFY,
        _says("reset_password"),
        _answer("reset_password calls send_email."),
    ),
    Task(
        "find-todo",
        "search",
        "Which file contains a TODO comment?",
        _TODO,
        _says("jobs.py"),
        _answer("jobs.py has the TODO."),
    ),
    Task(
        "count-files",
        "shell",
        "How many .py files are in this repository, including subfolders?",
        _COUNT,
        _says_number("4", wrong=("3", "5")),
        _answer("There are 4 .py files."),
    ),
    Task(
        "count-lines",
        "shell",
        "How many lines does data.csv have?",
        _LINES,
        _says_number("7", wrong=("5", "8")),
        _answer("data.csv has 7 lines."),
    ),
    Task(
        "run-tests",
        "shell",
        "Run the tests with pytest and tell me how many tests fail.",
        _TESTS_TWO_FAIL,
        _says_number("2", wrong=("1", "4")),
        _answer("2 tests fail."),
    ),
    Task(
        "fix-bug",
        "edit",
        "The test in test_calc.py fails. Fix the bug in calc.py so that the tests pass.",
        _BUGGY_ADD,
        _tests_pass_and_tests_untouched,
        _replace("calc.py", "return a - b", "return a + b", "Fixed add in calc.py."),
        max_turns=10,
    ),
    Task(
        "rename-variable",
        "edit",
        "In words.py, rename the variable cnt to count.",
        _RENAME,
        _renamed,
        _replace("words.py", "cnt", "count", "Renamed cnt to count."),
    ),
    Task(
        "add-import",
        "edit",
        "geometry.py fails with NameError: name 'math' is not defined. Add the missing import.",
        _MISSING_IMPORT,
        _imports_math,
        _replace("geometry.py", "def hypotenuse", "import math\n\n\ndef hypotenuse", "Added it."),
    ),
    Task(
        "fix-string",
        "edit",
        "In greet.py the greeting says 'Helo'. Change it to 'Hello'.",
        _GREETING,
        _greets,
        _replace("greet.py", "Helo", "Hello", "Fixed the greeting."),
    ),
    Task(
        "create-file",
        "edit",
        "Create a file hello.txt that contains the text: hello world",
        {"README.md": "# empty project\n"},
        _hello_file,
        _write_hello,
    ),
)

# The smoke subset the test suite runs with the real model (one read, one edit).
QUICK: tuple[str, ...] = ("read-value", "fix-string")


def task_named(name: str) -> Task:
    for task in TASKS:
        if task.name == name:
            return task
    raise KeyError(name)
