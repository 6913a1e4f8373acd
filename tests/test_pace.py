"""sampler.bench.pace: the `every` study runs each case at each k against the same plain sampling,
and paces only the kinds asked for, restoring the defaults after."""

import dataclasses

from energies import defaults as D
from sampler.bench import pace


def test_every_default_paces_the_kinds_asked_and_restores(monkeypatch):
    before = D.term_defaults("keep_appearance", "shapes"), D.term_defaults("move", "shapes"), D.term_defaults("move")
    with pace.every_default(3, {"keep_appearance"}):
        assert D.term_defaults("keep_appearance", "shapes").every == 3 and D.term_defaults("keep_appearance").every == 3
        assert D.term_defaults("move", "shapes").every == before[1].every  # not asked for: its own default
    assert (D.term_defaults("keep_appearance", "shapes"), D.term_defaults("move", "shapes"), D.term_defaults("move")) == before
    with pace.every_default(2, None):
        assert all(d.every == 2 for d in D.TERMS.values())
    assert all(dataclasses.asdict(d) == dataclasses.asdict(D.TERMS[k]) for k, d in D.TERMS.items())


def test_pace_counts_backward_passes_and_reports(shapes_editor, tmp_path, monkeypatch, capsys):
    """Two cases of the move task at every 1 and 2 on the shipped model: the k = 2 runs take half
    the gradients, and the table has a row per k."""
    import torch

    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    from sampler.bench.tasks import select

    seen = {}
    real = pace.run_case

    def counting(*a, **k):
        n = len(calls)
        o = real(*a, **k)
        seen.setdefault(D.term_defaults("move", "shapes").every, []).append(len(calls) - n)
        return o

    monkeypatch.setattr(pace, "run_case", counting)
    result = pace.pace(shapes_editor, select(["move"]), [1, 2], 2, "tune", 6, tmp_path, progress=False)
    assert set(result["move"]) == {1, 2}
    for k in (1, 2):
        row = result["move"][k]
        assert row["cases"] == 2 and 0 <= row["success"] <= 1 and row["time_ratio"] > 0
    assert sum(seen[2]) < sum(seen[1])  # fewer gradients at every 2
    text = pace.markdown(result, [1, 2])
    assert "| every | cases | success |" in text and "\n| 2 | 2 |" in text
