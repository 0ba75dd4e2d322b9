"""The toy world's dataset: procedurally generated multi-step arithmetic word problems.

GSM8K-style: a question in words, one equation per step, a final ``#### N``
line, so the GSM8K grader applies. Every step is an equation over numbers that
the question or an earlier step gave, so a solution's reasoning can be checked
exactly: a solution with the right final answer but a wrong or ungrounded step
is a false positive, counted without a judge.

    Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?
    7 + 5 = 12
    12 - 3 = 9
    #### 9
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Optional

from cms.data import Record

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lou"]
ITEMS = ["apples", "marbles", "coins", "books", "pens", "cards", "shells", "stamps", "beads", "eggs"]
ADD = ["finds {n} more", "buys {n} more", "gets {n} more"]
SUB = ["gives away {n}", "loses {n}", "sells {n}"]
MUL = ["ends up with {n} times as many"]
# level -> (steps, largest number a question or a step may hold)
LEVELS = {1: (1, 20), 2: (2, 20), 3: (3, 20), 4: (4, 20)}
QUESTION_TEMPLATE, SOLUTION_TEMPLATE = "Question: {question}\nAnswer:", " {solution}\n\n"
EQUATION = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _problem(rng: random.Random, level: int) -> tuple[str, str, int]:
    steps, top = LEVELS[level]
    person, item = rng.choice(NAMES), rng.choice(ITEMS)
    x = start = rng.randint(2, top // 2)
    clauses, lines = [], []
    for _ in range(steps):
        choices = ["+"] * (x < top) + ["-"] * (x > 1) + ["*"] * (2 * x <= top)
        op = rng.choice(choices)
        if op == "+":
            n = rng.randint(1, top - x)
        elif op == "-":
            n = rng.randint(1, x - 1)
        else:
            n = rng.randint(2, top // x)
        y = APPLY[op](x, n)
        template = rng.choice({"+": ADD, "-": SUB, "*": MUL}[op])
        clauses.append(template.format(n=n))
        lines.append(f"{x} {op} {n} = {y}")
        x = y
    story = ", then ".join(clauses)
    return f"{person} has {start} {item}, {story}. How many {item} now?", "\n".join(lines + [f"#### {x}"]), x


def generate(split: str, size: int, seed: int = 0, levels: tuple[int, ...] = (1, 2, 3, 4), exclude: Optional[set] = None) -> list[Record]:
    """``size`` problems of one split, deterministic in (split, seed); levels cycle evenly."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"arith:{split}:{seed}".encode()).digest()[:8], "little"))
    records, seen = [], set(exclude or ())
    while len(records) < size:
        level = levels[len(records) % len(levels)]
        question, solution, answer = _problem(rng, level)
        if question in seen:
            continue
        seen.add(question)
        records.append(Record(f"arith-{split}-{len(records)}", question, str(answer), solution, f"Level {level}", "arith"))
    return records


def load(split: str, sizes: dict, seed: int = 0, levels: tuple[int, ...] = (1, 2, 3, 4)) -> list[Record]:
    """A split of the arith dataset; test questions never appear in train or pretrain."""
    test = generate("test", sizes["test"], seed, levels)
    if split == "test":
        return test
    if split not in sizes:
        raise ValueError(f"arith has no split {split!r}: use one of {', '.join(sizes)}")
    return generate(split, sizes[split], seed, levels, exclude={r.question for r in test})


def check_steps(question: str, solution: str) -> bool:
    """True when every step is a correct equation over known numbers and the last one is the answer."""
    known = {int(n) for n in re.findall(r"\d+", question)}
    body, _, final = solution.partition("####")
    lines = [line for line in body.strip().splitlines() if line.strip()]
    if not lines:
        return False
    result = None
    for line in lines:
        m = EQUATION.match(line)
        if not m:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if APPLY[op](a, b) != c or a not in known or b not in known:
            return False
        known.add(c)
        result = c
    answer = re.findall(r"-?\d+", final)
    return bool(answer) and int(answer[0]) == result
