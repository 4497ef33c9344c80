"""Event scores against sed_eval (what hear-eval-kit calls) on the same events and the annotation checks (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.finetune.event_metrics import Decoding, onset_scores, posteriors_to_events, segment_error_rate

LABELS = ["a", "b", "c"]


def _random_events(rng, n):
    out = []
    for _ in range(n):
        start = float(rng.integers(0, 200) * 40 + 15)
        out.append(
            {"label": LABELS[rng.integers(0, 3)], "start": start, "end": start + float(rng.integers(1, 40) * 40)}
        )
    return out


def _container(events, file):
    import dcase_util

    return dcase_util.containers.MetaDataContainer(
        [
            {
                "event_label": e["label"],
                "event_onset": e["start"] / 1000.0,
                "event_offset": e["end"] / 1000.0,
                "file": file,
            }
            for e in events
        ]
    )


@pytest.mark.parametrize("seed", range(20))
def test_onset_f_and_segment_error_rate_equal_sed_eval(seed):
    import sed_eval

    rng = np.random.default_rng(seed)
    reference = {f"f{i}": _random_events(rng, int(rng.integers(0, 5))) for i in range(6)}
    estimated = {f"f{i}": _random_events(rng, int(rng.integers(0, 6))) for i in range(6)}
    events = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=LABELS, evaluate_onset=True, evaluate_offset=False, t_collar=0.2
    )
    segments = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=LABELS, time_resolution=1.0)
    for file in reference:
        for metric in (events, segments):
            metric.evaluate(_container(reference[file], file), _container(estimated[file], file))
    expected_f = events.results_overall_metrics()["f_measure"]["f_measure"]
    expected_er = segments.results_overall_metrics()["error_rate"]["error_rate"]
    assert onset_scores(reference, estimated, LABELS)["f_measure"] == pytest.approx(expected_f, abs=1e-12, nan_ok=True)
    assert segment_error_rate(reference, estimated, LABELS) == pytest.approx(expected_er, abs=1e-12)


def test_posteriors_become_events_at_token_centres():
    probs = np.zeros((50, 2))
    probs[10:20, 0] = 0.9
    probs[30, 1] = 0.8  # one token: 0 ms long, dropped by a 40 ms minimum duration
    events = posteriors_to_events(probs, ["x", "y"], [Decoding(), Decoding(min_duration_ms=40)])
    assert events == [{"label": "x", "start": 415.0, "end": 775.0}]


def test_annotations_are_checked_clipped_and_counted():
    from collections import Counter

    from pretrain.model.event_task import check_events, token_targets
    from pretrain.model.hear_task import TaskError

    fixes = Counter()
    events = [
        {"label": "a", "start": -20.0, "end": 100.0},  # starts before the clip: clipped to 0
        {"label": "b", "start": 900.0, "end": 1500.0},  # past the end: clipped to 1000 ms
        {"label": "a", "start": 1200.0, "end": 1300.0},  # wholly outside: dropped
        {"label": "c", "start": 500.0, "end": 500.0},  # zero length: dropped
    ]
    checked = check_events(events, where="train.json: x.wav", labels=set(LABELS), duration_ms=1000.0, fixes=fixes)
    assert checked == [{"label": "a", "start": 0.0, "end": 100.0}, {"label": "b", "start": 900.0, "end": 1000.0}]
    assert fixes == Counter(
        {
            "starting before the clip: clipped": 1,
            "past the clip's end: clipped": 1,
            "outside the clip: dropped": 1,
            "zero length: dropped": 1,
        }
    )
    for bad, message in [
        ([{"label": "a", "start": 300.0, "end": 200.0}], "ends before it starts"),
        ([{"label": "trumpet", "start": 0.0, "end": 200.0}], "not in labelvocabulary.csv: 'trumpet'"),
        ([{"label": "a", "start": 0.0}], "must have label, start and end"),
        ([{"label": "a", "start": "0", "end": 200.0}], "finite numbers"),
    ]:
        with pytest.raises(TaskError, match=message):
            check_events(bad, where="x.wav", labels=set(LABELS), duration_ms=1000.0, fixes=Counter())
    # token k (centre 40k + 15 ms) is active when start <= centre < end
    targets = token_targets([{"label": "b", "start": 55.0, "end": 135.0}], 5, LABELS)
    assert targets[:, 1].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0] and targets[:, [0, 2]].sum() == 0
