"""The report's plots: readable for thin entries, honest about empty ones, the same bytes every time."""
from __future__ import annotations

import pytest

from mixing.report import _share_plot


def _table(with_plan: bool) -> dict:
    table = {"en": {"target": 0.9, "realized": 0.95, "tokens": 95},
             "sw": {"target": 0.0003, "realized": 0.0, "tokens": 0},
             "zu": {"target": 0.0997, "realized": 0.05, "tokens": 5}}
    if with_plan:
        for name, planned in (("en", 0.9003), ("sw", 0.0), ("zu", 0.0997)):
            table[name]["planned"] = planned
    return table


@pytest.mark.parametrize("with_plan", [True, False])
def test_share_plot_draws_log_shares_marks_empty_entries_and_is_deterministic(with_plan, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = {}
    real_close = plt.close

    def keep(fig):  # inspect the figure before it is closed
        top, low = fig.axes
        drawn.update(scale=top.get_yscale(), legend=[t.get_text() for t in top.get_legend().get_texts()],
                     ylabel=low.get_ylabel(), ticks=[t.get_text() for t in low.get_xticklabels()],
                     deviation=[round(p.get_height(), 6) for p in low.patches])
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    png = _share_plot(_table(with_plan), "Languages", "tokens")
    assert png.startswith(b"\x89PNG") and png == _share_plot(_table(with_plan), "Languages", "tokens")
    assert drawn["scale"] == "log" and drawn["ticks"] == ["en", "zu", "sw"]  # by target, largest first
    assert "none realized" in drawn["legend"]  # sw: a target, no tokens
    if with_plan:
        assert "planned" in drawn["legend"] and drawn["ylabel"] == "realized -\nplanned (pp)"
        assert drawn["deviation"] == [round(100 * (0.95 - 0.9003), 6), round(100 * (0.05 - 0.0997), 6), 0.0]
    else:
        assert "planned" not in drawn["legend"] and drawn["ylabel"] == "realized -\ntarget (pp)"
        assert drawn["deviation"] == [5.0, round(100 * (0.05 - 0.0997), 6), round(-0.03, 6)]


def test_equal_targets_plot_in_one_order_whatever_the_key_order():
    # In memory the stats keep the table's order; read back from JSON, keys are sorted.
    table = {"Go": {"target": 0.1, "realized": 0.1, "tokens": 1}, "C": {"target": 0.1, "realized": 0.2, "tokens": 2},
             "Rust": {"target": 0.8, "realized": 0.7, "tokens": 7}}
    assert _share_plot(table, "Code", "tokens") == _share_plot(dict(sorted(table.items())), "Code", "tokens")
