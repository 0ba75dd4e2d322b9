"""The toy world's dataset: procedurally generated arithmetic word problems with
more than one right derivation.

GSM8K-style: a question in words, one equation per step, a final ``#### N`` line,
so the GSM8K grader applies::

    Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?
    7 + 5 = 12            or   5 - 3 = 2       or   7 - 3 = 4
    12 - 3 = 9                 7 + 2 = 9            4 + 5 = 9
    #### 9                     #### 9               #### 9

    Bo has 3 red bags of 4 pens and 2 blue bags of 4 pens. How many pens in all?
    3 * 4 = 12, 2 * 4 = 8, 12 + 8 = 20     or     3 + 2 = 5, 5 * 4 = 20

Two templates: a start, then 1-4 changes (find, lose, multiply the lot), and
bags of equal size, then 0-2 changes. The level is the number of steps of the
plain derivation (1-4). Between multiplications the changes may be combined in
any order or grouping (the net change first), a multiplication may scale the
running total or each of its parts, and bags may be counted per kind or
together; the reference solutions use every style, drawn at random, so models
trained on them differ in how they solve, not only in whether.

``check_steps`` is exact: every step must be a right equation whose operands mean
something in the story and whose result is a quantity of some valid derivation
(``meanings``), and the final answer must be the last step's result, meaning the
story's answer. ``derivation`` is the key by which two solutions count as the
same (diversity): the multiset of their steps with the operands of + and *
sorted, so whitespace, step order and operand order make no new solution.

Splits are disjoint by construction: a question belongs to the split its text's
hash gives it (``PARTS``), so the toy models' pretraining corpus holds no question
that is later sampled, validated or tested, at any size or seed.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from collections import Counter, defaultdict

from cms.data import DataError, Record

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lou"]
ITEMS = ["apples", "marbles", "coins", "books", "pens", "cards", "shells", "stamps", "beads", "eggs"]
CLAUSES = {"+": ["finds {n} more", "buys {n} more", "gets {n} more"],
           "-": ["gives away {n}", "loses {n}", "sells {n}"],
           "*": ["ends up with {n} times as many"]}
TOP = 20  # the largest number a question or a step of the plain derivation may hold
LEVELS = (1, 2, 3, 4)
# a question's split is its text's first hash byte mod 8: test; train (questions, validation, exemplars); pretrain
PARTS = {"test": {0}, "train": {1, 2}, "pretrain": {3, 4, 5, 6, 7}}
QUESTION_TEMPLATE, SOLUTION_TEMPLATE = "Question: {question}\nAnswer:", " {solution}\n\n"
EQUATION = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
START = re.compile(r"\bhas (\d+) red bags of (\d+) \w+ and (\d+) blue bags of (\d+) \w+|\bhas (\d+)\b")
CLAUSE_RES = [(op, re.compile(re.escape(t).replace(r"\{n\}", r"(\d+)"))) for op in "+-*" for t in CLAUSES[op]]


def _changes(rng: random.Random, x: int, steps: int) -> list[tuple[str, int]]:
    changes = []
    for _ in range(steps):
        op = rng.choice(["+"] * (x < TOP) + ["-"] * (x > 1) + ["*"] * (2 * x <= TOP))
        n = rng.randint(1, TOP - x) if op == "+" else rng.randint(1, x - 1) if op == "-" else rng.randint(2, TOP // x)
        changes.append((op, n))
        x = APPLY[op](x, n)
    return changes


def _problem(rng: random.Random, level: int) -> tuple[str, tuple[int, ...], list[tuple[str, int]]]:
    """(question, start, changes): the start is (count,) or (bags, size, bags) for two kinds of bags."""
    person, item = rng.choice(NAMES), rng.choice(ITEMS)
    if level >= 2 and rng.random() < 0.5:
        k = rng.randint(2, 5)
        total = rng.randint(4, TOP // k)
        a = rng.randint(2, total - 2)
        start, opening = (a, k, total - a), f"{person} has {a} red bags of {k} {item} and {total - a} blue bags of {k} {item}"
        changes = _changes(rng, total * k, level - 2)
    else:
        start = (rng.randint(2, TOP // 2),)
        opening, changes = f"{person} has {start[0]} {item}", _changes(rng, start[0], level)
    clauses = [rng.choice(CLAUSES[op]).format(n=n) for op, n in changes]
    story = ", ".join([opening] + [", then ".join(clauses)] * bool(clauses))
    return f"{story}. How many {item} {'now' if changes else 'in all'}?", start, changes


def solve(start: tuple[int, ...], changes: list[tuple[str, int]], rng: random.Random) -> str:
    """One valid derivation of a story, its style drawn by ``rng``."""
    lines: list[str] = []

    def eq(a: int, op: str, b: int) -> int:
        c = APPLY[op](a, b)
        lines.append(f"{a} {op} {b} = {c}")
        return c

    def total(parts: list[tuple[int, int]]) -> int:  # signed parts summed left to right
        acc = parts[0][1]
        for sign, v in parts[1:]:
            acc = eq(acc, "+" if sign > 0 else "-", v)
        return acc

    if len(start) == 1:
        parts = [(1, start[0])]
    else:  # all bags at once, or each kind
        a, k, b = start
        parts = [(1, eq(eq(a, "+", b), "*", k))] if rng.random() < 0.5 else [(1, eq(a, "*", k)), (1, eq(b, "*", k))]
    i = 0
    while i < len(changes):
        op, n = changes[i]
        if op == "*":
            parts = [(s, eq(v, "*", n)) for s, v in parts] if len(parts) > 1 else [(1, eq(parts[0][1], "*", n))]
            i += 1
            continue
        j = next((j for j in range(i, len(changes)) if changes[j][0] == "*"), len(changes))
        run, net = changes[i:j], _net(changes[i:j])
        style = rng.choice(["steps"] + ["net"] * (net is not None) + ["parts"] * (j < len(changes)))
        if style == "parts":  # kept apart for the multiplication to scale one by one
            parts = parts + [(1 if o == "+" else -1, v) for o, v in run]
        elif style == "net":
            x, acc = total(parts), run[0][1] * (1 if run[0][0] == "+" else -1)
            for o, v in run[1:]:  # the net change so far (its size) with the next change
                if (acc > 0) == (o == "+"):
                    eq(abs(acc), "+", v)
                else:
                    eq(*((abs(acc), "-", v) if abs(acc) > v else (v, "-", abs(acc))))
                acc += v if o == "+" else -v
            parts = [(1, eq(x, "+" if acc > 0 else "-", abs(acc)))]
        else:
            x = total(parts)
            for o, v in run:
                x = eq(x, o, v)
            parts = [(1, x)]
        i = j
    return "\n".join(lines + [f"#### {total(parts)}"])


def _net(run: list[tuple[str, int]]) -> int | None:
    """The net change of two or more changes, None where there is one or it passes through 0."""
    acc, path = 0, []
    for op, n in run:
        acc += n if op == "+" else -n
        path.append(acc)
    return acc if len(run) > 1 and 0 not in path else None


def generate(split: str, size: int, seed: int = 0, levels=LEVELS) -> list[Record]:
    """``size`` problems of one split, deterministic in (split, seed); levels cycle evenly."""
    if split not in PARTS:
        raise DataError(f"arith has no split {split!r}: use one of {', '.join(PARTS)}")
    rng = random.Random(int.from_bytes(hashlib.sha256(f"arith:{split}:{seed}".encode()).digest()[:8], "little"))
    records, seen = [], set()
    while len(records) < size:
        level = levels[len(records) % len(levels)]
        question, start, changes = _problem(rng, level)
        if question in seen or hashlib.sha256(question.encode()).digest()[0] % 8 not in PARTS[split]:
            continue
        seen.add(question)
        solution = solve(start, changes, rng)
        answer = solution.rsplit("#### ", 1)[1]
        records.append(Record(f"arith-{split}-{len(records)}", question, answer, solution, f"Level {level}", "arith"))
    return records


def load(split: str, sizes: dict, seed: int = 0, levels=LEVELS) -> list[Record]:
    """A split of the arith dataset (the dataset group's generator): ``sizes[split]`` problems."""
    if split not in sizes:
        raise DataError(f"arith's sizes name no split {split!r}: set dataset.generator.sizes.{split}")
    return generate(split, sizes[split], seed, tuple(levels))


# --- meanings: a quantity is a polynomial over the story's numbers (atoms), so that equal numbers with
# different meanings stay apart; a polynomial is a frozenset of (monomial, coefficient)

def _poly(terms: dict) -> frozenset:
    return frozenset((m, c) for m, c in terms.items() if c)


def _combine(op: str, p: frozenset, q: frozenset) -> frozenset:
    out = Counter()
    if op == "*":
        for (m1, c1), (m2, c2) in itertools.product(p, q):
            out[tuple(sorted(m1 + m2))] += c1 * c2
    else:
        out.update(dict(p))
        for m, c in q:
            out[m] += c if op == "+" else -c
    return _poly(out)


def _canon(p: frozenset) -> frozenset:
    """A polynomial up to sign: a net loss of 2 is written as 2 and then subtracted."""
    return p if not p or min(p)[1] > 0 else _poly({m: -c for m, c in p})


def _sums(terms: list[frozenset]) -> set:
    sums = set()
    for r in range(1, len(terms) + 1):
        for subset in itertools.combinations(terms, r):
            s = functools.reduce(lambda p, q: _combine("+", p, q), subset)
            if s:
                sums.add(_canon(s))
    return sums


def meanings(start: tuple[int, ...], changes: list[tuple[str, int]]) -> tuple[list[frozenset], set, frozenset]:
    """(each number's atom, every quantity a valid derivation may compute (up to sign), the answer).

    The running total is a list of signed terms: any sub-sum of the terms since the last multiplication
    is a quantity of the story (a net change, a subtotal); a multiplication scales every term, so it may
    scale the total or its parts one by one. Bags: a*k and b*k are the terms, a+b (all bags) is a quantity."""
    atoms = [_poly({(i,): 1}) for i in range(len(start) + len(changes))]
    if len(start) == 1:
        terms, valid = [atoms[0]], set()
    else:
        terms, valid = [_combine("*", atoms[0], atoms[1]), _combine("*", atoms[2], atoms[1])], {_canon(_combine("+", atoms[0], atoms[2]))}
    for atom, (op, _) in zip(atoms[len(start):], changes):
        if op == "*":
            valid |= _sums(terms)
            terms = [_combine("*", t, atom) for t in terms]
        else:
            terms.append(atom if op == "+" else _combine("-", frozenset(), atom))
    return atoms, valid | _sums(terms), functools.reduce(lambda p, q: _combine("+", p, q), terms)


def parse_story(question: str) -> tuple[tuple[int, ...], list[tuple[str, int]]] | None:
    """A question's (start, changes) in this dataset's words, or None."""
    m = START.search(question)
    if not m:
        return None
    if m[5] is not None:
        start = (int(m[5]),)
    elif m[2] == m[4]:
        start = (int(m[1]), int(m[2]), int(m[3]))
    else:
        return None
    found = sorted((c.start(), op, int(c[1])) for op, rx in CLAUSE_RES for c in rx.finditer(question, m.end()))
    return start, [(op, n) for _, op, n in found]


@functools.lru_cache(maxsize=4096)
def _story(question: str):
    parsed = parse_story(question)
    return None if parsed is None else (parsed, *meanings(*parsed))


def check_steps(question: str, solution: str) -> bool:
    """True when the solution's reasoning is valid (the dataset group's step checker): every step is a
    right equation whose operands mean something in the story and whose result is a quantity of a valid
    derivation, and the final answer is the last step's, meaning the story's answer. For "has 2, gets 2
    more", ``2 * 2 = 4`` is rejected: both 2s are there, but their product means nothing in the story."""
    return why_invalid(question, solution) is None


def why_invalid(question: str, solution: str) -> str | None:
    """What is first wrong with a solution's reasoning, in a few words, or None when it is valid."""
    world = _story(question)
    if world is None:
        return "a question not in arith's words"
    (start, changes), atoms, valid, answer = world
    known: dict[int, set] = defaultdict(set)  # a number -> what it may mean
    for n, atom in zip(list(start) + [n for _, n in changes], atoms):
        known[n].add(atom)
    body, _, final = solution.partition("####")
    lines = [line for line in body.strip().splitlines() if line.strip()]
    if not lines:
        return "no step"
    for line in lines:
        m = EQUATION.match(line)
        if not m:
            return "a step that is no equation"
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if APPLY[op](a, b) != c:
            return "wrong arithmetic"
        if a not in known or b not in known:
            return "a number neither the question nor a step gave"
        made = {p for x in known[a] for y in known[b] for p in [_combine(op, x, y)] if p and _canon(p) in valid}
        if not made:
            return "an operation the story does not have"
        known[c] |= made
    numbers = re.findall(r"-?\d+", final)
    if not numbers or int(numbers[0]) != c:
        return "a final answer that is not the last step's"
    return None if answer in made else "a last step that is not the story's answer"


def derivation(solution: str) -> str:
    """The key by which two solutions are the same derivation: their steps as a sorted multiset, each with
    the operands of + and * sorted, and the final answer; a line that is no equation counts as its text."""
    body, _, final = solution.partition("####")
    steps = []
    for line in body.strip().splitlines():
        m = EQUATION.match(line)
        if m:
            a, b = (m[1], m[3]) if m[2] == "-" or int(m[1]) <= int(m[3]) else (m[3], m[1])
            steps.append(f"{a}{m[2]}{b}={m[4]}")
        elif line.strip():
            steps.append(" ".join(line.split()))
    return ";".join(sorted(steps)) + "#" + " ".join(final.split())

