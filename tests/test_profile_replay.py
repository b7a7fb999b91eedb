"""benchmarks/profile_replay.py: the parts of a replayed step are found and timed."""

from __future__ import annotations

import pytest

from benchmarks import profile_replay
from benchmarks.run import ModelSpec

SMALL = ModelSpec(n_visible=12, n_latent=4)


@pytest.mark.parametrize("estimator", ["reinforce", "nvil"])
def test_parts_of_a_replayed_adam_step(estimator):
    result = profile_replay.profile(estimator, batch=3, steps=2, spec=SMALL)
    ops = result["ops"]
    # the fused Adam update gates its own writes: copies remain only for NVIL's running
    # statistics (mean and variance: a clone and a where each)
    assert ops.get("gate copies", 0) == (4 if estimator == "nvil" else 0)
    assert ops["optimizer update"] >= 2  # step counters and one fused kernel per group
    assert ops["finiteness flag"] >= 3
    assert ops["model, estimator, backward"] > 20
    assert set(result["parts_ms"]) == set(profile_replay.PARTS)
    assert result["step_ms"] > 0 and result["graph_ms"] > 0
    table = profile_replay.to_markdown([result])
    assert f"| {estimator} | 3 |" in table
