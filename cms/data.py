"""Benchmark records and few-shot prompts, and the files stages hand to each other.

One record type for every dataset. Rows come from ``<data_dir>/<name>/<split>.jsonl``
(the local copies) or, when that file is absent, from the hub dataset named in the
dataset config; the field names are the same either way. What a stage writes for
the next (results.json, kept.jsonl, evaluation outputs) is written atomically:
a file is either whole or absent.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from cms.hub import unreachable as hub_unreachable

CALCULATOR = re.compile(r"<<[^<>]*>>")


class DataError(ValueError):
    """A dataset that cannot be read, with the file, the line and the fix in its message."""


@dataclass(frozen=True)
class Record:
    id: str
    question: str
    answer: str  # the gold final answer
    solution: str  # the reference (human-written) solution
    level: Optional[str] = None
    type: Optional[str] = None


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1 : i]
    return None


def gsm8k_gold(answer_text: str) -> Optional[str]:
    if "####" not in answer_text:
        return None
    gold = answer_text.rsplit("####", 1)[1].strip().replace(",", "")
    return gold or None


def parse_row(row: dict, fmt: str, rid: str, where: str) -> Record:
    """One dataset row as a Record; ``where`` (file:line) names a malformed row."""

    def need(*keys: str) -> str:
        for key in keys:
            if isinstance(row.get(key), str) and row[key].strip():
                return row[key]
        raise DataError(f"{where}: row has no {' or '.join(repr(k) for k in keys)} field; fix or remove that line")

    if fmt == "gsm8k":
        text = need("answer")
        gold = gsm8k_gold(text)
        if gold is None:
            raise DataError(f"{where}: no gold answer (the 'answer' field has no '#### N' line); fix or remove that line")
        solution = CALCULATOR.sub("", text)
        return Record(rid, need("question"), gold, solution)
    solution = need("solution")
    gold = row.get("answer") or last_boxed(solution)
    if not gold:
        raise DataError(f"{where}: no gold answer (no 'answer' field and no \\boxed{{}} in the solution); fix or remove that line")
    level = row.get("level")
    level = f"Level {level}" if isinstance(level, int) else level
    return Record(str(row.get("unique_id") or rid), need("problem", "question"), str(gold), solution, level, row.get("type") or row.get("subject"))


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove that line") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line; fix or remove that line")
            yield lineno, row


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a jsonl file a stage wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def write_rows(path: str | Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as jsonl, atomically."""
    _replace(Path(path), "".join(json.dumps(r) + "\n" for r in rows))


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _replace(Path(path), json.dumps(obj, indent=2, default=str))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _read_hub(spec: dict) -> Iterable[dict]:
    import datasets

    names = spec.get("name")
    for name in names if isinstance(names, list) else [names]:
        yield from datasets.load_dataset(spec["path"], name, split=spec["split"], revision=spec.get("revision"))


ROW_FORMATS = {
    "gsm8k": "one JSON object per line with 'question' and 'answer' (the worked solution, its last line '#### <number>')",
    "math": "one JSON object per line with 'problem' (or 'question') and 'solution' (the answer in \\boxed{}), "
            "optionally 'answer', 'level', 'type'",
}


def missing_file(data_dir: str | Path, name: str, splits: list[str], fmt: str, hub: Optional[dict], why: str) -> str:
    """The message for dataset files that are not there: what they must hold and where to get them."""
    files = [Path(data_dir) / name / f"{split}.jsonl" for split in splits]
    get = []
    for split, path in zip(splits, files):
        spec = (hub or {}).get(split)
        if spec:
            names = spec.get("name")
            config = f", {names!r}" if isinstance(names, str) else ""
            many = " (one call per config of the list, concatenated)" if isinstance(names, list) else ""
            get.append(f"datasets.load_dataset({spec['path']!r}{config}, split={spec['split']!r}).to_json('{path}'){many}")
    where = f"; on a machine with hub access: {'; '.join(get)}" if get else ""
    return (f"dataset file{'s' if len(files) > 1 else ''} {', '.join(map(str, files))} not found, and {why}: set paths.data_dir "
            f"(or CMS_DATA_DIR) to a folder holding {', '.join(f'{name}/{p.name}' for p in files)}, each "
            f"{ROW_FORMATS.get(fmt, 'one JSON object per line')}{where}")


def unavailable(data_dir: str | Path, name: str, splits: list[str], fmt: str, hub: Optional[dict]) -> Optional[str]:
    """Why some of ``splits`` can be read neither from ``data_dir`` nor from the hub (the message for the
    user, with what the files hold and where to get them), or None when all can."""
    missing = [split for split in splits if not (Path(data_dir) / name / f"{split}.jsonl").exists()]
    if not missing:
        return None
    if any(not (hub or {}).get(split) for split in missing):
        return missing_file(data_dir, name, missing, fmt, hub, "no hub dataset is configured for it")
    offline = hub_unreachable()
    return missing_file(data_dir, name, missing, fmt, hub, f"the hub is unreachable ({offline})") if offline else None


def function(dotted: str, key: str) -> Callable:
    """The function a dataset group names at ``key`` (``module.function``)."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise DataError(f"dataset.{key}={dotted} names no function ({err.__class__.__name__}: {err}): "
                        f"give it as module.function, e.g. cms.arith.check_steps") from None


def load(name: str, split: str, fmt: str, data_dir: str | Path, hub: Optional[dict] = None, generator: Optional[dict] = None) -> list[Record]:
    """All records of one split: generated (the group's generator), the local jsonl if present, else the hub dataset."""
    if generator:
        args = {k: v for k, v in generator.items() if k != "function"}
        return function(generator["function"], "generator.function")(split, **args)
    path = Path(data_dir) / name / f"{split}.jsonl"
    if path.exists():
        return [parse_row(row, fmt, f"{name}-{split}-{i}", f"{path}:{lineno}") for i, (lineno, row) in enumerate(_read_jsonl(path))]
    problem = unavailable(data_dir, name, [split], fmt, hub)
    if problem:
        raise DataError(problem)
    spec = hub[split]
    try:
        rows = list(_read_hub(spec))
    except Exception as err:  # the hub raises many kinds of network errors
        raise DataError(missing_file(data_dir, name, [split], fmt, hub, f"loading {spec['path']} from the hub failed ({err.__class__.__name__})")) from err
    return [parse_row(row, fmt, f"{name}-{split}-{i}", f"{spec['path']}[{split}] row {i}") for i, row in enumerate(rows)]


def provenance(name: str, split: str, data_dir: str | Path, hub: Optional[dict] = None, generator: Optional[dict] = None) -> dict:
    """Where ``load`` reads a split from, the way ``load`` decides it: a generator and its settings, a local
    file and its sha256, or a hub dataset and its revision. Two cells whose splits differ here ran
    different experiments, whatever the dataset is called (a local MATH train file need not be the hub's)."""
    if generator:
        return {"source": "generated", "generator": name, **{k: generator[k] for k in sorted(generator)}}
    path = Path(data_dir) / name / f"{split}.jsonl"
    if path.exists():
        return {"source": "file", "path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    spec = (hub or {}).get(split) or {}
    return {"source": "hub", "id": spec.get("path"), "config": spec.get("name"), "split": spec.get("split"),
            "revision": spec.get("revision") or "unpinned"}


def identity(prov: dict) -> dict:
    """What of a split's provenance decides its content: not where a file lies, only its hash."""
    return {k: v for k, v in prov.items() if k != "path"}


def describe(prov: dict) -> str:
    """A split's source in a few words, for the log and the report."""
    if prov["source"] == "file":
        return f"{prov['path']} sha256 {prov['sha256'][:12]}, {prov['rows']} rows"
    if prov["source"] == "hub":
        return f"{prov['id']}@{prov['revision']}, {prov['rows']} rows"
    return f"generated by {prov['generator']}, {prov['rows']} rows"


@dataclass(frozen=True)
class PromptFormat:
    question_template: str
    solution_template: str

    def example(self, record: Record) -> str:
        return self.question_template.format(question=record.question) + self.solution_template.format(solution=record.solution)

    def prompt(self, record: Record, exemplars: list[Record] = ()) -> str:
        """Completion-style prompt: the exemplars' solved examples, then the question."""
        return "".join(self.example(e) for e in exemplars) + self.question_template.format(question=record.question)

    def messages(self, record: Record, exemplars: list[Record] = ()) -> list[dict]:
        """The prompt as chat messages (an API's chat endpoint): each exemplar a user turn (its question)
        and an assistant turn (its solution), then the question. Joined in order they are ``prompt``."""
        turns = [t for e in exemplars for t in ({"role": "user", "content": self.question_template.format(question=e.question)},
                                                 {"role": "assistant", "content": self.solution_template.format(solution=e.solution)})]
        return turns + [{"role": "user", "content": self.question_template.format(question=record.question)}]

    def completion(self, solution: str) -> str:
        """The text a model should produce after ``prompt``: what fine-tuning trains on."""
        return self.solution_template.format(solution=solution.strip())


def split_exemplars(train: list[Record], shots: int, limit: Optional[int] = None,
                    val_size: int = 0) -> tuple[list[Record], list[Record], list[Record]]:
    """(exemplars, questions, validation) from train: the first ``shots`` records are the
    few-shot exemplars; the questions are the next ``limit`` (all when None); the
    validation questions come after them (or off the end when there is no limit)."""
    exemplars, pool = train[:shots], train[shots:]
    if limit is None:
        questions, val = pool[: len(pool) - val_size], pool[len(pool) - val_size:]
    else:
        questions, val = pool[:limit], pool[limit: limit + val_size]
    if len(val) < val_size or not questions:
        raise ValueError(f"train has {len(train)} records: too few for {shots} exemplars, dataset.train_limit={limit} "
                         f"questions and finetune.val_size={val_size}; lower finetune.val_size or dataset.train_limit")
    return exemplars, questions, val
