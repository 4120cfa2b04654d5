"""Sampling plan: how many tokens to take from each bucket so that all three ratio tables hold at once.

Buckets are (category, language) for natural-language text and (code, programming language) for code.
The category table constrains all tokens, the languages table the non-code tokens, the code-language
table the code tokens. Code buckets are one-dimensional (their tokens follow directly from the two
tables); the natural-language buckets form a category x language matrix whose row and column sums are
both prescribed, which iterative proportional fitting (IPF) solves. Starting IPF from the available
tokens gives the solution closest to the data (in KL divergence): every bucket's rate is a category
factor times a language factor, so no bucket is singled out. Rates are capped at `max_epochs`
(repetition); IPF clips capped cells and rescales the rest.

Rules when the tables cannot hold exactly (reported per entry in `MixPlan.issues`):
1. Buckets outside the tables (language `other` or not listed, code language `other`, a category or
   language with target 0) are excluded and listed in `MixPlan.excluded`.
2. A table entry with no data at all is dropped and the rest of its table renormalized ("no data").
3. Default budget: the largest total for which every remaining entry is met exactly within the cap.
   When no budget meets the category and language tables exactly (e.g. a category whose only
   language is rarer than the category), the budget at which IPF's best fit, scaled up from a
   budget where no cap binds, first puts a bucket (or an entry's target) at the cap; the plan is
   the best fit at that budget, as for a requested one (budget rule "largest best fit", reported
   as a "budget" issue; never 0 tokens).
4. A larger requested budget: entries that would need more than `max_epochs` repetitions are held at
   the cap and their shortfall is shared by the other entries of the table in proportion to their
   targets ("capped"), which keeps the relative ratios of everything that can still be met. If the
   joint matrix still cannot match both margins, IPF's best fit is used, scaled to the budget within
   the cap, and the residual reported ("joint").
5. A requested budget is delivered whenever the buckets in the tables hold it within `max_epochs`;
   a larger one gets all of them at the cap, and the plan says so (a "budget" issue).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from mixing.ratios import RatioTables
from pipeline.config import CODE, ConfigError

_IPF_ITERATIONS = 5000
_IPF_TOLERANCE = 1e-9  # relative error of the margins at which IPF stops
_FEASIBLE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class BucketPlan:
    category: str
    key: str  # language for natural-language buckets, programming language for code
    available: int
    tokens: float  # planned tokens (rate * available)

    @property
    def rate(self) -> float:
        return self.tokens / self.available if self.available else 0.0

    @property
    def name(self) -> str:
        return f"{self.category}/{self.key}"


@dataclass
class MixPlan:
    buckets: list[BucketPlan]
    total_tokens: float
    max_epochs: float
    budget_rule: str  # "largest feasible", "largest best fit" or "requested"
    targets: dict[str, dict[str, float]]  # table -> name -> requested share (normalized)
    excluded: dict[str, dict] = field(default_factory=dict)  # bucket name -> {"available", "reason"}
    issues: list[dict] = field(default_factory=list)  # per table entry that misses its target

    def shares(self, table: str, tokens: Mapping[str, float] | None = None) -> dict[str, float]:
        """Planned (or, with `tokens` per bucket name, realized) shares of one table's entries."""
        per = self.totals(table, tokens)
        total = sum(per.values())
        return {k: v / total if total else 0.0 for k, v in per.items()}

    def totals(self, table: str, tokens: Mapping[str, float] | None = None) -> dict[str, float]:
        out = {name: 0.0 for name in self.targets[table]}
        for b in self.buckets:
            if table == "categories":
                name = b.category
            elif (table == "code_languages") == (b.category == CODE):
                name = b.key
            else:
                continue
            out[name] = out.get(name, 0.0) + (tokens[b.name] if tokens is not None else b.tokens)
        return out

    def to_dict(self) -> dict:
        return {
            "total_tokens": self.total_tokens, "max_epochs": self.max_epochs, "budget_rule": self.budget_rule,
            "buckets": {b.name: {"available": b.available, "tokens": b.tokens, "epochs": b.rate}
                        for b in self.buckets},
            "targets": self.targets, "excluded": self.excluded, "issues": self.issues,
        }


def _capped_scale(x: np.ndarray, cap: np.ndarray, target: float) -> np.ndarray:
    """Scale `x` by one factor to sum to `target`, clipping at `cap` (water-filling); saturate if impossible."""
    live = x > 0
    if target <= 0 or not live.any():
        return np.zeros_like(x)
    if cap[live].sum() <= target:
        return np.where(live, cap, 0.0)
    ratio = np.where(live, cap / np.where(live, x, 1.0), np.inf)
    order = np.argsort(ratio)
    xs, cs = x[order], cap[order]
    saturated_cap = np.concatenate([[0.0], np.cumsum(cs)])[:-1]
    free_x = xs[::-1].cumsum()[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = (target - saturated_cap) / free_x
    k = int(np.argmax(factors <= ratio[order]))  # first cell not saturated at its factor
    f = factors[k]
    return np.minimum(cap, f * x)


def _waterfill(shares: np.ndarray, caps: np.ndarray, total: float) -> np.ndarray:
    """Split `total` by `shares`; entries over their cap stay at the cap and the rest is rescaled."""
    return _capped_scale(shares.astype(float), caps.astype(float), total)


def _ipf(avail: np.ndarray, cap: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, float]:
    """IPF from `avail` to the margins with cell caps; returns the matrix and its relative margin error.

    Each half-step scales rows (then columns) to their margin and clips at the caps; repeating it
    converges to the capped scaling, and stays vectorized (the bisection calls this often).
    """
    x = avail.astype(float).copy()
    scale = max(rows.sum(), 1.0)
    err = math.inf
    for _ in range(_IPF_ITERATIONS):
        for axis, target in ((1, rows), (0, cols)):
            sums = x.sum(axis)
            factor = np.divide(target, sums, out=np.zeros_like(sums), where=sums > 0)
            x *= factor[:, None] if axis == 1 else factor[None, :]
            np.minimum(x, cap, out=x)
        err = (np.abs(x.sum(1) - rows).sum() + np.abs(x.sum(0) - cols).sum()) / scale
        if err < _IPF_TOLERANCE:
            break
    return x, err


class _Problem:
    """The numbers of one planning problem, indexed for numpy."""

    def __init__(self, available: Mapping[tuple[str, str], int], ratios: RatioTables, max_epochs: float,
                 documents: Optional[Mapping[tuple[str, str], int]] = None):
        self.max_epochs = max_epochs
        self.excluded: dict[str, dict] = {}
        self.issues: list[dict] = []
        cats = {k: v for k, v in ratios.categories.items() if v > 0}
        langs = {k: v for k, v in ratios.languages.items() if v > 0}
        code_langs = {k: v for k, v in ratios.code_languages.items() if v > 0}
        nl: dict[tuple[str, str], int] = {}
        code: dict[str, int] = {}
        for (cat, key), tokens in sorted(available.items()):
            if tokens <= 0:
                continue
            reason = None
            if cat not in cats:
                reason = f"category {cat!r} has no target share"
            elif cat == CODE and key not in code_langs:
                reason = f"programming language {key!r} is not in the code_languages table"
            elif cat != CODE and key not in langs:
                reason = f"language {key!r} is not in the languages table"
            if reason:
                self.excluded[f"{cat}/{key}"] = {"available": int(tokens), "reason": reason}
                if documents is not None:
                    self.excluded[f"{cat}/{key}"]["documents"] = int(documents[(cat, key)])
            elif cat == CODE:
                code[key] = code.get(key, 0) + int(tokens)
            else:
                nl[(cat, key)] = nl.get((cat, key), 0) + int(tokens)
        self.cats = self._drop_empty("categories", cats, {c: sum(v for (cc, _), v in nl.items() if cc == c)
                                                          + (sum(code.values()) if c == CODE else 0) for c in cats})
        self.langs = self._drop_empty("languages", langs, {l: sum(v for (_, ll), v in nl.items() if ll == l)
                                                          for l in langs})
        self.code_langs = self._drop_empty("code_languages", code_langs, code) if CODE in self.cats else {}
        self.nl_cats = [c for c in self.cats if c != CODE]
        self.lang_names = list(self.langs)
        self.avail = np.array([[nl.get((c, l), 0) for l in self.lang_names] for c in self.nl_cats], dtype=float)
        self.avail = self.avail.reshape(len(self.nl_cats), len(self.lang_names))
        self.code_avail = np.array([code[k] for k in self.code_langs], dtype=float)

    def _drop_empty(self, table: str, shares: dict[str, float], avail: Mapping[str, float]) -> dict[str, float]:
        for name in shares:
            if not avail.get(name):
                self.issues.append({"table": table, "name": name, "status": "no data",
                                    "detail": "no tokens available; dropped and the table renormalized"})
        kept = {k: v for k, v in shares.items() if avail.get(k)}
        total = sum(kept.values())
        return {k: v / total for k, v in kept.items()}

    def solve(self, total: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Planned tokens (NL matrix, code vector) at budget `total`, and the IPF margin error."""
        cap = self.max_epochs
        cat_caps = np.array([cap * (self.code_avail.sum() if c == CODE else self.avail[self.nl_cats.index(c)].sum())
                             for c in self.cats])
        cat_tokens = dict(zip(self.cats, _waterfill(np.array(list(self.cats.values())), cat_caps, total)))
        code = _waterfill(np.array(list(self.code_langs.values())), cap * self.code_avail, cat_tokens.get(CODE, 0.0)) \
            if self.code_langs else np.zeros(0)
        rows = np.array([cat_tokens[c] for c in self.nl_cats])
        cols = _waterfill(np.array(list(self.langs.values())), cap * self.avail.sum(0), rows.sum()) \
            if self.lang_names else np.zeros(0)
        if not self.nl_cats:
            return self.avail.copy(), code, 0.0
        matrix, err = _ipf(self.avail, cap * self.avail, rows, cols)
        if rows.sum() - matrix.sum() > _FEASIBLE_TOLERANCE * total:
            # inconsistent margins: IPF stops mid-oscillation with cells clipped, short of the budget
            matrix[matrix < _FEASIBLE_TOLERANCE * rows.sum()] = 0.0  # cells the fit empties (IPF leaves denormals)
            matrix = _capped_scale(matrix.ravel(), cap * self.avail.ravel(), rows.sum()).reshape(matrix.shape)
        return matrix, code, err

    def feasible(self, total: float) -> bool:
        matrix, code, err = self.solve(total)
        return (err < _FEASIBLE_TOLERANCE and abs(matrix.sum() + code.sum() - total) <= _FEASIBLE_TOLERANCE * total
                and self._met(matrix, code, total))

    def _met(self, matrix, code, total) -> bool:
        got = self._table_totals(matrix, code)
        want = self._table_wants(total)
        return all(abs(got[t][k] - want[t][k]) <= _FEASIBLE_TOLERANCE * max(total, 1.0)
                   for t in want for k in want[t])

    def _table_totals(self, matrix, code) -> dict[str, dict[str, float]]:
        cats = {c: float(matrix[i].sum()) for i, c in enumerate(self.nl_cats)}
        if CODE in self.cats:
            cats[CODE] = float(code.sum())
        return {"categories": cats,
                "languages": {l: float(matrix[:, j].sum()) for j, l in enumerate(self.lang_names)},
                "code_languages": dict(zip(self.code_langs, code.astype(float)))}

    def _table_wants(self, total) -> dict[str, dict[str, float]]:
        code_total = total * self.cats.get(CODE, 0.0)
        return {"categories": {c: total * s for c, s in self.cats.items()},
                "languages": {l: (total - code_total) * s for l, s in self.langs.items()},
                "code_languages": {k: code_total * s for k, s in self.code_langs.items()}}

    @property
    def capacity(self) -> float:
        """Tokens the buckets in the tables hold within the cap: no budget can plan more."""
        return self.max_epochs * (self.avail.sum() + self.code_avail.sum())

    def target_bound(self) -> float:
        """Largest budget at which no table entry's target exceeds its tokens at the cap."""
        cap, code_share = self.max_epochs, self.cats.get(CODE, 0.0)
        bounds = [self.capacity]
        for c, s in self.cats.items():
            a = self.code_avail.sum() if c == CODE else self.avail[self.nl_cats.index(c)].sum()
            bounds.append(cap * a / s)
        bounds += [cap * self.avail[:, j].sum() / (s * (1 - code_share)) for j, s in enumerate(self.langs.values())]
        bounds += [cap * a / (s * code_share) for a, s in zip(self.code_avail, self.code_langs.values())]
        return min(bounds)

    def largest_feasible(self) -> float | None:
        """Largest budget meeting every entry within the cap: bisection (feasibility is monotone in it).

        None when not even one token can be planned exactly (then no budget can).
        """
        hi = self.target_bound()
        if self.feasible(hi):
            return hi
        if not self.feasible(min(1.0, hi)):
            return None
        lo = 0.0
        while hi - lo > max(1.0, 1e-7 * hi):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.feasible(mid) else (lo, mid)
        return lo

    def largest_best_fit(self) -> float:
        """Budget for tables no budget meets exactly (rule 3): IPF's best fit at a budget so small that no
        cap can bind (no margin exceeds a bucket's cap), scaled up until a bucket or a table entry's
        target reaches the cap."""
        caps = self.max_epochs * np.concatenate([self.avail.ravel(), self.code_avail])
        small = caps[caps > 0].min()
        matrix, code, _ = self.solve(small)
        fit = np.concatenate([matrix.ravel(), code]) / small
        with np.errstate(over="ignore"):  # cells the fit empties hold denormals: no bound
            return float(min(self.target_bound(), np.min(caps[fit > 0] / fit[fit > 0])))


def plan_mix(available: Mapping[tuple[str, str], int], ratios: RatioTables, *, total_tokens: float | None = None,
             max_epochs: float = 4.0, documents: Optional[Mapping[tuple[str, str], int]] = None) -> MixPlan:
    """Plan tokens per bucket. `available` maps (category, language or programming language) -> tokens;
    `documents`, the same keys -> documents, adds their counts to the excluded buckets."""
    if not 0 < max_epochs < math.inf:  # also refuses NaN
        raise ValueError(f"max_epochs must be a positive finite number, got {max_epochs}")
    if total_tokens is not None and not 0 <= total_tokens < math.inf:  # 0: the ConfigError below
        raise ValueError(f"total_tokens must be a non-negative finite number, got {total_tokens}")
    problem = _Problem(available, ratios, max_epochs, documents)
    if not problem.cats:
        found = ", ".join(f"{name} ({e['available']:,} tokens)" for name, e in list(problem.excluded.items())[:5])
        raise ConfigError("no tokens available in any bucket covered by the ratio tables (compare their "
                          "categories, languages and code_languages with the cleaned data's partitions)"
                          + (f"; the data has only {found}" + (", ..." if len(problem.excluded) > 5 else "")
                             if found else ""))
    if total_tokens is None:
        total, rule = problem.largest_feasible(), "largest feasible"
        if total is None:
            total, rule = problem.largest_best_fit(), "largest best fit"
            problem.issues.append({"table": "budget", "name": "total_tokens", "status": "best fit", "detail": (
                "no budget meets the categories and languages tables exactly within the cap; planned the "
                "budget at which IPF's best fit of them, scaled up, first puts a bucket at the cap")})
    else:
        total, rule = float(total_tokens), "requested"
    matrix, code, _ = problem.solve(total)
    buckets = [BucketPlan(c, l, int(problem.avail[i, j]), float(matrix[i, j]))
               for i, c in enumerate(problem.nl_cats) for j, l in enumerate(problem.lang_names)
               if problem.avail[i, j] > 0]
    buckets += [BucketPlan(CODE, k, int(a), float(t)) for k, a, t in zip(problem.code_langs, problem.code_avail, code)]
    plan = MixPlan(buckets=buckets, total_tokens=float(matrix.sum() + code.sum()), max_epochs=max_epochs,
                   budget_rule=rule, excluded=problem.excluded, issues=problem.issues,
                   targets={"categories": dict(ratios.categories), "languages": dict(ratios.languages),
                            "code_languages": dict(ratios.code_languages)})
    if plan.total_tokens <= 0:
        raise ConfigError(f"the mix plan has no tokens (budget {total:g} tokens): set mixing.total_tokens > 0 "
                          "and check that the cleaned data covers the ratio tables")
    _report_shortfall(plan, problem, total)
    _report_misses(plan, problem)
    return plan


def _report_shortfall(plan: MixPlan, problem: _Problem, requested: float) -> None:
    """A requested budget the plan does not deliver is an issue, never a silent difference."""
    if plan.budget_rule != "requested" or plan.total_tokens >= requested * (1 - _FEASIBLE_TOLERANCE):
        return
    plan.issues.append({"table": "budget", "name": "total_tokens", "status": "capped", "detail": (
        f"requested {requested:,.0f} tokens, planned {plan.total_tokens:,.0f}: the buckets in the ratio "
        f"tables hold {problem.capacity:,.0f} tokens within {plan.max_epochs:g} epochs")})


def _report_misses(plan: MixPlan, problem: _Problem) -> None:
    """Add an issue for every entry whose planned share differs from its (renormalized) target."""
    known = {(i["table"], i["name"]) for i in plan.issues}
    effective = {"categories": problem.cats, "languages": problem.langs, "code_languages": problem.code_langs}
    for table, targets in effective.items():
        planned = plan.shares(table)
        caps = plan.totals(table, {b.name: b.available * plan.max_epochs for b in plan.buckets})
        for name, target in targets.items():
            got = planned.get(name, 0.0)
            if (table, name) in known or abs(got - target) <= 1e-6:
                continue
            # short of its target for want of data; an entry above its target is not, at its cap or not
            at_cap = got < target and plan.totals(table)[name] >= caps[name] * (1 - 1e-9)
            plan.issues.append({
                "table": table, "name": name, "status": "capped" if at_cap else "joint",
                "target": target, "planned": got,
                "detail": (f"needs more than {plan.max_epochs:g} epochs of its {caps[name] / plan.max_epochs:.0f} "
                           "tokens; held at the cap" if at_cap else
                           "the category x language margins cannot both be met within the cap; IPF best fit"),
            })
