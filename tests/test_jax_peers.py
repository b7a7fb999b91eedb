"""The JAX peer benchmark: its wire protocol, the worker's replies, and the torch side.

The protocol and the client run without jax; the end-to-end check with jax runs only where
``make peers`` has created ``.venv-peers`` (skipped otherwise).
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import jax_peers, run

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def test_messages_round_trip_as_single_lines():
    message = {"op": "time", "id": "jax_nvil/24/0", "steps": 5}
    line = jax_peers.encode(message)
    assert line.endswith("\n") and line.count("\n") == 1
    assert jax_peers.decode(line) == message


@pytest.mark.parametrize(
    ("line", "needle"),
    [("", "empty line"), ("not json\n", "not a JSON line"), ("[1, 2]\n", "JSON object")],
)
def test_decode_names_what_is_wrong(line, needle):
    with pytest.raises(ValueError, match=needle):
        jax_peers.decode(line)


def test_bits_round_trip_and_bad_data_is_refused():
    bits = [0, 1, 1, 0, 1, 0]
    assert jax_peers.unpack_bits(jax_peers.pack_bits(bits), 2, 3) == bits
    with pytest.raises(ValueError, match="expected 3x3"):
        jax_peers.unpack_bits(jax_peers.pack_bits(bits), 3, 3)
    with pytest.raises(ValueError, match="binary"):
        jax_peers.unpack_bits(jax_peers.pack_bits([0, 2, 1, 0, 1, 0]), 2, 3)


def test_summary_is_the_median_and_refuses_no_steps():
    assert jax_peers.summarise_ms([3.0, 1.0, 2.0, 10.0, 2.5]) == 2.5
    with pytest.raises(ValueError, match="no steps"):
        jax_peers.summarise_ms([])


def test_worker_answers_every_line_and_stops_at_quit():
    # none of these requests needs jax: errors are replies, never a dead worker
    requests = [
        "this is not json\n",
        jax_peers.encode({"op": "dance"}),
        jax_peers.encode({"op": "time", "id": "nope", "steps": 3}),
        jax_peers.encode({"op": "build", "variant": "pytorch_magic", "batch": 2}),
        jax_peers.encode({"op": "quit"}),
        jax_peers.encode({"op": "info"}),  # after quit: never read
    ]
    out = io.StringIO()
    assert jax_peers.serve(io.StringIO("".join(requests)), out) == 0
    replies = [jax_peers.decode(line) for line in out.getvalue().splitlines()]
    assert len(replies) == 5
    assert [r["ok"] for r in replies] == [False, False, False, False, True]
    assert "not a JSON line" in replies[0]["error"]
    assert "unknown op 'dance'" in replies[1]["error"]
    assert "unknown step id 'nope'" in replies[2]["error"]
    assert "unknown variant 'pytorch_magic'" in replies[3]["error"]


def test_every_peer_variant_has_a_builder_and_a_row():
    assert set(jax_peers.VARIANTS) == set(jax_peers.BUILDERS) == set(run.PEER_IMPLS)
    rows = {impl for impl, _ in run.SIDE_BY_SIDE}
    assert set(run.PEER_IMPLS.values()) <= rows


def test_missing_venv_gives_rows_that_say_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "PEERS_VENV", tmp_path / ".venv-peers")
    worker, why = run.start_peer_worker("auto", threads=1)
    assert worker is None and why.startswith("not installed") and "make peers" in why
    assert run.start_peer_worker("off", threads=1)[0] is None
    variants = run._peer_variants(worker, why, run.ModelSpec(), "reinforce", warmup=1)
    assert {v.impl for v in variants} == {"numpyro_jit", "jax_jit"}
    assert all(v.error == why and v.timed is None for v in variants)
    assert run._peer_variants(worker, why, run.ModelSpec(), "rebar", warmup=1) == []


def test_a_worker_that_fails_is_reported_not_dropped(tmp_path, monkeypatch):
    # the project's own interpreter has no jax: the worker starts, its "info" fails, and
    # the client says why (through the real pipe)
    if subprocess.run([sys.executable, "-c", "import jax"], capture_output=True).returncode == 0:
        pytest.skip("jax is importable in the project's environment")
    fake = tmp_path / ".venv-peers" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").symlink_to(sys.executable)
    monkeypatch.setattr(run, "PEERS_VENV", tmp_path / ".venv-peers")
    worker, why = run.start_peer_worker("auto", threads=1)
    assert worker is None
    assert why.startswith("failed to start") and "jax" in why


def test_side_by_side_table_puts_ratios_and_first_use_in_their_cells():
    def row(impl, est, ms, ratio, first=None, status="ok"):
        return run.Row(
            "headline", "cpu", 1, "m", impl, est, 24, 1, 2, median_ms=ms,
            ratio_vs_handwritten=ratio, first_use_s=first, status=status,
        )  # fmt: skip

    rows = [
        row("handwritten", "reinforce", 2.0, 1.0),
        row("handwritten", "nvil", 4.0, 1.0),
        row("jax_jit", "reinforce", 1.0, 0.5, first=1.25),
        row("jax_jit", "nvil", 3.0, 0.75, first=2.0),
        row("numpyro_jit", "reinforce", None, None, status="not installed (make peers)"),
    ]
    table = run.side_by_side_table(rows).splitlines()
    header = "| step (median ms, ÷ hand-written) | REINFORCE b24 | NVIL b24 | first use s |"
    assert table[0] == header
    jax_row = next(line for line in table if line.startswith("| hand-written JAX"))
    assert jax_row == "| hand-written JAX, jit | 1.00 (0.50) | 3.00 (0.75) | 1.2-2.0 |"
    numpyro = next(line for line in table if line.startswith("| NumPyro"))
    assert "not installed (make peers)" in numpyro and "| - |" in numpyro  # no NVIL peer
    assert not any(line.startswith("| Pyro `TraceGraph") for line in table)  # no rows: no line


@pytest.mark.skipif(not PEERS_PYTHON.exists(), reason=".venv-peers absent (make peers)")
def test_real_worker_builds_and_times_each_variant():
    probe = subprocess.run([str(PEERS_PYTHON), "-c", "import jax, numpyro"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(".venv-peers has no jax/numpyro (make peers)")
    worker = run.PeerWorker(PEERS_PYTHON, threads=1)
    try:
        assert "intra_op_parallelism_threads=1" in worker.info["xla_flags"]
        bits = [(i * 7) % 3 == 0 for i in range(3 * 8)]
        # jax_reinforce is jax_nvil without the baseline: two variants keep this short
        for variant in ("numpyro_reinforce", "jax_nvil"):
            built = worker.ask(
                {
                    "op": "build",
                    "variant": variant,
                    "batch": 3,
                    "n_visible": 8,
                    "n_latent": 4,
                    "x": jax_peers.pack_bits([int(b) for b in bits]),
                    "xbar": [0.4] * 8,
                    "warmup": 1,
                }
            )
            assert built["build_and_first_step_ms"] >= built["first_step_ms"] > 0
            timed = worker.ask({"op": "time", "id": built["id"], "steps": 3})
            assert len(timed["times_ms"]) == 3 and all(t > 0 for t in timed["times_ms"])
            assert math.isclose(timed["median_ms"], sorted(timed["times_ms"])[1])
        with pytest.raises(RuntimeError, match="unknown step id"):
            worker.ask({"op": "time", "id": "missing", "steps": 1})
    finally:
        worker.close()
    assert worker.proc.returncode == 0
