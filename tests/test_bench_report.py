"""The suite's best-of-rounds report (``bench/suite.py``): each measure's best round
is kept, and what went wrong in a round that was not kept is still reported."""

from __future__ import annotations

from bench.suite import Results, Row, best_of


def test_best_of_keeps_the_best_round_and_the_errors_of_the_others() -> None:
    first = Results(unicast=[Row("pushsvc", "Push", 3000.0), Row("pushsvc", "PushStream", 5000.0)])
    second = Results(
        unicast=[
            Row("pushsvc", "Push", 452.0, note="1 errors, e.g. 'DeadlineExceeded';"),
            Row("pushsvc", "PushStream", 6000.0),
        ]
    )
    out = best_of([first, second])
    assert [(r.what, r.rate) for r in out.unicast] == [("Push", 3000.0), ("PushStream", 6000.0)]
    assert out.notes == [
        "round 2: pushsvc, Push (452/s, not kept): 1 errors, e.g. 'DeadlineExceeded';"
    ]


def test_a_kept_round_keeps_its_note_in_its_row() -> None:
    noted = Row("pushsvc", "Push", 3000.0, note="2 errors;")
    out = best_of([Results(unicast=[noted]), Results(unicast=[Row("pushsvc", "Push", 10.0)])])
    assert out.unicast == [noted] and out.notes == []
