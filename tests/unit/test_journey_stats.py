"""Journey stats without ClickHouse: the chi-squared test, the window parser, assembling rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from scipy.stats import chi2_contingency

from spotzee.errors import InvalidInput
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.services.journey_stats import assemble, parse_within, significance


def test_a_two_by_two_table_matches_the_hand_computed_statistic() -> None:
    # A: 30 of 100 converted, B: 50 of 100. Expected 40 / 60 in each row:
    # chi2 = 2 * 10**2 / 40 + 2 * 10**2 / 60 = 25/3; with 1 dof, P(X > x) = erfc(sqrt(x / 2)).
    result = significance([("A", 100, 30), ("B", 100, 50)])
    assert result.statistic == pytest.approx(25 / 3)
    assert result.dof == 1
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(25 / 6)))
    assert result.p_value == pytest.approx(0.003892, abs=1e-6)
    assert result.reason is None
    assert result.warning is None


def test_three_variants_are_tested_without_continuity_correction() -> None:
    # 10, 20, 30 of 100 each: expected 20 / 80 per row; chi2 = 100/20 * 2 + 100/80 * 2 = 12.5,
    # and with 2 dof P(X > x) = exp(-x / 2).
    result = significance([("A", 100, 10), ("B", 100, 20), ("C", 100, 30)])
    assert result.statistic == pytest.approx(12.5)
    assert result.dof == 2
    assert result.p_value == pytest.approx(math.exp(-6.25))
    # A 2 x 2 table is not Yates-corrected either (scipy corrects only when asked).
    corrected = chi2_contingency([[30, 70], [50, 50]], correction=True)
    assert significance([("A", 100, 30), ("B", 100, 50)]).p_value != pytest.approx(float(corrected.pvalue))


def test_degenerate_tables_have_no_p_value_and_say_why() -> None:
    assert significance([("A", 10, 2)]).reason == "fewer than two variants"
    assert significance([]).reason == "fewer than two variants"
    empty = significance([("A", 10, 2), ("B", 0, 0)])
    assert (empty.p_value, empty.statistic, empty.dof) == (None, None, None)
    assert empty.reason == "variant 'B' has no contacts"
    assert significance([("A", 10, 0), ("B", 12, 0)]).reason == "no contact converted"
    assert significance([("A", 10, 10), ("B", 12, 12)]).reason == "every contact converted"
    with pytest.raises(ValueError, match="11 conversions of 10 contacts"):
        significance([("A", 10, 11), ("B", 12, 1)])


def test_small_expected_counts_are_tested_with_a_warning() -> None:
    result = significance([("A", 6, 3), ("B", 7, 1)])
    expected = chi2_contingency([[3, 3], [1, 6]], correction=False)
    assert result.p_value == pytest.approx(float(expected.pvalue))
    assert result.warning is not None
    assert "below 5" in result.warning


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), (" 1d ", 86400), (None, None)],
)
def test_windows_parse_to_seconds(text: str | None, seconds: int | None) -> None:
    assert parse_within(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "7 d", "-1d", "1.5d", "0d", "3651d", "7D"])
def test_bad_windows_are_400s_naming_the_parameter(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_within(text)
    assert caught.value.details[0]["path"] == "within"


def _journey() -> JourneyDefinition:
    now = datetime(2026, 3, 2, tzinfo=UTC)
    return JourneyDefinition.model_validate(
        {
            "id": "jrn_1",
            "project_id": "prj_1",
            "version": 3,
            "status": "live",
            "created_at": now,
            "updated_at": now,
            "name": "Split",
            "trigger": {"type": "api"},
            "start": "split",
            "steps": {
                "split": {
                    "type": "experiment",
                    "variants": [
                        {"name": "A", "weight": 1, "next": "done"},
                        {"name": "B", "weight": 1, "next": "done"},
                    ],
                },
                "done": {"type": "exit"},
            },
        }
    )


def test_rows_become_the_response_with_every_step_and_variant() -> None:
    stats = assemble(
        _journey(),
        step_rows=[["split", 5, 5, 0, 5, 4], ["done", 5, 5, 5, 5, 4], ["old", 2, 1, 0, 2, 2]],
        next_rows=[["split", "done", 5], ["old", "split", 1]],
        variant_rows=[["split", "B", 3, 1], ["split", "Z", 1, 1]],
        goal="purchased",
        within="7d",
        alpha=0.1,
    )
    assert list(stats.steps) == ["split", "done", "old"]  # the definition's order, then removed steps
    old = stats.steps["old"]
    assert (old.type, old.entered, old.completed, old.waiting, old.next) == (None, 2, 1, 1, {"split": 1})
    assert stats.steps["done"].exited == 5
    experiment = stats.experiments["split"]
    assert [(v.name, v.contacts, v.conversions) for v in experiment.variants] == [
        ("A", 0, 0),
        ("B", 3, 1),
        ("Z", 1, 1),  # a variant an edit removed
    ]
    assert experiment.variants[0].rate is None
    assert experiment.variants[1].rate == pytest.approx(1 / 3)
    assert (experiment.p_value, experiment.significant) == (None, None)
    assert experiment.reason == "variant 'A' has no contacts"
    assert (experiment.goal, experiment.within, experiment.alpha) == ("purchased", "7d", 0.1)


def test_without_a_goal_variants_have_contacts_only() -> None:
    stats = assemble(
        _journey(), [], [], [["split", "A", 2, 0], ["split", "B", 1, 0]], goal=None, within=None, alpha=0.05
    )
    experiment = stats.experiments["split"]
    assert [(v.contacts, v.conversions, v.rate) for v in experiment.variants] == [(2, None, None), (1, None, None)]
    assert experiment.reason is not None
    assert experiment.reason.startswith("no goal")
    assert stats.steps["done"].model_dump() == {
        "type": "exit",
        "entered": 0,
        "completed": 0,
        "waiting": 0,
        "exited": 0,
        "runs": 0,
        "contacts": 0,
        "next": {},
    }
