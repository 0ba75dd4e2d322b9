import pytest

from cms import budget
from cms.models import count_params

PARAMS = {"wc": 9.24e9, "se": 27.2e9}


def test_flops_of_a_sample():
    assert budget.sample_flops(1e9, 100) == 2e11


def test_compute_matched_gives_wc_the_parameter_ratio():
    assert budget.samples_per_question("se", PARAMS, se_samples=1) == 1
    assert budget.samples_per_question("wc", PARAMS, se_samples=1) == 3
    assert budget.samples_per_question("wc", PARAMS, se_samples=10) == 30  # the paper's: 10 * round(2.944)
    assert budget.samples_per_question("wc", {"wc": 1.0, "se": 5.0}, se_samples=2) == 10


def test_number_matched_gives_both_the_same():
    for role in ("wc", "se"):
        assert budget.samples_per_question(role, PARAMS, match="number", se_samples=7) == 7


def test_price_matched_uses_the_price_ratio():
    prices = {"wc": 0.3, "se": 10.5}
    assert budget.samples_per_question("wc", PARAMS, match="price", se_samples=1, prices=prices) == 35
    assert budget.samples_per_question("se", PARAMS, match="price", se_samples=1, prices=prices) == 1
    with pytest.raises(budget.BudgetError, match="price_per_mtok"):
        budget.samples_per_question("wc", PARAMS, match="price", prices={"wc": None, "se": 1.0})


def test_budget_in_flops_floors_per_model():
    # SE: 2 * 27.2e9 * 100 = 5.44e12 per sample; WC: 1.848e12
    b = 5.44e12 * 3
    assert budget.samples_per_question("se", PARAMS, flops_per_question=b, solution_tokens=100) == 3
    assert budget.samples_per_question("wc", PARAMS, flops_per_question=b, solution_tokens=100) == 8


def test_budget_too_small_names_the_smallest_that_works():
    with pytest.raises(budget.BudgetError) as err:
        budget.samples_per_question("se", PARAMS, flops_per_question=1e12, solution_tokens=100)
    assert "smallest budget" in str(err.value) and "5.44e+12" in str(err.value)
    with pytest.raises(budget.BudgetError, match="se_samples=1"):
        budget.samples_per_question("wc", PARAMS, se_samples=0)


def test_absurd_budget_is_refused():
    with pytest.raises(budget.BudgetError, match="max_samples_per_question"):
        budget.samples_per_question("wc", PARAMS, se_samples=10_000, max_samples=1000)


def test_plan():
    p = budget.plan("wc", PARAMS, solution_tokens=200, se_samples=1)
    assert p.samples_per_question == 3 and p.planned_flops_per_question == 3 * 2 * 9.24e9 * 200


def test_gemma2_trio_counted_offline():
    wc = count_params({"name": "gemma-2-9b", "arch": "gemma-2-9b"})
    se = count_params({"name": "gemma-2-27b", "arch": "gemma-2-27b"})
    student = count_params({"name": "gemma-7b", "arch": "gemma-7b"})
    assert abs(wc - 9.24e9) / 9.24e9 < 0.01
    assert abs(se - 27.2e9) / 27.2e9 < 0.01
    assert abs(student - 8.54e9) / 8.54e9 < 0.01
    assert 2.9 < se / wc < 3.0
    assert budget.samples_per_question("wc", {"wc": wc, "se": se}, se_samples=1) == 3


def test_tiny_family_sizes_differ(tiny_family):
    sizes = {r: count_params(tiny_family[r]) for r in ("wc", "se", "student")}
    assert sizes["student"] < sizes["wc"] < sizes["se"]


def test_the_paper_rounds_the_ratio_first_and_halves_round_up():
    """budget=high on Gemma2 9B/27B: the paper drew 30 WC samples (10 x 3), not 29 (round(10 x 2.946))."""
    from omegaconf import OmegaConf

    from conftest import ROOT

    gemma = OmegaConf.load(ROOT / "conf" / "family" / "gemma2.yaml")
    params = {r: count_params(OmegaConf.to_container(gemma[r])) for r in ("wc", "se")}
    assert budget.samples_per_question("wc", params, se_samples=10) == 30
    assert budget.samples_per_question("wc", params, se_samples=10, rounding="samples") == 29
    plan = budget.plan("wc", params, solution_tokens=256, se_samples=10)
    assert plan.ratio_used == 3 and 2.9 < plan.ratio_exact < 3.0
    # halves round up, not to even (Python's round(2.5) is 2)
    assert budget.samples_per_question("wc", PARAMS, se_samples=1, ratio=2.5) == 3
    assert budget.samples_per_question("wc", PARAMS, se_samples=1, ratio=2.5, rounding="samples") == 3
    assert budget.samples_per_question("wc", PARAMS, se_samples=3, ratio=2.5, rounding="samples") == 8  # 7.5 up
    assert budget.samples_per_question("wc", PARAMS, se_samples=3, ratio=2.5) == 9  # 3 x 3
    with pytest.raises(budget.BudgetError, match="budget.rounding"):
        budget.samples_per_question("wc", PARAMS, rounding="floor")


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 1.0])
def test_a_mixed_budget_spends_each_share_on_its_generator(share):
    """data.source=mix: SE gets share * Q * S_SE samples and WC the rest of the FLOPs, as evenly as whole samples go."""
    qids = [f"q{i}" for i in range(10)]
    counts = budget.mix({"se": 1, "wc": 3}, share, qids, seed=0)
    assert sum(counts["se"].values()) == budget.round_half_up(share * 10) and sum(counts["wc"].values()) == budget.round_half_up((1 - share) * 30)
    for per in counts.values():
        assert set(per) == set(qids) and max(per.values()) - min(per.values()) <= 1
    flops = sum(counts["se"].values()) * 3 + sum(counts["wc"].values())  # SE costs 3 WC samples
    assert abs(flops - 30) <= 1
    assert budget.mix({"se": 1, "wc": 3}, share, qids, seed=1) != counts or share in (0.0, 1.0)  # which questions get the extra one is seeded


def test_a_mixed_share_outside_0_to_1_names_the_range():
    with pytest.raises(budget.BudgetError, match="from 0 .all WC. to 1 .all SE."):
        budget.mix({"se": 1, "wc": 3}, 1.5, ["q0"], seed=0)
