from cms import report


def cell(model, setting, seed, acc, coverage=0.5):
    return {"model": model, "setting": setting, "seed": seed, "dataset": "arith", "budget": "low", "family": "toy",
            "source": "sampled", "generator": f"toy-{model}", "finetuned": "toy-student", "accuracy": acc,
            "baseline_accuracy": 0.1, "samples_per_question": 5 if model == "wc" else 1, "sample_accuracy": 0.2,
            "coverage": coverage, "diversity": 1.0, "fpr": 0.1}


def test_relative_gain_and_spread_across_seeds():
    results = [cell("wc", "kd", 0, 0.30), cell("se", "kd", 0, 0.20), cell("wc", "kd", 1, 0.20), cell("se", "kd", 1, 0.20)]
    [row] = report.accuracy_rows(results)
    assert row["seeds"] == 2
    assert abs(row["relative_gain"] - 0.25) < 1e-9  # mean of +50% and 0%
    assert abs(row["relative_gain_std"] - 0.3535533905932738) < 1e-9
    assert abs(row["acc_wc_data"] - 0.25) < 1e-9 and row["acc_se_data_std"] == 0.0
    data = {r["model"]: r for r in report.data_rows(results)}
    assert data["wc"]["samples_per_question"] == 5 and data["se"]["coverage"] == 0.5
    text = report.markdown(results)
    assert "+25.0% ± 35.4%" in text and "mean ± standard deviation" in text


def test_missing_accuracy_is_na_not_a_crash(tmp_path):
    results = [cell("wc", "kd", 0, None), cell("se", "kd", 0, 0.2)]
    [row] = report.accuracy_rows(results)
    assert row["relative_gain"] is None and "n/a" in report.markdown(results)
