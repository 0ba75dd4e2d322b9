from cms import data, evaluation, finetuning, models
from conftest import DATA


def test_reference_finetuning_lowers_loss_and_checkpoint_evaluates(tiny_family, tmp_path):
    train = data.load("gsm8k", "train", "gsm8k", DATA)[:16]
    test = data.load("gsm8k", "test", "gsm8k", DATA)[:4]
    fmt = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")
    pairs = [(fmt.prompt(r), fmt.completion(r.solution)) for r in train]
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    metrics = finetuning.run(path, pairs, tmp_path / "ft", steps=30, batch_size=8, lr=3e-3, warmup_steps=2, max_length=1024, seed=0)
    assert metrics["steps"] == 30 and metrics["n_examples"] == 16
    early = sum(p["loss"] for p in metrics["curve"][:3]) / 3
    late = sum(p["loss"] for p in metrics["curve"][-3:]) / 3
    assert late < early - 0.5, (early, late)
    # the checkpoint is an HF directory that the evaluation loads
    result = evaluation.run(metrics["checkpoint"], test, [], fmt="gsm8k", prompt_format=fmt, max_new_tokens=8,
                            stop=["Question:"], sampler={"backend": "hf", "batch_size": 4}, out_path=tmp_path / "eval.jsonl")
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 4
    # finished work is not redone
    assert finetuning.run(path, pairs, tmp_path / "ft", steps=30, batch_size=8, lr=3e-3) == metrics


def test_loss_masks_the_prompt(tiny_family, tmp_path):
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path))
    [ex] = finetuning.tokenize_pairs(tok, [("Question: q\nAnswer:", " 42")], 64)
    n_prompt = len(tok("Question: q\nAnswer:", add_special_tokens=False).input_ids)
    assert ex["labels"][:n_prompt] == [finetuning.IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["labels"][-1] == tok.eos_token_id
