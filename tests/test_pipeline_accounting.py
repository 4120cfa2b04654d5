"""Accounting from the fate table: per-stage in/kept/dropped and the read = kept + dropped + quarantined check."""
import pytest

from pipeline.accounting import AccountingError, Fate, build_stats, check_identity


def test_stage_counters_follow_documents_through_the_pipeline():
    fates = [
        Fate("web", "unknown", "read", "invalid_json: Expecting value", 2, 100),
        Fate("web", "unknown", "normalize", "empty_after_normalize", 1, 5),
        Fate("web", "en", "exact_dedup", "exact_duplicate", 3, 300),
        Fate("code", "code", "near_dedup", "near_duplicate", 1, 50),
        Fate("web", "en", "kept", "", 10, 1000),
        Fate("code", "code", "kept", "", 4, 400),
    ]
    stats = build_stats(fates)
    read = stats["stages"]["read"]
    assert read["in"] == {"docs": 21, "chars": 1855}
    assert read["quarantined"] == {"invalid_json": {"docs": 2, "chars": 100}}
    exact = stats["stages"]["exact_dedup"]
    assert exact["in"]["docs"] == 18 and exact["kept"]["docs"] == 15
    assert exact["dropped"] == {"exact_duplicate": {"docs": 3, "chars": 300}}
    assert exact["by_language"]["en"]["dropped"]["exact_duplicate"]["docs"] == 3
    near = stats["stages"]["near_dedup"]
    assert near["by_category"]["code"]["in"]["docs"] == 5 and near["by_category"]["code"]["kept"]["docs"] == 4
    assert stats["stages"]["write"]["in"]["docs"] == 14
    totals = stats["totals"]
    assert totals["kept"]["docs"] == 14 and totals["read"]["docs"] == 21
    assert totals["quarantined"]["empty_after_normalize"]["docs"] == 1


def test_identity_mismatch_fails_the_job():
    assert check_identity(10, 6, 3, 1)["balanced"]
    with pytest.raises(AccountingError, match="difference 1"):
        check_identity(10, 6, 2, 1)
